"""``postwise metrics``: the metrics of docs/analytics.md from the configured sink."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from functools import wraps
from typing import Any, TypeVar

import click

from postwise.cli.common import emit_json, get_runtime

F = TypeVar("F", bound=Callable[..., Any])


def _scope_options(func: F) -> F:
    """--campaign, --since and --until, shared by every metric."""

    @click.option("--campaign", "campaign_id", type=int, default=None, help="One campaign.")
    @click.option("--since", default=None, help="From this time (ISO 8601 with a zone).")
    @click.option("--until", default=None, help="Up to this time (ISO 8601 with a zone).")
    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return func(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _funnel(row: Any) -> str:
    return (
        f"click rate {_rate(row.click_rate)}, click-to-open {_rate(row.click_to_open_rate)}, "
        f"unsubscribe {_rate(row.unsubscribe_rate)}, complaint {_rate(row.complaint_rate)}, "
        f"bounce {_rate(row.bounce_rate)} of sent"
    )


def _check(runtime: Any, scope: Any) -> None:
    """A clear message for an unknown campaign or experiment id (not a silent zero); asked
    only when nothing was found, since events may name campaigns deleted since."""
    from postwise.analytics.metrics import check_scope

    with runtime.session() as session:
        check_scope(session, scope)


@click.group()
def metrics() -> None:
    """Open rate, click-through rate, attribution, engagement and delivery health."""


@metrics.command(name="open-rate")
@click.option("--segment", "segments", multiple=True, help="Segment name (repeatable).")
@click.option("--include-machine-opens", is_flag=True, help="Count proxy/prefetch opens too.")
@_scope_options
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def open_rate(
    ctx: click.Context,
    *,
    segments: tuple[str, ...],
    include_machine_opens: bool,
    campaign_id: int | None,
    since: str | None,
    until: str | None,
    as_json: bool,
) -> None:
    """Open rate overall and per segment (all segments unless --segment is given)."""
    from postwise.analytics.metrics import (
        check_scope,
        metrics_backend,
        parse_scope,
        segments_by_name,
    )

    runtime = get_runtime(ctx)
    scope = parse_scope({"campaign_id": campaign_id, "since": since, "until": until})
    with runtime.session() as session:
        chosen = segments_by_name(session, list(segments))
        report = metrics_backend(runtime).open_rates(
            session, chosen, scope, include_machine_opens=include_machine_opens
        )
        if not report.overall.sent:
            check_scope(session, scope)
    if as_json:
        emit_json(report.to_dict())
        return
    for row in [report.overall, *report.segments]:
        click.echo(
            f"{row.segment or '(all contacts)'}: {_rate(row.rate)} "
            f"({row.opened_including_machine if include_machine_opens else row.opened} opened "
            f"of {row.delivered} delivered = {row.sent} sent - {row.bounced} bounced; "
            f"{row.opened_by_click_only} of them shown only by a click; "
            f"{row.opened_including_machine} including machine opens)"
        )
        click.echo(f"  {_funnel(row)}")


@metrics.command(name="ctr")
@click.option(
    "--by", type=click.Choice(["campaign", "variant"]), default="campaign", show_default=True
)
@click.option("--experiment", "experiment_id", type=int, default=None, help="One experiment.")
@_scope_options
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def ctr(
    ctx: click.Context,
    *,
    by: str,
    experiment_id: int | None,
    campaign_id: int | None,
    since: str | None,
    until: str | None,
    as_json: bool,
) -> None:
    """Click-through rate per campaign or per experiment variant (scanner clicks apart)."""
    from postwise.analytics.metrics import VariantKey, metrics_backend, parse_scope

    runtime = get_runtime(ctx)
    scope = parse_scope(
        {"campaign_id": campaign_id, "experiment_id": experiment_id, "since": since, "until": until}
    )
    rows = metrics_backend(runtime).click_through(VariantKey(by), scope)
    if not rows:
        _check(runtime, scope)
    if as_json:
        emit_json({"by": by, "rows": [row.to_dict() for row in rows]})
        return
    for row in rows:
        label = (
            f"campaign {row.campaign_id}"
            if by == "campaign"
            else f"experiment {row.experiment_id} variant {row.variant}"
        )
        click.echo(
            f"{label}: {_rate(row.rate)} ({row.clicked} clicked of {row.delivered} delivered "
            f"= {row.sent} sent - {row.bounced} bounced; {row.scanner_clicked} scanner clicks)"
        )
        click.echo(f"  open rate {_rate(row.open_rate)}, {_funnel(row)}")


@metrics.command()
@click.option(
    "--model",
    type=click.Choice(["last_click", "first_touch"]),
    default="last_click",
    show_default=True,
)
@click.option("--window-days", type=float, default=None, help="Default: attribution_window_days.")
@click.option("--experiment", "experiment_id", type=int, default=None)
@click.option(
    "--type",
    "conversion_types",
    multiple=True,
    help="Event type counted as a conversion (repeatable; default: conversion and purchase).",
)
@_scope_options
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def attribution(
    ctx: click.Context,
    *,
    model: str,
    window_days: float | None,
    experiment_id: int | None,
    conversion_types: tuple[str, ...],
    campaign_id: int | None,
    since: str | None,
    until: str | None,
    as_json: bool,
) -> None:
    """Conversions credited to the last (or first) human click within the window."""
    from postwise.analytics.metrics import (
        AttributionModel,
        conversion_types_of,
        metrics_backend,
        parse_scope,
    )

    runtime = get_runtime(ctx)
    scope = parse_scope(
        {"campaign_id": campaign_id, "experiment_id": experiment_id, "since": since, "until": until}
    )
    days = window_days or runtime.settings.attribution_window_days
    report = metrics_backend(runtime).attribution(
        AttributionModel(model), timedelta(days=days), scope, conversion_types_of(conversion_types)
    )
    if not report.rows:
        _check(runtime, scope)
    if as_json:
        emit_json(report.to_dict())
        return
    kinds = ", ".join(report.conversion_types)
    if scope.campaign_id is not None or scope.experiment_id is not None:
        click.echo(
            f"{report.conversions} conversions ({kinds}; value {report.value:g}) attributed by "
            f"{report.model} within {report.window_days:g} days to the chosen campaign/experiment,"
            f" of {report.all_conversions} in the window"
        )
    else:
        click.echo(
            f"{report.conversions} conversions ({kinds}; value {report.value:g}); "
            f"{report.attributed} attributed by {report.model} within "
            f"{report.window_days:g} days, {report.unattributed} without a click"
        )
    for row in report.rows:
        variant = f" variant {row.variant}" if row.variant else ""
        click.echo(
            f"  campaign {row.campaign_id}{variant}: {row.conversions} (value {row.value:g})"
        )


@metrics.command()
@click.option(
    "--by", type=click.Choice(["provider", "domain"]), default="provider", show_default=True
)
@_scope_options
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def delivery(
    ctx: click.Context,
    *,
    by: str,
    campaign_id: int | None,
    since: str | None,
    until: str | None,
    as_json: bool,
) -> None:
    """Accepted, bounce and complaint rates per provider or recipient domain."""
    from postwise.analytics.metrics import HealthKey, metrics_backend, parse_scope

    runtime = get_runtime(ctx)
    scope = parse_scope({"campaign_id": campaign_id, "since": since, "until": until})
    rows = metrics_backend(runtime).delivery_health(HealthKey(by), scope)
    if not rows:
        _check(runtime, scope)
    if as_json:
        emit_json({"by": by, "rows": [row.to_dict() for row in rows]})
        return
    for row in rows:
        click.echo(
            f"{row.key or '(unknown)'}: {row.attempted} attempted, accepted "
            f"{_rate(row.accepted_rate)}, bounced {_rate(row.bounce_rate)}, complaints "
            f"{_rate(row.complaint_rate)} of accepted"
        )


@metrics.command()
@click.argument("contact_id", type=int)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def engagement(ctx: click.Context, contact_id: int, as_json: bool) -> None:
    """A contact's engagement score (decayed opens, clicks and conversions), as of now."""
    from postwise.analytics.engagement import EngagementModel, engagement_of
    from postwise.errors import NotFoundError

    runtime = get_runtime(ctx)
    model = EngagementModel.from_settings(runtime.settings)
    with runtime.engine.connect() as connection:
        score = engagement_of(connection, model, contact_id, now=datetime.now(UTC))
    if score is None:
        raise NotFoundError(f"contact {contact_id} does not exist")
    if as_json:
        emit_json({**score.to_dict(), "half_life_days": model.half_life_days})
        return
    click.echo(
        f"contact {contact_id}: {score.score:.4f} (half-life {model.half_life_days:g} days; "
        f"last engaged {score.last_engaged_at.isoformat() if score.last_engaged_at else 'never'})"
    )
