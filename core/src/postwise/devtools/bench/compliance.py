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

import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from postwise.cli.common import emit_json
from postwise.compliance.bounces import classify_message, evaluate_corpus
from postwise.compliance.processing import process_raw_report
from postwise.errors import ConfigurationError
from postwise.runtime import Runtime
from postwise.settings import load_settings

__all__ = ["CORPUS_NAMES", "bench_bounces", "default_corpora", "measure"]

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
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def bench_bounces(corpora: tuple[Path, ...], repeat: int, reports: int, as_json: bool) -> None:
    """Bounce classification accuracy on labelled corpora, and how fast reports are handled."""

    chosen = list(corpora) or default_corpora()
    if not chosen:
        raise ConfigurationError(
            "no corpus found; pass --corpus DIR (a folder of .eml files with a manifest.json)"
        )
    figures = measure(chosen, repeat=repeat, reports=reports)
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
    if "processing" in figures:
        proc = figures["processing"]
        click.echo(
            f"process (classify + act + event, embedded store): "
            f"{proc['reports_per_second']:.0f} reports/s over {proc['reports']}"
        )
