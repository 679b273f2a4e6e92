"""Metrics over stored events: engagement funnels (open, click, click-to-open, unsubscribe and
complaint rates) per segment, campaign and variant, conversion attribution and delivery health.

Every sink that can answer metric queries returns a :class:`MetricsBackend` from
``AnalyticsSink.metrics()``: :class:`postwise.analytics.sql_metrics.SqlMetrics` for the SQL
database, the ClickHouse plugin its own; :func:`metrics_backend` picks the configured one.
Definitions (the same on every backend; docs/analytics.md has the reference):

* **the sends** a rate is about are the messages the provider accepted (a ``sent`` event) whose
  acceptance falls in the scope's window and that belong to its campaign/experiment. Every other
  count is of events *of those messages*, whenever the event arrived, so every count is a subset
  of its denominator and no rate can exceed 100%;
* **delivered** = accepted - bounced after acceptance (a ``bounce`` of an accepted message);
  opens, clicks, unsubscribes and complaints are counted among delivered messages;
* **opened** = delivered messages with a human open or a human click (a click proves the message
  was opened; ``opened_by_click_only`` says how many had a click but no pixel load). Machine
  opens (privacy proxies, image prefetch; ``automated``) are left out unless asked for;
* **open rate** = opened / delivered; **click rate** (CTR) = human-clicked / delivered;
  **click-to-open rate** = clicked / opened; **unsubscribe** and **complaint rates** over
  delivered. ``*_of_sent`` figures use the accepted count instead;
* **attribution**: each conversion (events of the configured conversion types, ``conversion``
  and ``purchase`` by default) goes to the last human click of the same contact within the
  window before it (``last_click``), or to the first click in that window (``first_touch``);
  with a campaign or experiment filter the totals are of that campaign's/experiment's
  conversions;
* **delivery health** per provider or recipient domain: of the messages attempted (accepted,
  bounced or given up), how many were accepted, bounced or failed, and how many accepted ones
  drew a complaint.

Counts are of distinct messages, so a message opened five times is one open.
"""

from __future__ import annotations

import enum
import functools
import re
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import asdict, astuple, dataclass, field, fields
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from sqlmodel import Session, col, select

from postwise.analytics.collector import open_sink
from postwise.contacts.segments import get_segment
from postwise.db.models import Campaign, Experiment, Segment
from postwise.errors import ConfigurationError, NotFoundError, ValidationError

if TYPE_CHECKING:
    from postwise.analytics.sinks import AnalyticsSink
    from postwise.runtime import Runtime

__all__ = [
    "AttributionModel",
    "AttributionReport",
    "AttributionRow",
    "ClickThrough",
    "DeliveryHealth",
    "Funnel",
    "FunnelCounts",
    "HealthKey",
    "MetricsBackend",
    "OpenRate",
    "OpenRateReport",
    "Scope",
    "VariantKey",
    "attribution_report",
    "check_scope",
    "conversion_types_of",
    "metrics_backend",
    "parse_scope",
    "ratio",
    "segments_by_name",
    "sort_key",
]

SENT = "sent"
OPEN = "open"
CLICK = "click"
CONVERSION = "conversion"
PURCHASE = "purchase"
UNSUBSCRIBE = "unsubscribe"
#: The event types attribution counts as conversions unless told otherwise.
DEFAULT_CONVERSION_TYPES: tuple[str, ...] = (CONVERSION, PURCHASE)
#: Events of a sent message that the funnels count (besides the ``sent`` event itself).
FUNNEL_TYPES: tuple[str, ...] = ("bounce", "open", "click", "unsubscribe", "complaint")
BOUNCE = "bounce"
DEAD_LETTER = "dead_letter"
COMPLAINT = "complaint"


class AttributionModel(enum.StrEnum):
    LAST_CLICK = "last_click"
    FIRST_TOUCH = "first_touch"


class VariantKey(enum.StrEnum):
    CAMPAIGN = "campaign"
    VARIANT = "variant"


class HealthKey(enum.StrEnum):
    PROVIDER = "provider"
    DOMAIN = "domain"


def ratio(part: int, whole: int) -> float | None:
    """``part / whole``, or ``None`` when there is nothing to divide by."""
    return round(part / whole, 6) if whole else None


@dataclass(frozen=True, slots=True)
class Scope:
    """Which events a metric looks at: one campaign or experiment, and a time window."""

    campaign_id: int | None = None
    experiment_id: int | None = None
    since: datetime | None = None
    until: datetime | None = None

    def __post_init__(self) -> None:
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and value.tzinfo is None:
                raise ValidationError("needs a timezone, e.g. 2025-01-31T00:00:00Z", field=name)
        if self.since and self.until and self.since >= self.until:
            raise ValidationError("must be before 'until'", field="since")


@dataclass(frozen=True, slots=True)
class FunnelCounts:
    """Distinct messages of one group of sends, at each step (see the module's definitions)."""

    sent: int = 0
    bounced: int = 0
    opened: int = 0
    opened_by_click_only: int = 0
    opened_including_machine: int = 0
    clicked: int = 0
    scanner_clicked: int = 0
    unsubscribed: int = 0
    complained: int = 0

    def __post_init__(self) -> None:
        # The queries build every count as a subset of its denominator; this states it.
        delivered = self.sent - self.bounced
        assert 0 <= self.bounced <= self.sent, self
        assert 0 <= self.opened <= self.opened_including_machine <= delivered, self
        assert 0 <= self.clicked <= self.opened, self
        assert 0 <= self.opened_by_click_only <= self.clicked, self
        assert 0 <= self.scanner_clicked <= delivered, self
        assert 0 <= self.unsubscribed <= delivered and 0 <= self.complained <= delivered, self

    def __add__(self, other: FunnelCounts) -> FunnelCounts:
        return FunnelCounts(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))


#: The order of :class:`FunnelCounts`' fields, which the backends' queries return.
FUNNEL_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(FunnelCounts))


def _funnel_values(counts: FunnelCounts, include_machine_opens: bool = False) -> dict[str, Any]:
    delivered = counts.sent - counts.bounced
    opened = counts.opened_including_machine if include_machine_opens else counts.opened
    return {
        **asdict(counts),
        "delivered": delivered,
        "delivery_rate": ratio(delivered, counts.sent),
        "bounce_rate": ratio(counts.bounced, counts.sent),
        "open_rate": ratio(opened, delivered),
        "open_rate_of_sent": ratio(opened, counts.sent),
        "click_rate": ratio(counts.clicked, delivered),
        "click_rate_of_sent": ratio(counts.clicked, counts.sent),
        "click_to_open_rate": ratio(counts.clicked, opened),
        "unsubscribe_rate": ratio(counts.unsubscribed, delivered),
        "complaint_rate": ratio(counts.complained, delivered),
    }


@dataclass(frozen=True, slots=True, kw_only=True)
class Funnel:
    """A group's :class:`FunnelCounts` with ``delivered`` and the rates derived from them."""

    sent: int
    bounced: int
    delivered: int
    opened: int
    opened_by_click_only: int
    opened_including_machine: int
    clicked: int
    scanner_clicked: int
    unsubscribed: int
    complained: int
    delivery_rate: float | None
    bounce_rate: float | None
    open_rate: float | None
    open_rate_of_sent: float | None
    click_rate: float | None
    click_rate_of_sent: float | None
    click_to_open_rate: float | None
    unsubscribe_rate: float | None
    complaint_rate: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class OpenRate(Funnel):
    """The funnel of one segment's sends (``segment`` None: all sends); ``rate`` is the open
    rate, machine opens included when the report says so."""

    segment: str | None
    rate: float | None

    @classmethod
    def of(cls, segment: str | None, counts: FunnelCounts, include_machine: bool) -> OpenRate:
        values = _funnel_values(counts, include_machine)
        return cls(segment=segment, rate=values["open_rate"], **values)


@dataclass(frozen=True, slots=True)
class OpenRateReport:
    include_machine_opens: bool
    overall: OpenRate
    segments: list[OpenRate]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True, kw_only=True)
class ClickThrough(Funnel):
    """The funnel of one campaign's or variant's sends; ``rate`` is the click rate."""

    campaign_id: int | None
    experiment_id: int | None
    variant: str | None
    rate: float | None

    @classmethod
    def of(
        cls,
        campaign_id: int | None,
        experiment_id: int | None,
        variant: str | None,
        counts: FunnelCounts,
    ) -> ClickThrough:
        values = _funnel_values(counts)
        return cls(
            campaign_id=campaign_id,
            experiment_id=experiment_id,
            variant=variant,
            rate=values["click_rate"],
            **values,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class AttributionRow:
    campaign_id: int | None
    experiment_id: int | None
    variant: str | None
    conversions: int
    value: float


@dataclass(frozen=True, slots=True)
class AttributionReport:
    model: str
    window_days: float
    conversions: int
    attributed: int
    unattributed: int
    value: float
    rows: list[AttributionRow] = field(default_factory=list)
    #: The event types counted as conversions.
    conversion_types: list[str] = field(default_factory=lambda: list(DEFAULT_CONVERSION_TYPES))
    #: Conversions in the window whoever they are credited to (``conversions`` when the report
    #: is not limited to one campaign or experiment).
    all_conversions: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class DeliveryHealth:
    key: str | None
    attempted: int
    accepted: int
    bounced: int
    failed: int
    complained: int
    accepted_rate: float | None
    bounce_rate: float | None
    complaint_rate: float | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def of(
        cls,
        key: str | None,
        *,
        attempted: int,
        accepted: int,
        bounced: int,
        failed: int,
        complained: int,
    ) -> DeliveryHealth:
        """Counts and the rates derived from them."""
        return cls(
            key,
            attempted,
            accepted,
            bounced,
            failed,
            complained,
            accepted_rate=ratio(accepted, attempted),
            bounce_rate=ratio(bounced, attempted),
            complaint_rate=ratio(complained, accepted),
        )


class MetricsBackend(Protocol):
    """Metric queries over one sink's events."""

    def open_rates(
        self,
        session: Session,
        segments: Sequence[Segment],
        scope: Scope,
        *,
        include_machine_opens: bool = False,
    ) -> OpenRateReport:
        """The funnel (open rate first) of all sends and of the sends to the members of each of
        ``segments``.

        ``session`` is the state database's, where segment membership is decided.
        """

    def click_through(self, by: VariantKey, scope: Scope) -> list[ClickThrough]:
        """The funnel (click rate first) of the sends of each campaign or experiment variant."""

    def attribution(
        self,
        model: AttributionModel,
        window: timedelta,
        scope: Scope,
        conversion_types: Sequence[str] = DEFAULT_CONVERSION_TYPES,
    ) -> AttributionReport:
        """Conversions (events of ``conversion_types`` occurring within ``scope``'s window)
        credited to campaigns/variants; with a campaign or experiment in ``scope``, only the
        conversions credited to it are counted (``all_conversions`` keeps the whole figure)."""

    def delivery_health(self, by: HealthKey, scope: Scope) -> list[DeliveryHealth]:
        """Accepted, bounced, failed and complained messages per provider or recipient domain."""


def attribution_report(
    model: AttributionModel,
    window: timedelta,
    scope: Scope,
    conversion_types: Sequence[str],
    grouped: Sequence[tuple[bool, int | None, int | None, str | None, int, float]],
) -> AttributionReport:
    """The report from conversions counted per (untouched, campaign, experiment, variant).

    With a campaign or experiment in ``scope`` the totals are those of its rows, so that the
    figures shown together always add up.
    """
    rows: list[AttributionRow] = []
    everything = 0
    total = unattributed = 0
    total_value = 0.0
    filtered = scope.campaign_id is not None or scope.experiment_id is not None
    for is_untouched, campaign_id, experiment_id, variant, count, amount in grouped:
        everything += int(count)
        if is_untouched:
            if not filtered:
                total += int(count)
                unattributed += int(count)
                total_value += float(amount)
            continue
        if scope.campaign_id is not None and campaign_id != scope.campaign_id:
            continue
        if scope.experiment_id is not None and experiment_id != scope.experiment_id:
            continue
        total += int(count)
        total_value += float(amount)
        rows.append(AttributionRow(campaign_id, experiment_id, variant, int(count), float(amount)))
    rows.sort(key=lambda r: (-r.conversions, sort_key((r.campaign_id, r.variant))))
    return AttributionReport(
        model=model.value,
        window_days=window.total_seconds() / 86400,
        conversions=total,
        attributed=total - unattributed,
        unattributed=unattributed,
        value=round(total_value, 6),
        rows=rows,
        conversion_types=list(conversion_types),
        all_conversions=everything,
    )


def check_scope(session: Session, scope: Scope) -> None:
    """Raise :class:`NotFoundError` for a campaign or experiment id that does not exist, so
    that a mistyped id is a clear message rather than a silent zero."""
    if scope.campaign_id is not None and session.get(Campaign, scope.campaign_id) is None:
        raise NotFoundError(f"campaign {scope.campaign_id} does not exist")
    if scope.experiment_id is not None and session.get(Experiment, scope.experiment_id) is None:
        raise NotFoundError(f"experiment {scope.experiment_id} does not exist")


def conversion_types_of(values: Sequence[str] | None) -> tuple[str, ...]:
    """The event types to count as conversions (the defaults when none are given).

    Each must be an event type as ingestion accepts them; anything else is refused, naming it.
    """
    chosen = tuple(dict.fromkeys(v.strip() for v in values or () if v.strip()))
    for value in chosen:
        if not _EVENT_TYPE.match(value):
            raise ValidationError(
                f"{value[:40]!r} is not an event type (1 to 100 letters, digits or _ . : -)",
                field="conversion_type",
            )
    return chosen or DEFAULT_CONVERSION_TYPES


_EVENT_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,99}$")


def sort_key(key: tuple[Any, ...]) -> tuple[Any, ...]:
    """Order result keys with ``None`` last (mixed types never meet in one position)."""
    return tuple((v is None, v if v is not None else 0) for v in key)


def segments_by_name(session: Session, names: Sequence[str]) -> list[Segment]:
    """The segments called ``names`` (all segments when empty), in the order given."""

    if names:
        return [get_segment(session, name) for name in names]
    return list(session.exec(select(Segment).order_by(col(Segment.name))))


def parse_scope(params: Mapping[str, Any]) -> Scope:
    """A :class:`Scope` from query parameters or CLI options (ISO 8601 times)."""

    def when(name: str) -> datetime | None:
        value = params.get(name)
        if value in (None, ""):
            return None
        if isinstance(value, datetime):
            return value
        try:
            parsed = datetime.fromisoformat(str(value))
        except ValueError:
            raise ValidationError(
                f"{value!r} is not an ISO 8601 time such as 2025-01-31T00:00:00Z", field=name
            ) from None
        if parsed.tzinfo is None:
            raise ValidationError(
                f"{value!r} has no timezone; add Z or an offset such as +02:00", field=name
            )
        return parsed

    def number(name: str) -> int | None:
        value = params.get(name)
        if value in (None, ""):
            return None
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ValidationError(f"{value!r} is not an integer id", field=name) from None

    return Scope(
        campaign_id=number("campaign_id"),
        experiment_id=number("experiment_id"),
        since=when("since"),
        until=when("until"),
    )


_BACKENDS: weakref.WeakKeyDictionary[Runtime, tuple[AnalyticsSink, MetricsBackend]] = (
    weakref.WeakKeyDictionary()
)
_BACKENDS_LOCK = threading.Lock()


def metrics_backend(runtime: Runtime) -> MetricsBackend:
    """The metric queries of the configured sink, built once per runtime.

    Raises :class:`ConfigurationError` when the sink cannot answer metric queries.
    """
    with _BACKENDS_LOCK:
        cached = _BACKENDS.get(runtime)
        if cached is None:
            sink = open_sink(runtime)
            backend = sink.metrics()
            if backend is None:
                sink.close()
                raise ConfigurationError(
                    f"analytics sink {runtime.settings.analytics_sink!r} does not answer metric "
                    "queries; use the 'sql' or 'clickhouse' sink"
                )
            cached = (sink, backend)
            _BACKENDS[runtime] = cached
            runtime.on_close(functools.partial(_close_backend, runtime))
        return cached[1]


def _close_backend(runtime: Runtime) -> None:
    """Close the sink behind ``runtime``'s metrics (with the runtime: see Runtime.on_close)."""
    with _BACKENDS_LOCK:
        cached = _BACKENDS.pop(runtime, None)
    if cached is not None:
        cached[0].close()
