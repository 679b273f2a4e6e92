"""``postwise bench``: benchmarks whose figures go into docs/benchmarks.md.

Each subcommand lives with the subsystem it measures and is loaded lazily.
"""

from __future__ import annotations

import click

from postwise.cli import LazyGroup

BENCH_COMMANDS: dict[str, str] = {
    "send": "postwise.delivery.bench:bench_send",
    "render": "postwise.content.bench:bench_render",
    "ingest": "postwise.analytics.bench:bench_ingest",
    "metrics": "postwise.analytics.bench:bench_metrics",
    "triggers": "postwise.triggers.bench:bench_triggers",
    "experiments": "postwise.experiments.bench:bench_experiments",
    "import": "postwise.contacts.bench:bench_import",
    "bounces": "postwise.compliance.bench:bench_bounces",
}


@click.group(cls=LazyGroup, lazy_commands=BENCH_COMMANDS)
def bench() -> None:
    """Measure throughput and latency on this machine (record results in docs/benchmarks.md)."""
