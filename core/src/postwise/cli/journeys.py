"""``postwise journeys``: save, inspect, dry-run, simulate and run multi-step journeys."""

from __future__ import annotations

import json
import logging
import signal
import threading
from typing import Any

import click

from postwise.cli.common import emit_json, get_runtime
from postwise.cli.triggers import _read_data
from postwise.errors import ValidationError

log = logging.getLogger(__name__)


@click.group()
def journeys() -> None:
    """Journeys: flows of waits, branches, splits and sends (see docs/journeys.md)."""


@journeys.command()
@click.argument("path", type=click.Path(allow_dash=True))
@click.option("--replace", is_flag=True, help="Save a new version of a journey that exists.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def create(ctx: click.Context, path: str, replace: bool, as_json: bool) -> None:
    """Save the journey in a JSON or YAML file (a new version with --replace)."""
    from postwise.errors import NotFoundError
    from postwise.journeys.store import JourneyStore, journey_to_dict

    data = _read_data(path)
    if not isinstance(data, dict):
        raise ValidationError("the file must hold one journey definition (an object)")
    runtime = get_runtime(ctx)
    with runtime.session() as session:
        store = JourneyStore(session, runtime)
        existing = None
        if replace:
            try:
                existing = store.get(str(data.get("name", "")))
            except NotFoundError:
                existing = None
        journey = store.replace(existing.id or 0, data) if existing else store.create(data)
        result = journey_to_dict(journey, store.definition(journey))
    if as_json:
        emit_json(result)
    else:
        click.echo(
            f"journey {result['name']!r} saved (id {result['id']}, version {result['version']})"
        )


@journeys.command(name="list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def list_(ctx: click.Context, as_json: bool) -> None:
    """Every journey, with its version and whether it is active."""
    from postwise.journeys.store import JourneyStore, journey_to_dict

    runtime = get_runtime(ctx)
    with runtime.session() as session:
        store = JourneyStore(session, runtime)
        rows = [journey_to_dict(j, store.definition(j)) for j in store.list()]
    if as_json:
        emit_json({"journeys": rows})
        return
    for row in rows:
        state = "active" if row["active"] else "paused"
        spec = row["definition"]["entry"]
        entry = spec.get("event") or next(
            k for k in ("date_attribute", "schedule", "segment") if spec.get(k)
        )
        click.echo(f"{row['id']}\t{row['name']}\tv{row['version']}\t{state}\ton {entry}")


def _set_active(ctx: click.Context, ref: str, active: bool) -> None:
    from postwise.journeys.store import JourneyStore

    runtime = get_runtime(ctx)
    with runtime.session() as session:
        journey = JourneyStore(session, runtime).set_active(ref, active)
        click.echo(f"journey {journey.name!r} {'resumed' if active else 'paused'}")


@journeys.command()
@click.argument("ref")
@click.pass_context
def pause(ctx: click.Context, ref: str) -> None:
    """No one enters; contacts inside wait where they are."""
    _set_active(ctx, ref, False)


@journeys.command()
@click.argument("ref")
@click.pass_context
def resume(ctx: click.Context, ref: str) -> None:
    _set_active(ctx, ref, True)


@journeys.command()
@click.argument("ref")
@click.option("--from-version", type=int, required=True)
@click.option("--map", "pairs", multiple=True, required=True, help="OLD=NEW step ids.")
@click.pass_context
def migrate(ctx: click.Context, ref: str, from_version: int, pairs: tuple[str, ...]) -> None:
    """Move contacts of an older version to the current one: --map wait=pause ..."""
    from postwise.journeys.store import JourneyStore

    mapping: dict[str, str] = {}
    for pair in pairs:
        old, sep, new = pair.partition("=")
        if not sep or not old or not new:
            raise ValidationError(f"write each mapping as OLD=NEW, not {pair!r}", field="map")
        mapping[old] = new
    runtime = get_runtime(ctx)
    with runtime.session() as session:
        moved = JourneyStore(session, runtime).migrate(ref, from_version, mapping)
    for step, count in moved.items():
        click.echo(f"{step} -> {mapping[step]}: {count} contacts moved")


@journeys.command()
@click.argument("ref")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def report(ctx: click.Context, ref: str, as_json: bool) -> None:
    """Per step: entered, waiting now, sent, opened, clicked, converted, exited."""
    from postwise.journeys.dryrun import journey_report

    result = journey_report(get_runtime(ctx), ref)
    if as_json:
        emit_json(result)
        return
    goal = result["goal"]
    click.echo(
        f"{result['journey']} v{result['version']}: entered {result['entered']}, inside now "
        f"{result['inside_now']}, converted {goal['converted']} ({goal['conversion_rate']})"
    )
    click.echo("step\tentered\twaiting\tsent\topened\tclicked\tconverted\texited")
    for step in result["steps"]:
        click.echo(
            "\t".join(
                str(step[k])
                for k in (
                    "step",
                    "entered",
                    "waiting_now",
                    "sent",
                    "opened",
                    "clicked",
                    "converted",
                    "exited",
                )
            )
        )
    click.echo(f"exited by reason: {json.dumps(result['exited_by_reason'])}")


@journeys.command(name="test")
@click.argument("ref")
@click.option("--contact", "contact_id", type=int, required=True)
@click.option("--event", "event_file", type=click.Path(allow_dash=True), default=None)
@click.option("--assume", multiple=True, help="Event types assumed to arrive while waiting.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def test_(
    ctx: click.Context,
    *,
    ref: str,
    contact_id: int,
    event_file: str | None,
    assume: tuple[str, ...],
    as_json: bool,
) -> None:
    """Dry-run the journey for one contact: which path, which waits, which sends."""
    from postwise.journeys.dryrun import dry_run_journey

    event = _read_data(event_file) if event_file else None
    result = dry_run_journey(get_runtime(ctx), ref, contact_id, event=event, assume_events=assume)
    if as_json:
        emit_json(result)
        return
    if not result["enters"]:
        click.echo(f"does not enter: {result.get('entry')}")
        return
    for item in result["path"]:
        click.echo(f"{item['at']}  {item['step']}: {item.get('does', '')}")
    click.echo(f"ends: {result['ends']}; sends: {result['sends']}")


@journeys.command()
@click.argument("ref")
@click.option("--sample", default=1000, show_default=True)
@click.pass_context
def simulate(ctx: click.Context, ref: str, sample: int) -> None:
    """Dry-run a random sample of contacts: how many take each step, how they end."""
    from postwise.journeys.dryrun import simulate_journey

    emit_json(simulate_journey(get_runtime(ctx), ref, sample=sample))


@journeys.command(name="import-triggers")
@click.argument("refs", nargs=-1)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def import_triggers_(ctx: click.Context, refs: tuple[str, ...], as_json: bool) -> None:
    """Turn triggers (all active ones, or those named) into one-step journeys, pausing each."""
    from postwise.journeys.migrate import import_triggers

    runtime = get_runtime(ctx)
    with runtime.session() as session:
        outcomes = import_triggers(runtime, session, list(refs) or None)
    if as_json:
        emit_json({"triggers": outcomes})
        return
    for outcome in outcomes:
        if "journey_id" in outcome:
            click.echo(f"{outcome['trigger']}: now journey {outcome['journey_id']} (paused)")
        else:
            click.echo(f"{outcome['trigger']}: left as a trigger: {outcome['skipped']}")


@journeys.command(name="rebuild-index")
@click.pass_context
def rebuild_index(ctx: click.Context) -> None:
    """Re-add every waiting contact to the Redis due index from the database."""
    from postwise.journeys.engine import rebuild_due_index

    click.echo(f"{rebuild_due_index(get_runtime(ctx))} waiting runs indexed")


@journeys.command()
@click.option("--consumer", default=None, help="Consumer name (default: host-pid).")
@click.option("--batch-size", default=500, show_default=True)
@click.option("--from-start", is_flag=True, help="A new group starts at the oldest event.")
@click.option(
    "--send-workers",
    default=8,
    show_default=True,
    help="Threads submitting sends (one contact's in order); sends wait on database commits.",
)
@click.option(
    "--due-lease-ms",
    default=60_000,
    show_default=True,
    help="A claimed due step comes due again after this long if its worker died.",
)
@click.option(
    "--claim-idle-ms",
    default=60_000,
    show_default=True,
    help="Events another worker read and left unacknowledged this long are taken over.",
)
@click.pass_context
def run(
    ctx: click.Context,
    *,
    consumer: str | None,
    batch_size: int,
    from_start: bool,
    send_workers: int,
    due_lease_ms: int,
    claim_idle_ms: int,
) -> None:
    """Run a journey worker (events and due steps) until SIGINT/SIGTERM; run more to scale."""
    from postwise.journeys.engine import JourneyEngine

    runtime = get_runtime(ctx, process="journeys")
    engine = JourneyEngine(
        runtime,
        consumer=consumer,
        batch_size=batch_size,
        send_workers=send_workers,
        due_lease_ms=due_lease_ms,
        claim_idle_ms=claim_idle_ms,
    )
    engine.ensure_group("0" if from_start else "$")
    stop = threading.Event()

    def _stop(signum: int, _frame: Any) -> None:
        log.info("signal %s: stopping after the current batch", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    click.echo(f"journey worker {engine.consumer!r} running", err=True)
    engine.run(stop=stop)
