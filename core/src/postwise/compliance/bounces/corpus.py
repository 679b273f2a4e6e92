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
