"""``postwise consent``, ``postwise privacy`` and ``postwise reputation``."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import click

from postwise.cli.common import emit_json, get_runtime
from postwise.errors import ValidationError
from postwise.runtime import Runtime

__all__ = ["consent", "privacy", "reputation"]


def _contact_id(runtime: Runtime, email: str | None, contact_id: int | None) -> int:
    from postwise.compliance.erasure import find_contact

    if (email is None) == (contact_id is None):
        raise ValidationError("name the contact by EMAIL or by --id, not both", field="contact")
    with runtime.session() as session:
        contact = find_contact(session, contact_id=contact_id, email=email)
        assert contact.id is not None
        return contact.id


_email_argument = click.argument("email", required=False)
_id_option = click.option("--id", "contact_id", type=int, help="The contact's id instead.")
_json_option = click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")


@click.group()
def consent() -> None:
    """Show, grant and withdraw consent (the ledger is append-only)."""


def _record_dict(record: Any) -> dict[str, Any]:
    return {
        "id": record.id,
        "purpose": record.purpose,
        "granted": record.granted,
        "confirmed": record.confirmed,
        "at": record.at.isoformat(),
        "source": record.source,
        "ip": record.ip,
        "wording_version": record.wording_version,
    }


@consent.command("show")
@_email_argument
@_id_option
@_json_option
@click.pass_context
def consent_show(
    ctx: click.Context, email: str | None, contact_id: int | None, as_json: bool
) -> None:
    """The consent ledger of one contact, oldest first."""
    from postwise.compliance import consent as ledger

    runtime = get_runtime(ctx)
    cid = _contact_id(runtime, email, contact_id)
    with runtime.session() as session:
        history = [_record_dict(r) for r in ledger.consent_history(session, cid)]
        allowed = ledger.has_valid_consent(session, cid)
    if as_json:
        emit_json({"contact_id": cid, "marketing_consent": allowed, "history": history})
        return
    for r in history:
        state = "granted" if r["granted"] else "withdrawn"
        if r["granted"] and not r["confirmed"]:
            state = "pending confirmation"
        click.echo(
            f"{r['at']}  {r['purpose']:<12} {state:<21} source={r['source']} "
            f"ip={r['ip'] or '-'} wording={r['wording_version'] or '-'}"
        )
    click.echo(f"marketing consent: {'valid' if allowed else 'none'}")


@consent.command("grant")
@_email_argument
@_id_option
@click.option("--purpose", default="marketing", show_default=True)
@click.option("--source", default="cli", show_default=True)
@click.option("--ip", default=None, help="The IP address consent was given from.")
@click.option("--wording", "wording_version", default=None, help="Version of the wording shown.")
@click.option("--double-opt-in", is_flag=True, help="Record it pending; print the confirm link.")
@_json_option
@click.pass_context
def consent_grant(
    ctx: click.Context,
    *,
    email: str | None,
    contact_id: int | None,
    purpose: str,
    source: str,
    ip: str | None,
    wording_version: str | None,
    double_opt_in: bool,
    as_json: bool,
) -> None:
    """Record a grant of consent."""
    from postwise.compliance import consent as ledger

    runtime = get_runtime(ctx)
    cid = _contact_id(runtime, email, contact_id)
    with runtime.session() as session:
        grant = ledger.grant_consent(
            session,
            runtime.settings,
            cid,
            purpose,
            source=source,
            ip=ip,
            wording_version=wording_version,
            double_opt_in=double_opt_in,
        )
        result = {"record": _record_dict(grant.record), "confirmation_url": grant.confirmation_url}
    if as_json:
        emit_json(result)
    elif grant.confirmation_url:
        click.echo(f"pending; send this confirmation link: {grant.confirmation_url}")
    else:
        click.echo(f"consent for {purpose} granted")


@consent.command("withdraw")
@_email_argument
@_id_option
@click.option("--purpose", default="marketing", show_default=True)
@_json_option
@click.pass_context
def consent_withdraw(
    ctx: click.Context, email: str | None, contact_id: int | None, purpose: str, as_json: bool
) -> None:
    """Record a withdrawal (withdrawing marketing unsubscribes the contact)."""
    from postwise.compliance import consent as ledger

    runtime = get_runtime(ctx)
    cid = _contact_id(runtime, email, contact_id)
    with runtime.session() as session:
        record = ledger.withdraw_consent(session, cid, purpose, source="cli")
        result = _record_dict(record)
    if as_json:
        emit_json({"record": result})
    else:
        click.echo(f"consent for {purpose} withdrawn")


@click.group()
def privacy() -> None:
    """Erase a person's data or export everything held about them (GDPR)."""


@privacy.command("erase")
@_email_argument
@_id_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@_json_option
@click.pass_context
def privacy_erase(
    ctx: click.Context, email: str | None, contact_id: int | None, yes: bool, as_json: bool
) -> None:
    """Erase a contact (by EMAIL or --id) from every store; only a hashed suppression and an
    audit record remain. An EMAIL with no contact is still suppressed for good."""
    from postwise.compliance.erasure import erase_contact

    if (email is None) == (contact_id is None):
        raise ValidationError("name the contact by EMAIL or by --id, not both", field="contact")
    if not yes:
        click.confirm(
            "Erase this person's data from every store? This cannot be undone", abort=True
        )
    runtime = get_runtime(ctx)
    report = erase_contact(runtime, contact_id=contact_id, email=email, actor="cli")
    if as_json:
        emit_json(report.to_dict())
    else:
        removed = ", ".join(f"{k}={v}" for k, v in report.counts.items() if v)
        kept = report.email_hash[:12]
        click.echo(f"erased (kept: suppression {kept}...); {removed or 'no rows'}")
        for store, why in report.incomplete.items():
            click.echo(f"INCOMPLETE {store}: {why}; run the erasure again with --id", err=True)
    if report.incomplete:
        ctx.exit(1)


@privacy.command("export")
@_email_argument
@_id_option
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the JSON here instead of standard output.",
)
@click.pass_context
def privacy_export(
    ctx: click.Context, email: str | None, contact_id: int | None, output: Path | None
) -> None:
    """Everything held about a contact, as JSON (the right of access)."""
    from postwise.compliance.erasure import export_contact

    if (email is None) == (contact_id is None):
        raise ValidationError("name the contact by EMAIL or by --id, not both", field="contact")
    data = export_contact(get_runtime(ctx), contact_id=contact_id, email=email)
    if output is None:
        emit_json(data)
    else:
        output.write_text(json.dumps(data, indent=2, default=str))
        click.echo(f"written to {output}")


@click.group()
def reputation() -> None:
    """Bounce and complaint rates per stream, automatic pauses, and resuming."""


@reputation.command("status")
@_json_option
@click.pass_context
def reputation_status(ctx: click.Context, as_json: bool) -> None:
    """Rates over the window for every active stream, and what is paused."""
    from postwise.compliance import reputation as rep

    runtime = get_runtime(ctx)
    reports = rep.report(runtime.redis, runtime.settings)
    paused = rep.paused_streams(runtime.redis)
    if as_json:
        emit_json({"streams": [r.to_dict() for r in reports], "paused": paused})
        return
    if not reports:
        click.echo("no sending activity in the window")
    for r in reports:
        click.echo(
            f"{r.stream:<40} {r.level:<6} volume={r.volume} "
            f"bounce={r.bounce_rate:.2%} complaint={r.complaint_rate:.2%}"
        )
    for stream, info in paused.items():
        click.echo(f"PAUSED {stream} since {info.get('since')}: {info.get('reason')}")


@reputation.command("resume")
@click.argument("stream")
@_json_option
@click.pass_context
def reputation_resume(ctx: click.Context, stream: str, as_json: bool) -> None:
    """Resume a paused STREAM (provider:NAME, sending_domain:D or recipient_domain:D)."""
    from postwise.compliance import reputation as rep

    lifted = rep.resume(get_runtime(ctx).redis, stream)
    if as_json:
        emit_json({"resumed": stream, "pause": lifted})
    else:
        click.echo(f"resumed {stream} (was paused: {lifted.get('reason')})")


@reputation.command("pause")
@click.argument("stream")
@click.option("--reason", default="paused by an operator", show_default=True)
@click.pass_context
def reputation_pause(ctx: click.Context, stream: str, reason: str) -> None:
    """Pause STREAM by hand until it is resumed."""
    from postwise.compliance import reputation as rep

    if rep.pause(get_runtime(ctx).redis, stream, reason=reason, actor="cli"):
        click.echo(f"paused {stream}")
    else:
        click.echo(f"{stream} was paused already")


@reputation.command("run")
@click.option("--once", is_flag=True, help="Process what is waiting, then stop.")
@click.option(
    "--mailbox-interval",
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds between reads of bounce_mailbox (when it is set).",
)
@click.option("--name", default=None, help="Consumer name (default: host and pid).")
@click.pass_context
def reputation_run(
    ctx: click.Context, once: bool, mailbox_interval: float, name: str | None
) -> None:
    """Run the compliance consumer: act on bounce and complaint events from the stream,
    count sent and delivered volume, read the bounce mailbox, pause streams over threshold."""
    from postwise.compliance.processing import ComplianceConsumer, process_mailbox

    runtime = get_runtime(ctx, process="compliance")
    consumer = ComplianceConsumer(runtime, name=name)
    stopping = False

    def stop(_signum: int, _frame: Any) -> None:
        nonlocal stopping
        stopping = True

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    next_mailbox = 0.0
    handled = 0
    try:
        while not stopping:
            if runtime.settings.bounce_mailbox and time.monotonic() >= next_mailbox:
                run = process_mailbox(runtime)
                if run.read:
                    click.echo(f"mailbox: {json.dumps(run.to_dict())}")
                next_mailbox = time.monotonic() + mailbox_interval
            count = consumer.run_once(block_ms=None if once else 1000)
            handled += count
            if once and count == 0:
                break
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    click.echo(f"handled {handled} stream entries")
