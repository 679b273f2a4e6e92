"""``postwise triggers``: define, inspect, dry-run and run behaviour triggers."""

from __future__ import annotations

import json
import logging
import signal
import threading
from pathlib import Path
from typing import Any

import click

from postwise.cli.common import emit_json, get_runtime
from postwise.errors import ValidationError

log = logging.getLogger(__name__)


def _read_data(path: str) -> Any:
    """JSON or YAML from ``path`` (``-`` reads standard input)."""
    text = click.get_text_stream("stdin").read() if path == "-" else Path(path).read_text()
    suffix = Path(path).suffix.lower()
    if suffix in (".yaml", ".yml") or (
        suffix != ".json" and not text.lstrip().startswith(("{", "["))
    ):
        try:
            import yaml
        except ImportError:
            raise ValidationError(
                "reading YAML needs PyYAML (pip install pyyaml); or give the definition as JSON"
            ) from None
        try:
            return yaml.safe_load(text)
        except yaml.YAMLError as exc:
            raise ValidationError(f"{path} is not valid YAML: {exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValidationError(f"{path} is not valid JSON: {exc}") from None


@click.group()
def triggers() -> None:
    """Behaviour triggers: events + conditions -> follow-up email (see docs/triggers.md)."""


@triggers.command()
@click.argument("path", type=click.Path(allow_dash=True))
@click.option("--replace", is_flag=True, help="Replace triggers that already exist by name.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def create(ctx: click.Context, path: str, replace: bool, as_json: bool) -> None:
    """Create triggers from a JSON or YAML file holding one definition or a list of them."""
    from postwise.errors import NotFoundError
    from postwise.triggers.store import TriggerStore, trigger_to_dict

    data = _read_data(path)
    definitions = data if isinstance(data, list) else [data]
    runtime = get_runtime(ctx)
    created = []
    with runtime.session() as session:
        store = TriggerStore(session, runtime)
        for index, definition in enumerate(definitions):
            try:
                existing = None
                if replace and isinstance(definition, dict) and "name" in definition:
                    try:
                        existing = store.get(str(definition["name"]))
                    except NotFoundError:
                        existing = None
                trigger = (
                    store.replace(existing.id, definition)
                    if existing is not None and existing.id is not None
                    else store.create(definition)
                )
            except ValidationError as exc:
                if len(definitions) == 1:
                    raise
                field = f"[{index}].{exc.field}" if exc.field else f"[{index}]"
                message = str(exc).removeprefix(f"{exc.field}: ") if exc.field else str(exc)
                raise ValidationError(message, field=field) from None
            created.append(trigger_to_dict(trigger))
    if as_json:
        emit_json({"triggers": created})
        return
    for item in created:
        click.echo(f"trigger {item['name']!r} saved (id {item['id']}, on {item['event_type']})")


@triggers.command(name="list")
@click.option("--event-type", help="Only triggers on this event type.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def list_(ctx: click.Context, event_type: str | None, as_json: bool) -> None:
    """List triggers by event type, highest priority first."""
    from postwise.triggers.store import TriggerStore, trigger_to_dict

    runtime = get_runtime(ctx)
    with runtime.session() as session:
        rows = [
            trigger_to_dict(t) for t in TriggerStore(session, runtime).list(event_type=event_type)
        ]
    if as_json:
        emit_json({"triggers": rows})
        return
    if not rows:
        click.echo("no triggers yet: create one with `postwise triggers create FILE`")
    for row in rows:
        state = "active" if row["active"] else "paused"
        click.echo(
            f"{row['id']}\t{row['name']}\ton {row['event_type']}\tpriority {row['priority']}"
            f"\t{state}"
        )


@triggers.command()
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def show(ctx: click.Context, ref: str, as_json: bool) -> None:
    """Show a trigger's definition (REF is its id or name)."""
    from postwise.triggers.store import TriggerStore, trigger_to_dict

    runtime = get_runtime(ctx)
    with runtime.session() as session:
        data = trigger_to_dict(TriggerStore(session, runtime).get(ref))
    if as_json:
        emit_json(data)
    else:
        click.echo(json.dumps(data, indent=2))


def _set_active(ctx: click.Context, ref: str, active: bool) -> None:
    from postwise.triggers.store import TriggerStore

    runtime = get_runtime(ctx)
    with runtime.session() as session:
        trigger = TriggerStore(session, runtime).set_active(ref, active)
        name = trigger.name
    click.echo(f"trigger {name!r} {'resumed' if active else 'paused'}")


@triggers.command()
@click.argument("ref")
@click.pass_context
def pause(ctx: click.Context, ref: str) -> None:
    """Pause a trigger (delayed sends coming due while paused are cancelled)."""
    _set_active(ctx, ref, False)


@triggers.command()
@click.argument("ref")
@click.pass_context
def resume(ctx: click.Context, ref: str) -> None:
    """Resume a paused trigger."""
    _set_active(ctx, ref, True)


@triggers.command()
@click.argument("ref")
@click.pass_context
def delete(ctx: click.Context, ref: str) -> None:
    """Delete a trigger that has never sent (otherwise pause it)."""
    from postwise.triggers.store import TriggerStore

    runtime = get_runtime(ctx)
    with runtime.session() as session:
        TriggerStore(session, runtime).delete(ref)
    click.echo(f"trigger {ref!r} deleted")


@triggers.command()
@click.argument("ref", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def stats(ctx: click.Context, ref: str | None, as_json: bool) -> None:
    """Counters per trigger: matched, fired, scheduled, cooldown, capped, exited, errors..."""
    from postwise.triggers.compiled import read_invalid
    from postwise.triggers.stats import COUNTERS, read_stats
    from postwise.triggers.store import TriggerStore

    runtime = get_runtime(ctx)
    with runtime.session() as session:
        store = TriggerStore(session, runtime)
        rows = [store.get(ref)] if ref else store.list()
        names = {t.id: t.name for t in rows if t.id is not None}
    counters = read_stats(runtime.redis, store.keys, names)
    invalid = read_invalid(runtime.redis, store.keys)
    result: list[dict[str, Any]] = [
        {
            "trigger_id": tid,
            "name": name,
            "counters": counters[tid],
            "engine_errors": invalid.get(tid, []),
        }
        for tid, name in names.items()
    ]
    if as_json:
        emit_json({"triggers": result})
        return
    click.echo("id\tname\t" + "\t".join(COUNTERS))
    for row in result:
        values = "\t".join(str(row["counters"][c]) for c in COUNTERS)
        click.echo(f"{row['trigger_id']}\t{row['name']}\t{values}")
    for row in result:
        for report in row["engine_errors"]:
            click.echo(
                f"ENGINE {report['consumer']} CANNOT EVALUATE {row['name']!r}: {report['error']}",
                err=True,
            )


@triggers.command(name="test")
@click.argument("event_file", type=click.Path(allow_dash=True))
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def test_(ctx: click.Context, event_file: str, as_json: bool) -> None:
    """Dry-run the event in EVENT_FILE: which triggers would fire, and what stopped the rest.

    The file holds an event as sent to POST /v1/events: at least "type" and "contact_id";
    "properties", "occurred_at" and "event_id" are optional. Nothing is sent or claimed.
    """
    from postwise.triggers.dryrun import dry_run, event_from_json

    runtime = get_runtime(ctx)
    event = event_from_json(_read_data(event_file))
    verdicts = dry_run(runtime, event)
    if as_json:
        emit_json(
            {
                "event_id": event.event_id,
                "type": event.type,
                "contact_id": event.contact_id,
                "fires": [v.trigger for v in verdicts if v.fires],
                "verdicts": [v.to_dict() for v in verdicts],
            }
        )
        return
    if not verdicts:
        click.echo(f"no trigger listens to {event.type!r} events")
        return
    for verdict in verdicts:
        mark = "FIRES  " if verdict.fires else "no     "
        where = f" [{verdict.condition}]" if verdict.condition else ""
        click.echo(
            f"{mark}{verdict.trigger} (priority {verdict.priority}): {verdict.detail}{where}"
        )


@triggers.command()
@click.option("--consumer", help="Consumer name in the group (default: HOST-PID).")
@click.option("--batch-size", default=500, show_default=True, help="Entries read per batch.")
@click.option("--block-ms", default=1000, show_default=True, help="How long a read waits.")
@click.option(
    "--claim-idle-ms",
    default=60_000,
    show_default=True,
    help="Reclaim entries another consumer left pending this long (it died).",
)
@click.option(
    "--linger-ms",
    default=5.0,
    show_default=True,
    help="When fewer events than a batch arrive, wait this long for more before handling them.",
)
@click.option(
    "--send-workers",
    default=4,
    show_default=True,
    help="Threads submitting sends to delivery (one contact's sends stay in order).",
)
@click.option(
    "--from-start",
    is_flag=True,
    help="When the group does not exist yet, start it at the oldest event, not the newest.",
)
@click.pass_context
def run(
    ctx: click.Context,
    *,
    consumer: str | None,
    batch_size: int,
    block_ms: int,
    claim_idle_ms: int,
    linger_ms: float,
    send_workers: int,
    from_start: bool,
) -> None:
    """Run a trigger engine consumer until SIGINT/SIGTERM (run more to scale out)."""
    from postwise.triggers.engine import TriggerEngine

    runtime = get_runtime(ctx, process="triggers")
    engine = TriggerEngine(
        runtime,
        consumer=consumer,
        batch_size=batch_size,
        block_ms=block_ms,
        claim_idle_ms=claim_idle_ms,
        linger_ms=linger_ms,
        send_workers=send_workers,
    )
    engine.ensure_group("0" if from_start else "$")
    stop = threading.Event()

    def _stop(signum: int, _frame: Any) -> None:
        log.info("signal %s: stopping after the current batch", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    click.echo(f"trigger engine consumer {engine.consumer!r} running", err=True)
    engine.run(stop=stop)
