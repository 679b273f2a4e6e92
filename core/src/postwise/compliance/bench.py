"""``postwise bench bounces``: classification accuracy on a labelled corpus, and throughput.

Accuracy comes from :func:`postwise.compliance.bounces.evaluate_corpus` (kind, recipient and
status must all match the manifest). Throughput is measured twice: classifying alone, and the
whole path a mailbox report takes (classify, find the contact, suppress or count, put the event
on the stream) against a throw-away embedded store, so the figure never touches real data.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import click

from postwise.cli.common import emit_json

__all__ = ["bench_bounces", "default_corpus", "measure"]


def default_corpus() -> Path | None:
    """The fixture corpus of a source checkout, if this is one."""
    for parent in Path(__file__).resolve().parents:
        candidate = parent / "tests" / "core" / "compliance" / "fixtures" / "bounces"
        if (candidate / "manifest.json").is_file():
            return candidate
    return None


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _process(messages: list[bytes], reports: int) -> dict[str, Any]:
    """Process ``reports`` messages (cycling) through a fresh embedded runtime."""
    import uuid

    from postwise.compliance.processing import process_raw_report
    from postwise.runtime import Runtime
    from postwise.settings import load_settings

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


def measure(corpus: Path, *, repeat: int = 5, reports: int = 0) -> dict[str, Any]:
    """Accuracy on ``corpus`` and classification speed (``repeat`` passes over it); with
    ``reports`` > 0 also the end-to-end processing rate."""
    from postwise.compliance.bounces import classify_message, evaluate_corpus

    result = evaluate_corpus(corpus)
    messages = [p.read_bytes() for p in sorted(corpus.glob("*.eml"))]
    timings: list[float] = []
    for _ in range(repeat):
        for raw in messages:
            started = time.perf_counter()
            classify_message(raw)
            timings.append(time.perf_counter() - started)
    figures: dict[str, Any] = {
        "corpus": str(corpus),
        "count": result["count"],
        "correct": result["correct"],
        "accuracy": round(result["accuracy"], 4),
        "kind_accuracy": round(result["kind_accuracy"], 4),
        "confusion": result["confusion"],
        "mismatches": result["mismatches"],
        "classify_per_second": round(len(timings) / sum(timings), 1),
        "classify_ms_p50": round(statistics.median(timings) * 1000, 3),
        "classify_ms_p99": round(_percentile(timings, 0.99) * 1000, 3),
    }
    if reports > 0:
        figures["processing"] = _process(messages, reports)
    return figures


@click.command("bounces")
@click.option(
    "--corpus",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    default=None,
    help="Corpus folder with manifest.json (default: the fixtures).",
)
@click.option(
    "--repeat",
    default=5,
    show_default=True,
    type=click.IntRange(1, 1000),
    help="Classification passes over the corpus for the timing.",
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
def bench_bounces(corpus: Path | None, repeat: int, reports: int, as_json: bool) -> None:
    """Bounce classification accuracy on a labelled corpus, and how fast reports are handled."""
    from postwise.errors import ConfigurationError

    corpus = corpus or default_corpus()
    if corpus is None:
        raise ConfigurationError(
            "no corpus found; pass --corpus DIR (a folder of .eml files with a manifest.json)"
        )
    figures = measure(corpus, repeat=repeat, reports=reports)
    if as_json:
        emit_json(figures)
        return
    click.echo(f"corpus: {figures['corpus']} ({figures['count']} messages)")
    click.echo(
        f"accuracy: {figures['correct']}/{figures['count']} = {figures['accuracy']:.1%} "
        f"(kind only: {figures['kind_accuracy']:.1%})"
    )
    for miss in figures["mismatches"]:
        click.echo(f"  miss {miss['file']}: expected {miss['expected']}, got {miss['got']}")
    click.echo(
        f"classify: {figures['classify_per_second']:.0f} messages/s, "
        f"p50 {figures['classify_ms_p50']} ms, p99 {figures['classify_ms_p99']} ms"
    )
    if "processing" in figures:
        proc = figures["processing"]
        click.echo(
            f"process (classify + act + event, embedded store): "
            f"{proc['reports_per_second']:.0f} reports/s over {proc['reports']}"
        )
