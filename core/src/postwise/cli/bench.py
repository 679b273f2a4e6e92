"""``postwise bench``: benchmarks whose figures go into docs/benchmarks.md.

Each subcommand lives in :mod:`postwise.devtools.bench` (one module per subsystem measured) and
is loaded lazily, by name: no product module imports the benchmarks, and they import no CLI code
but :mod:`postwise.cli.common`.
"""

from __future__ import annotations

import click

from postwise.cli import LazyGroup

BENCH_COMMANDS: dict[str, str] = {
    "send": "postwise.devtools.bench.delivery:bench_send",
    "render": "postwise.devtools.bench.content:bench_render",
    "ingest": "postwise.devtools.bench.analytics:bench_ingest",
    "metrics": "postwise.devtools.bench.analytics:bench_metrics",
    "triggers": "postwise.devtools.bench.triggers:bench_triggers",
    "journeys": "postwise.devtools.bench.journeys:bench_journeys",
    "experiments": "postwise.devtools.bench.experiments:bench_experiments",
    "import": "postwise.devtools.bench.contacts:bench_import",
    "bounces": "postwise.devtools.bench.compliance:bench_bounces",
    "recommend": "postwise.devtools.bench.recommend:bench_recommend",
}


@click.group(cls=LazyGroup, lazy_commands=BENCH_COMMANDS)
def bench() -> None:
    """Measure throughput and latency on this machine (record results in docs/benchmarks.md)."""
