"""Scoring the classifier on a labelled corpus directory (``manifest.json`` beside the files)."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

from postwise.compliance.bounces.classify import classify_message
from postwise.errors import NotFoundError, ValidationError

__all__ = ["evaluate_corpus"]


def evaluate_corpus(directory: str | Path) -> dict[str, Any]:
    """Classify every fixture a corpus manifest lists and compare with the expected verdicts.

    ``directory`` holds the message files and a ``manifest.json`` of the form
    ``{"fixtures": [{"file": ..., "kind": ..., "recipient": ..., "status": ...}, ...]}``.
    A fixture counts as correct when kind, recipient (case-insensitively) and status all match.
    Returns ``count``, ``correct``, ``accuracy``, ``kind_accuracy``, ``confusion`` (expected
    kind -> predicted kind -> count) and the ``mismatches``.
    """
    root = Path(directory)
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        raise NotFoundError(
            f"no manifest.json in {root}: a corpus directory holds its message files and a "
            "manifest.json that lists each file with its expected kind, recipient and status"
        )
    try:
        entries = json.loads(manifest_path.read_text(encoding="utf-8"))["fixtures"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValidationError(
            f"{manifest_path} is not a corpus manifest ({exc}); expected "
            '{"fixtures": [{"file": ..., "kind": ..., "recipient": ..., "status": ...}]}',
            field="manifest",
        ) from exc
    confusion: dict[str, Counter[str]] = {}
    mismatches: list[dict[str, Any]] = []
    correct = kind_correct = 0
    for entry in entries:
        result = classify_message((root / entry["file"]).read_bytes())
        expected_kind = str(entry["kind"])
        confusion.setdefault(expected_kind, Counter())[result.kind.value] += 1
        same_kind = result.kind.value == expected_kind
        same_recipient = (result.recipient or "").lower() == (entry.get("recipient") or "").lower()
        same_status = result.status == entry.get("status")
        kind_correct += same_kind
        if same_kind and same_recipient and same_status:
            correct += 1
        else:
            mismatches.append(
                {
                    "file": entry["file"],
                    "expected": {k: entry.get(k) for k in ("kind", "recipient", "status")},
                    "got": {
                        "kind": result.kind.value,
                        "recipient": result.recipient,
                        "status": result.status,
                        "reason": result.reason.value,
                        "explanation": result.explanation,
                    },
                }
            )
    count = len(entries)
    return {
        "count": count,
        "correct": correct,
        "accuracy": correct / count if count else 0.0,
        "kind_correct": kind_correct,
        "kind_accuracy": kind_correct / count if count else 0.0,
        "confusion": {k: dict(v) for k, v in sorted(confusion.items())},
        "mismatches": mismatches,
    }


#: Sisimai's reasons for which it calls a bounce hard: the recipient's address is at fault.
_REFERENCE_HARD = frozenset({"userunknown", "hostunknown", "hasmoved", "notaccept"})
#: Sisimai's reasons for messages that are not failures.
_REFERENCE_NOT_BOUNCE = frozenset({"delivered", "vacation", "feedback"})
_CLASSES = ("hard", "soft_or_block", "not_a_bounce")


def _reference_class(labels: list[dict[str, Any]]) -> str:
    if not labels:
        return "not_a_bounce"  # the reference found no bounce in it
    reason = str(labels[0].get("reason", ""))
    if reason in _REFERENCE_NOT_BOUNCE:
        return "not_a_bounce"
    return "hard" if reason in _REFERENCE_HARD else "soft_or_block"


def _our_class(kind: str, reason: str) -> str:
    if kind == "hard":
        return "hard"
    if kind in {"soft", "block"}:
        return "soft_or_block"
    if kind in {"complaint", "auto_reply"} or reason in {"delivered", "not_a_bounce"}:
        return "not_a_bounce"
    return "no_verdict"


def evaluate_reference_corpus(
    directory: str | Path, *, split: str, show_mismatches: bool = False
) -> dict[str, Any]:
    """Score the classifier against a reference classifier's labels (the issue's five figures).

    ``directory`` holds ``provenance.json`` (one entry per message: ``file``, ``split``,
    ``source``, and the source project's own ``source_expected_recipients`` where it has them)
    and ``sisimai-labels.json`` (the reference classifier's reason and recipient per file).
    Figures, for the messages of ``split``:

    * ``agreement``: share of messages whose class (hard / soft-or-block / not-a-bounce) is the
      reference's. Ours: hard; soft or block; complaint, auto-reply, a delivery report or
      "not a bounce". An ``unknown`` without one of those reasons is no verdict and disagrees.
    * ``hard_precision``: share of our hard verdicts the reference calls hard (userunknown,
      hostunknown, hasmoved, notaccept); ``hard_recall``: share of the reference's hard ones
      we call hard.
    * ``recipient_accuracy``: share of the reference's bounces with a known recipient (the
      source project's expected addresses where it gives them, else the reference's) whose
      recipient we extract exactly (case-insensitively).
    * ``unknown_rate``: share of the reference's bounces to which we give no verdict.

    ``mismatches`` are listed only with ``show_mismatches`` (never for a held-out split).
    """
    root = Path(directory)
    provenance = json.loads((root / "provenance.json").read_text(encoding="utf-8"))
    labels = json.loads((root / "sisimai-labels.json").read_text(encoding="utf-8"))
    entries = [e for e in provenance if e["split"] == split]
    agree = ours_hard = ours_hard_right = ref_hard = ref_hard_found = 0
    with_recipient = recipient_right = bounces = no_verdict = 0
    confusion: dict[str, Counter[str]] = {c: Counter() for c in _CLASSES}
    by_source: dict[str, Counter[str]] = {}
    mismatches: list[dict[str, Any]] = []
    for entry in entries:
        result = classify_message((root / entry["file"]).read_bytes())
        reference = labels.get(entry["file"], [])
        expected = _reference_class(reference)
        got = _our_class(result.kind.value, result.reason.value)
        confusion[expected][got] += 1
        counts = by_source.setdefault(entry["source"], Counter())
        counts["count"] += 1
        agree += got == expected
        counts["agree"] += got == expected
        ours_hard += got == "hard"
        ours_hard_right += got == "hard" and expected == "hard"
        ref_hard += expected == "hard"
        ref_hard_found += expected == "hard" and got == "hard"
        recipient_ok = None
        if expected != "not_a_bounce":
            bounces += 1
            no_verdict += got == "no_verdict"
            wanted = entry.get("source_expected_recipients") or [
                str(r.get("recipient", "")) for r in reference if r.get("recipient")
            ]
            if wanted:
                with_recipient += 1
                recipient_ok = (result.recipient or "").lower() in {w.lower() for w in wanted}
                recipient_right += recipient_ok
        if show_mismatches and (got != expected or recipient_ok is False):
            mismatches.append(
                {
                    "file": entry["file"],
                    "reference": [
                        {k: r.get(k) for k in ("reason", "recipient", "status")} for r in reference
                    ],
                    "expected_class": expected,
                    "got": {
                        "class": got,
                        "kind": result.kind.value,
                        "reason": result.reason.value,
                        "recipient": result.recipient,
                        "status": result.status,
                        "explanation": result.explanation,
                    },
                }
            )

    def share(part: int, whole: int) -> float | None:
        return round(part / whole, 4) if whole else None

    figures: dict[str, Any] = {
        "split": split,
        "count": len(entries),
        "agreement": share(agree, len(entries)),
        "hard_precision": share(ours_hard_right, ours_hard),
        "hard_recall": share(ref_hard_found, ref_hard),
        "recipient_accuracy": share(recipient_right, with_recipient),
        "unknown_rate": share(no_verdict, bounces),
        "counts": {
            "ours_hard": ours_hard,
            "reference_hard": ref_hard,
            "bounces": bounces,
            "with_recipient": with_recipient,
        },
        "confusion": {k: dict(v) for k, v in confusion.items()},
        "by_source": {k: dict(v) for k, v in sorted(by_source.items())},
        "reference": labels.get("_labeller", "unknown"),
    }
    if show_mismatches:
        figures["mismatches"] = mismatches
    return figures
