"""``postwise bench bounces``: classification accuracy on labelled corpora, and throughput.

Accuracy comes from :func:`postwise.compliance.bounces.evaluate_corpus` (kind, recipient and
status must all match the manifest), reported for each corpus on its own: the fixture corpus
written alongside the classifier and the held-out corpus written without reading it say different
things and must not be averaged. Throughput is measured twice over all their messages:
classifying alone, and the whole path a mailbox report takes (classify, find the contact,
suppress or count, put the event on the stream) against a throw-away embedded store, so the
figure never touches real data.
"""

from __future__ import annotations

import email
import email.policy
import json
import logging
import statistics
import tempfile
import time
import tracemalloc
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from postwise.cli.common import emit_json
from postwise.compliance.bounces import classify_message, evaluate_corpus
from postwise.compliance.bounces.corpus import evaluate_reference_corpus
from postwise.compliance.processing import process_raw_report
from postwise.errors import ConfigurationError
from postwise.runtime import Runtime
from postwise.settings import load_settings

try:  # Mailman's bounce detector, the comparison the issue quotes (a test-only dependency).
    from flufl.bounce import all_failures as flufl_all_failures
except ImportError:  # pragma: no cover - the comparison is skipped without it
    flufl_all_failures = None  # type: ignore[assignment]

__all__ = [
    "CORPUS_NAMES",
    "REAL_CORPUS",
    "bench_bounces",
    "default_corpora",
    "default_reference_corpus",
    "measure",
    "measure_hostile",
    "measure_reference",
]

#: The labelled corpora of a source checkout, under ``tests/core/compliance/fixtures``.
CORPUS_NAMES = ("bounces", "bounces-heldout")


def default_corpora() -> list[Path]:
    """The fixture corpora of a source checkout (empty when this is not one)."""
    for parent in Path(__file__).resolve().parents:
        fixtures = parent / "tests" / "core" / "compliance" / "fixtures"
        found = [fixtures / n for n in CORPUS_NAMES if (fixtures / n / "manifest.json").is_file()]
        if found:
            return found
    return []


#: The real-bounce corpus (public collections, labelled by a reference classifier).
REAL_CORPUS = "real"
_FIGURES = ("agreement", "hard_precision", "hard_recall", "recipient_accuracy", "unknown_rate")


def default_reference_corpus() -> Path | None:
    """The real-bounce corpus of a source checkout (``None`` when this is not one)."""
    for parent in Path(__file__).resolve().parents:
        corpus = parent / "tests" / "core" / "compliance" / "fixtures" / REAL_CORPUS
        if (corpus / "provenance.json").is_file():
            return corpus
    return None


def _flufl_recipients(directory: Path, split: str) -> dict[str, Any] | None:
    """flufl.bounce's recipient extraction on the same messages, scored the same way (lenient
    to it: right when any address it reports is an expected one)."""
    if flufl_all_failures is None:
        return None
    provenance = json.loads((directory / "provenance.json").read_text(encoding="utf-8"))
    labels = json.loads((directory / "sisimai-labels.json").read_text(encoding="utf-8"))
    right = total = 0
    for entry in provenance:
        reference = labels.get(entry["file"], [])
        if entry["split"] != split or not reference:
            continue
        if str(reference[0].get("reason")) in {"delivered", "vacation", "feedback"}:
            continue
        wanted = entry.get("source_expected_recipients") or [
            str(r.get("recipient")) for r in reference if r.get("recipient")
        ]
        if not wanted:
            continue
        total += 1
        raw = (directory / entry["file"]).read_bytes()
        try:
            temporary, permanent = flufl_all_failures(email.message_from_bytes(raw))
            found = {
                (a.decode("utf-8", "replace") if isinstance(a, bytes) else str(a)).lower()
                for a in (*temporary, *permanent)
            }
        except Exception:  # flufl raises on some broken mail; that is a miss, not a crash
            found = set()
        right += bool(found & {w.lower() for w in wanted})
    return {"recipient_accuracy": round(right / total, 4) if total else None, "count": total}


def measure_reference(directory: Path) -> dict[str, Any]:
    """The issue's five figures on the tuning and the held-out split, side by side, and
    flufl.bounce's recipient extraction on each when it is installed."""
    figures: dict[str, Any] = {"corpus": str(directory)}
    for split in ("tuning", "heldout"):
        result = evaluate_reference_corpus(directory, split=split)
        figures[split] = {k: result[k] for k in ("count", *_FIGURES, "counts", "confusion")}
        figures[split]["reference"] = result["reference"]
        flufl = _flufl_recipients(directory, split)
        if flufl is not None:
            figures[split]["flufl_bounce_recipient_accuracy"] = flufl["recipient_accuracy"]
    return figures


def _hostile_inputs() -> list[tuple[str, bytes]]:
    """Bad input of the kinds the issue names, built here so that no 50 MB file is stored."""
    dsn = (
        b"From: MAILER-DAEMON@example.net\r\nSubject: Undelivered Mail\r\n"
        b"Content-Type: multipart/report; report-type=delivery-status; boundary=B\r\n\r\n"
        b"--B\r\nContent-Type: text/plain\r\n\r\nmail failed\r\n--B\r\n"
        b"Content-Type: message/delivery-status\r\n\r\nFinal-Recipient: rfc822; a@example.net"
    )
    nested = b"Subject: loop\r\nContent-Type: message/rfc822\r\n\r\n" * 2000 + b"x\r\n"
    huge = (
        b"From: MAILER-DAEMON@example.net\r\nSubject: Undelivered Mail\r\n"
        b"Content-Type: text/plain\r\n\r\n550 5.1.1 <a@example.net>: user unknown\r\n"
        + b"A" * 76 * 1024
        + b"\r\n"
    )
    huge = huge + (b"B" * 78 + b"\r\n") * (50 * 1024 * 1024 // 80)
    return [
        ("truncated MIME (DSN cut mid-field)", dsn),
        (
            "unknown transfer encoding and charset",
            b"From: postmaster@example.net\r\nSubject: failure notice\r\n"
            b"Content-Type: text/plain; charset=x-nonesuch\r\n"
            b"Content-Transfer-Encoding: x-strange\r\n\r\n\xff\xfe550 garbage\r\n",
        ),
        ("binary garbage (64 KB)", bytes(range(256)) * 256),
        ("50 MB message", huge),
        ("2,000 nested message/rfc822 parts", nested),
    ]


def measure_hostile() -> list[dict[str, Any]]:
    """Time, peak memory and verdict for each hostile input."""
    rows = []
    for name, raw in _hostile_inputs():
        tracemalloc.start()
        started = time.perf_counter()
        result = classify_message(raw)
        seconds = time.perf_counter() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        rows.append(
            {
                "input": name,
                "bytes": len(raw),
                "kind": result.kind.value,
                "reason": result.reason.value,
                "seconds": round(seconds, 4),
                "peak_mib": round(peak / 2**20, 1),
            }
        )
    return rows


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _process(messages: list[bytes], reports: int) -> dict[str, Any]:
    """Process ``reports`` messages (cycling) through a fresh embedded runtime."""
    import uuid

    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(
            environ={},
            config_file=None,
            data_dir=Path(tmp),
            redis_url=f"fakeredis://bench-{uuid.uuid4().hex}",
        )
        runtime = Runtime(settings)
        try:
            runtime.migrate()
            # Sender-side refusals log an alert each; thousands of them would bury the figures.
            logging.getLogger("postwise.compliance.processing").setLevel(logging.ERROR)
            started = time.perf_counter()
            for i in range(reports):
                # A unique trailer gives each report its own event id, as distinct mail would.
                process_raw_report(runtime, messages[i % len(messages)] + f"\n{i}\n".encode())
            seconds = time.perf_counter() - started
        finally:
            runtime.close()
    return {
        "reports": reports,
        "seconds": round(seconds, 3),
        "reports_per_second": round(reports / seconds, 1),
    }


def measure(corpora: Sequence[Path], *, repeat: int = 5, reports: int = 0) -> dict[str, Any]:
    """Accuracy on each of ``corpora`` and classification speed (``repeat`` passes over all
    their messages); with ``reports`` > 0 also the end-to-end processing rate."""

    results: list[dict[str, Any]] = []
    messages: list[bytes] = []
    for corpus in corpora:
        result = evaluate_corpus(corpus)
        results.append(
            {
                "corpus": str(corpus),
                "count": result["count"],
                "correct": result["correct"],
                "accuracy": round(result["accuracy"], 4),
                "kind_correct": result["kind_correct"],
                "kind_accuracy": round(result["kind_accuracy"], 4),
                "confusion": result["confusion"],
                "mismatches": result["mismatches"],
            }
        )
        messages.extend(p.read_bytes() for p in sorted(corpus.glob("*.eml")))
    timings: list[float] = []
    for _ in range(repeat):
        for raw in messages:
            started = time.perf_counter()
            classify_message(raw)
            timings.append(time.perf_counter() - started)
    figures: dict[str, Any] = {"corpora": results, "messages": len(messages)}
    if timings:
        figures.update(
            classify_per_second=round(len(timings) / sum(timings), 1),
            classify_ms_p50=round(statistics.median(timings) * 1000, 3),
            classify_ms_p99=round(_percentile(timings, 0.99) * 1000, 3),
        )
    if timings:
        tracemalloc.start()
        for raw in messages:
            classify_message(raw)
        figures["classify_peak_mib"] = round(tracemalloc.get_traced_memory()[1] / 2**20, 1)
        tracemalloc.stop()
    if reports > 0 and messages:
        figures["processing"] = _process(messages, reports)
    return figures


@click.command("bounces")
@click.option(
    "--corpus",
    "corpora",
    multiple=True,
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Corpus folder with manifest.json; repeat for several, each reported on its own "
    "(default: the fixture corpus and the held-out corpus).",
)
@click.option(
    "--repeat",
    default=5,
    show_default=True,
    type=click.IntRange(1, 1000),
    help="Classification passes over the corpora for the timing.",
)
@click.option(
    "--process",
    "reports",
    default=2000,
    show_default=True,
    type=click.IntRange(0, 10_000_000),
    help="Reports to push through the whole processing path (0: skip).",
)
@click.option(
    "--reference",
    "reference",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="Real-bounce corpus with provenance.json and sisimai-labels.json (default: "
    "tests/core/compliance/fixtures/real of a checkout): the five figures of issue 11 on its "
    "tuning and held-out splits.",
)
@click.option("--hostile/--no-hostile", default=True, help="Time the bad-input cases.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench_bounces(
    *,
    corpora: tuple[Path, ...],
    repeat: int,
    reports: int,
    reference: Path | None,
    hostile: bool,
    as_json: bool,
) -> None:
    """Bounce classification accuracy on labelled corpora and on real mail against a reference
    classifier, how fast reports are handled, and bad input's time and memory."""

    chosen = list(corpora) or default_corpora()
    if not chosen:
        raise ConfigurationError(
            "no corpus found; pass --corpus DIR (a folder of .eml files with a manifest.json)"
        )
    figures = measure(chosen, repeat=repeat, reports=reports)
    real = reference or (None if corpora else default_reference_corpus())
    if real is not None:
        figures["reference"] = measure_reference(real)
    if hostile:
        figures["hostile"] = measure_hostile()
    if as_json:
        emit_json(figures)
        return
    for result in figures["corpora"]:
        click.echo(f"corpus: {result['corpus']} ({result['count']} messages)")
        click.echo(
            f"  accuracy: {result['correct']}/{result['count']} = {result['accuracy']:.1%} "
            f"(kind only: {result['kind_correct']}/{result['count']} = "
            f"{result['kind_accuracy']:.1%})"
        )
        for miss in result["mismatches"]:
            click.echo(f"  miss {miss['file']}: expected {miss['expected']}, got {miss['got']}")
    if "classify_per_second" in figures:
        click.echo(
            f"classify: {figures['classify_per_second']:.0f} messages/s over "
            f"{figures['messages']} messages, p50 {figures['classify_ms_p50']} ms, "
            f"p99 {figures['classify_ms_p99']} ms"
        )
    if "classify_peak_mib" in figures:
        click.echo(f"classify peak memory (tracemalloc): {figures['classify_peak_mib']} MiB")
    if "reference" in figures:
        ref = figures["reference"]
        click.echo(f"real mail: {ref['corpus']} (reference: {ref['tuning']['reference']})")
        click.echo(f"  {'figure':<34}{'tuning':>10}{'held-out':>10}")
        names = (*_FIGURES, "flufl_bounce_recipient_accuracy")
        for name in names:
            cells = [ref[s].get(name) for s in ("tuning", "heldout")]
            text = [f"{c:.1%}" if isinstance(c, float) else "-" for c in cells]
            click.echo(f"  {name:<34}{text[0]:>10}{text[1]:>10}")
        click.echo(f"  {'messages':<34}{ref['tuning']['count']:>10}{ref['heldout']['count']:>10}")
    for row in figures.get("hostile", []):
        click.echo(
            f"bad input: {row['input']} ({row['bytes']:,} bytes): {row['kind']}/{row['reason']} "
            f"in {row['seconds']} s, peak {row['peak_mib']} MiB"
        )
    if "processing" in figures:
        proc = figures["processing"]
        click.echo(
            f"process (classify + act + event, embedded store): "
            f"{proc['reports_per_second']:.0f} reports/s over {proc['reports']}"
        )
