"""``postwise crm``: sync contacts with CRMs and push engagement back."""

from __future__ import annotations

import json
import signal
import threading
from typing import Any

import click

from postwise.cli.common import emit_json, get_runtime

_json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")


@click.group()
def crm() -> None:
    """Sync contacts from CRMs (HubSpot, Salesforce, ...) and engagement back to them."""


def _summary(data: dict[str, Any]) -> str:
    counts = {k: v for k, v in data.items() if isinstance(v, int) and v}
    errors = data.get("errors") or []
    text = ", ".join(f"{k} {v}" for k, v in counts.items()) or "nothing to do"
    if errors:
        text += "\n  " + "\n  ".join(errors)
    return text


@crm.command("sync")
@click.argument("system")
@click.option("--full", is_flag=True, help="Re-read every record, not only recent changes.")
@click.option("--no-push", is_flag=True, help="Do not push engagement after the poll.")
@_json_option
@click.pass_context
def crm_sync(ctx: click.Context, system: str, full: bool, no_push: bool, as_json: bool) -> None:
    """Poll SYSTEM for changed contacts now, then push engagement."""
    from postwise.crm.api import run_sync

    result = run_sync(get_runtime(ctx), system, full=full, push=not no_push)
    if as_json:
        emit_json(result)
        return
    click.echo(f"poll: {_summary(result['poll'])}")
    if "push" in result:
        click.echo(f"push: {_summary(result['push'])}")


@crm.command("push")
@click.argument("system")
@_json_option
@click.pass_context
def crm_push(ctx: click.Context, system: str, as_json: bool) -> None:
    """Push changed engagement of linked contacts to SYSTEM."""
    from postwise.crm.engagement import push_engagement
    from postwise.crm.status import record_run

    runtime = get_runtime(ctx)
    report = push_engagement(runtime, system)
    record_run(runtime, system, "push", report.to_dict())
    if as_json:
        emit_json(report.to_dict())
    else:
        click.echo(f"push: {_summary(report.to_dict())}")


@crm.command("run")
@click.option("--once", is_flag=True, help="Run one round, then stop.")
@click.option(
    "--interval",
    type=float,
    default=None,
    help="Seconds between rounds (default: the crm_sync_interval_seconds setting).",
)
@click.pass_context
def crm_run(ctx: click.Context, once: bool, interval: float | None) -> None:
    """Poll every configured CRM and push engagement, every interval, until stopped."""
    from postwise.crm.scheduler import run_forever, run_round
    from postwise.crm.sync import configured_systems

    runtime = get_runtime(ctx, process="crm")
    if not configured_systems(runtime):
        click.echo("no CRM is configured: set crm_options (see docs/crm.md)", err=True)
        ctx.exit(2)
    if once:
        click.echo(json.dumps(run_round(runtime), default=str))
        return
    stop = threading.Event()

    def request_stop(_signum: int, _frame: Any) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        rounds = run_forever(
            runtime,
            stop,
            interval=interval,
            on_round=lambda results: click.echo(json.dumps(results, default=str)),
        )
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    click.echo(f"stopped after {rounds} rounds")


@crm.command("status")
@click.argument("system", required=False)
@_json_option
@click.pass_context
def crm_status_command(ctx: click.Context, system: str | None, as_json: bool) -> None:
    """Where each configured CRM's sync stands (or SYSTEM's)."""
    from postwise.crm.status import crm_status
    from postwise.crm.sync import configured_systems, connector_for

    runtime = get_runtime(ctx)
    if system is not None:
        connector_for(runtime, system)
    systems = [system] if system else configured_systems(runtime)
    states = [crm_status(runtime, s) for s in systems]
    if as_json:
        emit_json({"systems": states})
        return
    if not states:
        click.echo("no CRM is configured: set crm_options (see docs/crm.md)")
    for state in states:
        click.echo(
            f"{state['system']}: {state['links']} linked contacts, {state['pending_push']} "
            f"pending push, cursor {state['cursor'] or '-'}, last poll "
            f"{state['last_polled_at'] or 'never'}"
        )
        for kind, last in state["last"].items():
            if last:
                outcome = "ok" if last.get("ok") else f"failed: {last.get('error')}"
                click.echo(f"  last {kind}: {last['at']} {outcome}")
