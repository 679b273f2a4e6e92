"""``postwise events``: send events, run the batch writer, inspect the pipeline."""

from __future__ import annotations

import json
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import click

from postwise.cli.common import emit_json, get_runtime
from postwise.errors import ValidationError
from postwise.redis_client import as_text


@click.group()
def events() -> None:
    """The event pipeline: ingestion, the batch writer (collector) and its state."""


@events.command()
@click.option("--batch-size", default=1000, show_default=True, help="Events per transaction.")
@click.option(
    "--flush-interval",
    default=1.0,
    show_default=True,
    help="Seconds a partial batch waits for more events before it is written.",
)
@click.option(
    "--claim-idle",
    default=60.0,
    show_default=True,
    help="Seconds after which another consumer's pending events are taken over.",
)
@click.option("--consumer", default=None, help="Consumer name (default: host-pid-random).")
@click.option(
    "--writers",
    type=click.IntRange(1, 16),
    default=1,
    show_default=True,
    help="Consumers in this process, each writing its own batches (the database work of one "
    "overlaps the stream work of another; 2 doubles throughput on 2 cores, see "
    "docs/analytics.md).",
)
@click.option("--sink", default=None, help="Analytics sink (default: settings.analytics_sink).")
@click.option("--max-events", type=int, default=None, help="Stop after storing this many.")
@click.option(
    "--exit-when-idle",
    type=float,
    default=None,
    help="Stop once the stream has been empty for this many seconds.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the final counts as JSON.")
@click.pass_context
def collect(
    ctx: click.Context,
    *,
    batch_size: int,
    flush_interval: float,
    claim_idle: float,
    consumer: str | None,
    writers: int,
    sink: str | None,
    max_events: int | None,
    exit_when_idle: float | None,
    as_json: bool,
) -> None:
    """Run the batch writer: stream → sink, in batches, acknowledged after each commit.

    Run as many as needed (each is one consumer of the 'analytics' group). SIGTERM or Ctrl-C
    finishes the batch in hand and stops.
    """
    from postwise.analytics.collector import Collector, CollectorConfig, open_sink

    runtime = get_runtime(ctx, process="collector")
    config = CollectorConfig(
        batch_size=batch_size, flush_interval=flush_interval, claim_idle=claim_idle
    )
    target = open_sink(runtime, sink)
    stop = threading.Event()

    def request_stop(_signum: int, _frame: Any) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    try:
        names = [consumer] if writers == 1 else [
            f"{consumer}-{i}" if consumer else None for i in range(writers)
        ]  # fmt: skip
        collectors = [Collector(runtime, target, config=config, consumer=name) for name in names]
        if not as_json:
            click.echo(
                f"collecting into {target.name!r} as "
                f"{', '.join(repr(c.consumer) for c in collectors)} "
                f"(batches of {batch_size}, flushed every {flush_interval:g} s)",
                err=True,
            )
        if writers == 1:
            stats = collectors[0].run(stop, max_events=max_events, exit_when_idle=exit_when_idle)
        else:
            stats = _run_together(collectors, stop, max_events, exit_when_idle)
    finally:
        target.close()
    if as_json:
        emit_json(stats.to_dict())
    else:
        click.echo(
            f"stored {stats.stored} events ({stats.duplicates} duplicates dropped, "
            f"{stats.dead_lettered} dead-lettered) in {stats.batches} batches",
            err=True,
        )


def _run_together(
    collectors: list[Any], stop: threading.Event, max_events: int | None, idle: float | None
) -> Any:
    """Run ``collectors`` in threads until ``stop``, ``max_events`` stored in all, or each
    has been idle for ``idle`` seconds; their counts added up."""
    from postwise.analytics.collector import CollectorStats

    failures: list[BaseException] = []

    def run(collector: Any) -> None:
        try:
            collector.run(stop, exit_when_idle=idle)
        except BaseException as exc:  # one writer failing stops the others, then is raised
            failures.append(exc)
            stop.set()

    threads = [threading.Thread(target=run, args=(c,), name=c.consumer) for c in collectors]
    for thread in threads:
        thread.start()
    while any(t.is_alive() for t in threads):
        if max_events is not None and sum(c.stats.stored for c in collectors) >= max_events:
            stop.set()
        for thread in threads:
            thread.join(timeout=0.05)
    if failures:
        raise failures[0]
    return CollectorStats.combined(c.stats for c in collectors)


def _read_events(path: Path) -> Iterator[Any]:
    """Events from a JSON array, a JSON object or JSON lines."""
    text = path.read_text(encoding="utf-8")
    stripped = text.lstrip()
    if stripped.startswith("["):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ValidationError(f"{path}: not valid JSON: {exc}") from None
        yield from data
        return
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            yield json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValidationError(f"{path}:{number}: not valid JSON: {exc}") from None


@events.command()
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--partial",
    is_flag=True,
    help="Store the valid events of each batch and report the invalid ones.",
)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def send(ctx: click.Context, file: Path, partial: bool, as_json: bool) -> None:
    """Ingest the events in FILE (a JSON array or JSON lines), in batches of 1,000."""
    from postwise.analytics.ingest import MAX_BATCH_EVENTS, EventBatchError, ingest

    runtime = get_runtime(ctx)
    accepted = duplicates = 0
    rejected: list[dict[str, Any]] = []
    batch: list[Any] = []
    offset = 0

    def flush() -> None:
        nonlocal accepted, duplicates, offset, batch
        try:
            result = ingest(runtime, batch, partial=partial)
        except EventBatchError as exc:
            for error in exc.errors:
                click.echo(
                    f"{file}: event {offset + error.index}: {error.field}: {error.error}",
                    err=True,
                )
            raise ValidationError(
                f"{len(exc.errors)} invalid events in the batch starting at event {offset}; "
                f"{accepted} events were accepted before it. Fix them or pass --partial"
            ) from None
        accepted += len(result.accepted)
        duplicates += len(result.duplicates)
        for error in result.rejected:
            rejected.append({**error.to_dict(), "index": offset + error.index})
        offset += len(batch)
        batch = []

    for item in _read_events(file):
        batch.append(item)
        if len(batch) == MAX_BATCH_EVENTS:
            flush()
    if batch:
        flush()
    if as_json:
        emit_json({"accepted": accepted, "duplicates": duplicates, "rejected": rejected})
    else:
        for error in rejected[:50]:
            click.echo(
                f"{file}: event {error['index']}: {error['field']}: {error['error']}", err=True
            )
        click.echo(f"accepted {accepted}, duplicates {duplicates}, rejected {len(rejected)}")


@events.command()
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """The stream's length and the analytics group's backlog, pending events and consumers."""
    from postwise.analytics.collector import DEAD_LETTER_STREAM, GROUP, ensure_group
    from postwise.events import EVENT_STREAM

    runtime = get_runtime(ctx)
    client = runtime.redis
    ensure_group(client)
    groups: Any = client.xinfo_groups(EVENT_STREAM)
    group = next(g for g in groups if g["name"] in (GROUP, GROUP.encode()))
    consumers: Any = client.xinfo_consumers(EVENT_STREAM, GROUP)
    consumers_report = [
        {
            "name": as_text(c["name"]),
            "pending": int(c["pending"]),
            "idle_seconds": round(int(c["idle"]) / 1000, 1),
        }
        for c in consumers
    ]
    report = {
        "stream": EVENT_STREAM,
        "length": int(client.xlen(EVENT_STREAM)),
        "maxlen": runtime.settings.event_stream_maxlen,
        "group": GROUP,
        "lag": group.get("lag"),
        "pending": int(group["pending"]),
        "consumers": consumers_report,
        "dead_letters": int(client.xlen(DEAD_LETTER_STREAM)),
    }
    if as_json:
        emit_json(report)
        return
    click.echo(
        f"{EVENT_STREAM}: {report['length']} entries (max ~{report['maxlen']}); "
        f"group {GROUP}: {report['lag']} not yet read, {report['pending']} read but not "
        f"written; {report['dead_letters']} dead letters"
    )
    for consumer in consumers_report:
        click.echo(
            f"  {consumer['name']}: {consumer['pending']} pending, "
            f"idle {consumer['idle_seconds']} s"
        )
