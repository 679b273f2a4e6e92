"""HTTP API: ``POST /v1/events`` and ``GET /v1/metrics/...`` (API key required)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated, Any

import msgspec
from litestar import Controller, MediaType, Request, Response, get, post
from litestar.concurrency import sync_to_thread
from litestar.datastructures import State
from litestar.params import Parameter

from postwise.analytics.engagement import EngagementModel, engagement_of
from postwise.analytics.ingest import MAX_BATCH_EVENTS, EventBatchError, ingest
from postwise.analytics.metrics import (
    AttributionModel,
    HealthKey,
    Scope,
    VariantKey,
    check_scope,
    conversion_types_of,
    metrics_backend,
    parse_scope,
    segments_by_name,
)
from postwise.errors import NotFoundError, ValidationError
from postwise.runtime import Runtime
from postwise.server.errors import problem
from postwise.server.validation import OptionalId

__all__ = ["EventsController", "MetricsController"]


def _ingest_body(runtime: Runtime, body: bytes, partial: bool) -> Response[Any]:
    try:
        data = msgspec.json.decode(body) if body else None
    except msgspec.DecodeError as exc:
        raise ValidationError(f"the body is not valid JSON: {exc}") from None
    if isinstance(data, dict):
        items: list[Any] = [data]
    elif isinstance(data, list) and data:
        items = data
    else:
        raise ValidationError(
            f"send one event (a JSON object) or a batch (an array of 1 to {MAX_BATCH_EVENTS} "
            "events)"
        )
    try:
        result = ingest(runtime, items, partial=partial)
    except EventBatchError as exc:
        first = exc.errors[0]
        return problem(
            422,
            str(exc).removeprefix(f"{first.field}: ") if first.field else str(exc),
            field=first.field,
            index=first.index,
            errors=[
                {"index": error.index, "field": error.field, "detail": error.error}
                for error in exc.errors
            ],
        )
    return Response(result.to_dict(), status_code=202, media_type=MediaType.JSON)


_Id = Annotated[int, msgspec.Meta(ge=1, le=2**31 - 1)]
_Token = Annotated[str, msgspec.Meta(pattern=r"^[^\s\x00-\x1f\x7f]+$")]


class EventIn(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=True):
    """One behaviour event (the body is one of these or an array of 1 to 1,000)."""

    #: The client's unique id of the event: a repeat is reported as a duplicate, not stored.
    event_id: Annotated[
        str, msgspec.Meta(pattern=r"^[^\s\x00-\x1f\x7f]{1,100}$", examples=["ord-1042-paid"])
    ]
    type: Annotated[
        str,
        msgspec.Meta(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,99}$", examples=["purchase"]),
    ]
    #: When it happened (ISO 8601 with a timezone; within the last ten years, not ahead of the
    #: server's clock by more than five minutes). Absent: now.
    occurred_at: Annotated[str, msgspec.Meta(extra_json_schema={"format": "date-time"})] | None = (
        None
    )
    #: The contact, by id or by email (not both).
    contact_id: _Id | None = None
    email: (
        Annotated[str, msgspec.Meta(max_length=254, extra_json_schema={"format": "email"})] | None
    ) = None
    message_id: Annotated[_Token, msgspec.Meta(max_length=64)] | None = None
    campaign_id: _Id | None = None
    trigger_id: _Id | None = None
    experiment_id: _Id | None = None
    variant: Annotated[_Token, msgspec.Meta(max_length=100)] | None = None
    provider: Annotated[_Token, msgspec.Meta(max_length=50)] | None = None
    #: Up to 16 KiB of JSON; a conversion's ``value`` is a number.
    properties: dict[str, Any] | None = None


def _event_body() -> Any:
    """The body's type, for the OpenAPI document (the handler decodes the body itself)."""
    return (
        EventIn | Annotated[list[EventIn], msgspec.Meta(min_length=1, max_length=MAX_BATCH_EVENTS)]
    )


class EventsController(Controller):
    """Event ingestion."""

    path = "/v1/events"
    tags = ["events"]

    @post(
        "/",
        status_code=202,
        opt={"request_body": _event_body},
        response_description="Accepted: counts, duplicates and (with partial) the rejected.",
    )
    async def create(
        self,
        state: State,
        request: Request[Any, Any, Any],
        partial: bool = Parameter(
            default=False,
            description="Store the valid events of a batch and report the invalid ones, "
            "instead of rejecting the whole batch.",
        ),
    ) -> Response[Any]:
        """Ingest one event (a JSON object) or a batch of up to 1,000 (an array).

        202 with ``{"accepted": n, "duplicates": [ids], "rejected": [...]}``; 422 with the
        index, field and reason of each invalid event when the batch is rejected.
        """
        runtime: Runtime = state.runtime
        body = await request.body()
        return await sync_to_thread(_ingest_body, runtime, body, partial)


def _scope_params(
    campaign_id: int | None, experiment_id: int | None, since: str | None, until: str | None
) -> dict[str, Any]:
    return {
        "campaign_id": campaign_id,
        "experiment_id": experiment_id,
        "since": since,
        "until": until,
    }


Since = Annotated[
    str | None,
    Parameter(
        min_length=1,
        max_length=64,
        schema_extra={"format": "date-time"},
        description="Only events at or after this time (ISO 8601 with a timezone).",
    ),
]
Until = Annotated[
    str | None,
    Parameter(
        min_length=1,
        max_length=64,
        schema_extra={"format": "date-time"},
        description="Only events before this time (ISO 8601 with a timezone).",
    ),
]

_SEGMENTS = Parameter(
    default=None, description="Segment names (repeatable); all segments when omitted."
)


def _check(runtime: Runtime, scope: Scope) -> None:
    """404 for an unknown campaign or experiment id, rather than a silent zero (asked only
    when nothing was found: events may name campaigns deleted since)."""
    with runtime.session() as session:
        check_scope(session, scope)


_CONVERSION_TYPES = Parameter(
    default=None,
    description="Event types counted as conversions (repeatable); default: conversion, purchase.",
)


class MetricsController(Controller):
    """Metrics over stored events (definitions in docs/analytics.md)."""

    path = "/v1/metrics"
    tags = ["metrics"]

    @get("/open-rate", sync_to_thread=True, opt={"problems": [404]})
    def open_rate(
        self,
        state: State,
        *,
        segment: list[str] | None = _SEGMENTS,
        campaign_id: OptionalId = None,
        since: Since = None,
        until: Until = None,
        include_machine_opens: bool = False,
    ) -> dict[str, Any]:
        """Open rate overall and per segment; machine opens are left out unless included."""
        runtime: Runtime = state.runtime
        scope = parse_scope(_scope_params(campaign_id, None, since, until))
        backend = metrics_backend(runtime)
        with runtime.session() as session:
            segments = segments_by_name(session, segment or [])
            report = backend.open_rates(
                session, segments, scope, include_machine_opens=include_machine_opens
            )
            if not report.overall.sent:
                check_scope(session, scope)
        return report.to_dict()

    @get("/click-through", sync_to_thread=True, opt={"problems": [404]})
    def click_through(
        self,
        state: State,
        *,
        by: VariantKey = VariantKey.CAMPAIGN,
        campaign_id: OptionalId = None,
        experiment_id: OptionalId = None,
        since: Since = None,
        until: Until = None,
    ) -> dict[str, Any]:
        """Click-through rate per campaign or per experiment variant."""
        runtime: Runtime = state.runtime
        scope = parse_scope(_scope_params(campaign_id, experiment_id, since, until))
        rows = metrics_backend(runtime).click_through(by, scope)
        if not rows:
            _check(runtime, scope)
        return {"by": by.value, "rows": [row.to_dict() for row in rows]}

    @get("/attribution", sync_to_thread=True, opt={"problems": [404]})
    def attribution(
        self,
        state: State,
        *,
        model: AttributionModel = AttributionModel.LAST_CLICK,
        window_days: float | None = Parameter(default=None, gt=0, le=365),
        campaign_id: OptionalId = None,
        experiment_id: OptionalId = None,
        since: Since = None,
        until: Until = None,
        conversion_type: list[str] | None = _CONVERSION_TYPES,
    ) -> dict[str, Any]:
        """Conversions credited to the last (or first) human click within the window."""
        runtime: Runtime = state.runtime
        scope = parse_scope(_scope_params(campaign_id, experiment_id, since, until))
        days = window_days or runtime.settings.attribution_window_days
        report = metrics_backend(runtime).attribution(
            model, timedelta(days=days), scope, conversion_types_of(conversion_type)
        )
        if not report.rows:
            _check(runtime, scope)
        return report.to_dict()

    @get("/delivery", sync_to_thread=True, opt={"problems": [404]})
    def delivery(
        self,
        state: State,
        *,
        by: HealthKey = HealthKey.PROVIDER,
        campaign_id: OptionalId = None,
        since: Since = None,
        until: Until = None,
    ) -> dict[str, Any]:
        """Accepted, bounce and complaint rates per provider or recipient domain."""
        runtime: Runtime = state.runtime
        scope = parse_scope(_scope_params(campaign_id, None, since, until))
        rows = metrics_backend(runtime).delivery_health(by, scope)
        if not rows:
            _check(runtime, scope)
        return {"by": by.value, "rows": [row.to_dict() for row in rows]}

    @get("/engagement/{contact_id:int}", sync_to_thread=True)
    def engagement(self, state: State, contact_id: int) -> dict[str, Any]:
        """The contact's engagement score, decayed to now."""
        runtime: Runtime = state.runtime
        model = EngagementModel.from_settings(runtime.settings)
        with runtime.engine.connect() as connection:
            score = engagement_of(connection, model, contact_id, now=datetime.now(UTC))
        if score is None:
            raise NotFoundError(f"contact {contact_id} does not exist")
        return {**score.to_dict(), "half_life_days": model.half_life_days}
