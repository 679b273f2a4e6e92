"""``postwise campaigns``: create campaigns, send them and follow their progress."""

from __future__ import annotations

import click

from postwise.cli.common import emit_json, get_runtime


@click.group()
def campaigns() -> None:
    """Campaigns: a template sent to a segment (or every active contact)."""


@campaigns.command()
@click.argument("name")
@click.option("--template", required=True, help="Template id or name.")
@click.option("--version", "template_version", type=int, default=None)
@click.option("--segment", default=None, help="Segment id or name (default: active contacts).")
@click.option("--provider", default=None)
@click.option("--experiment", "experiment_id", type=int, default=None)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def create(
    ctx: click.Context,
    *,
    name: str,
    template: str,
    template_version: int | None,
    segment: str | None,
    provider: str | None,
    experiment_id: int | None,
    as_json: bool,
) -> None:
    """Create a draft campaign NAME."""
    from postwise.delivery.campaigns import campaign_status, create_campaign

    runtime = get_runtime(ctx)
    runtime.migrate()
    with runtime.session() as session:
        campaign = create_campaign(
            session,
            name=name,
            template=template,
            template_version=template_version,
            segment=segment,
            provider=provider,
            experiment_id=experiment_id,
        )
        assert campaign.id is not None
        data = campaign_status(session, campaign.id)
    if as_json:
        emit_json(data)
    else:
        click.echo(f"campaign {data['id']} {data['name']!r} created (draft)")


@campaigns.command(name="list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def list_(ctx: click.Context, as_json: bool) -> None:
    """List campaigns, newest first."""
    from postwise.delivery.campaigns import list_campaigns

    runtime = get_runtime(ctx)
    with runtime.session() as session:
        rows = [{"id": c.id, "name": c.name, "status": c.status} for c in list_campaigns(session)]
    if as_json:
        emit_json({"campaigns": rows})
        return
    for row in rows:
        click.echo(f"{row['id']:>5}  {row['status']:<10} {row['name']}")


@campaigns.command()
@click.argument("campaign_id", type=int)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def status(ctx: click.Context, campaign_id: int, as_json: bool) -> None:
    """Where CAMPAIGN_ID stands: dispatch counters and messages by status."""
    from postwise.delivery.campaigns import campaign_status, get_campaign
    from postwise.delivery.recovery import stalls

    runtime = get_runtime(ctx)
    with runtime.session() as session:
        get_campaign(session, campaign_id)
    stalled = stalls(runtime, campaign_id=campaign_id)
    with runtime.session() as session:
        data = campaign_status(session, campaign_id, stalled=stalled)
    if as_json:
        emit_json(data)
        return
    dispatch = data["dispatch"]
    click.echo(f"campaign {data['id']} {data['name']!r}: {data['status']}")
    click.echo(
        f"  audience {dispatch['audience']}, queued {dispatch['queued']}, "
        f"skipped {sum(dispatch['skipped'].values())} {dispatch['skipped'] or ''}"
    )
    click.echo("  messages " + ", ".join(f"{k} {v}" for k, v in sorted(data["messages"].items())))
    for problem in data["stalled"]:
        click.echo(f"  STALLED: {problem}")


@campaigns.command()
@click.argument("campaign_id", type=int)
@click.option(
    "--drain/--no-drain",
    default=None,
    help="Deliver in this process after dispatching (default: only with the embedded Redis, "
    "where no separate worker can run).",
)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def send(ctx: click.Context, campaign_id: int, drain: bool | None, as_json: bool) -> None:
    """Dispatch CAMPAIGN_ID: gate its audience and queue its batches for the workers."""
    from postwise.delivery.atomic import supports_lua
    from postwise.delivery.campaigns import campaign_status
    from postwise.delivery.dispatch import dispatch_campaign
    from postwise.delivery.worker import drain as drain_queues

    runtime = get_runtime(ctx)
    report = dispatch_campaign(runtime, campaign_id)
    if drain is None:
        drain = not supports_lua(runtime.redis)
    if drain:
        drain_queues(runtime)
    with runtime.session() as session:
        data = campaign_status(session, campaign_id)
    if as_json:
        emit_json({"dispatch": report.to_dict(), "status": data})
        return
    click.echo(
        f"campaign {campaign_id}: {report.queued} queued in {report.batches} batches, "
        f"{sum(report.skipped.values())} skipped {dict(report.skipped) or ''}"
    )
    click.echo("  messages " + ", ".join(f"{k} {v}" for k, v in sorted(data["messages"].items())))


@campaigns.command(name="resend-dead")
@click.argument("campaign_id", type=int)
@click.option(
    "--in-doubt-only",
    is_flag=True,
    help="Only the messages dead-lettered in doubt: their worker stopped while the provider "
    "had them, or the provider's answer was lost after the whole message was sent. They may "
    "arrive twice.",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@click.pass_context
def resend_dead(ctx: click.Context, campaign_id: int, in_doubt_only: bool, yes: bool) -> None:
    """Send CAMPAIGN_ID's dead-lettered messages again, with fresh attempts.

    Messages dead-lettered "in doubt" (their worker died while the provider had them, or the
    provider's answer was lost after the whole message was sent) may already have been
    delivered: sending them again trades a possible duplicate for a possible loss.
    """
    from postwise.delivery.recovery import resend_dead as resend

    if not yes:
        click.confirm(
            "Dead-lettered messages in doubt may have been delivered already; send again?",
            abort=True,
        )
    runtime = get_runtime(ctx)
    count = resend(runtime, campaign_id=campaign_id, in_doubt_only=in_doubt_only)
    click.echo(f"{count} messages queued again")
