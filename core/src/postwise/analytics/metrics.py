"""Metrics over stored events: open rate by segment, click-through rate per campaign and per
variant, conversion attribution and delivery health.

Every sink that can answer metric queries returns a :class:`MetricsBackend` from
``AnalyticsSink.metrics()``: :class:`postwise.analytics.sql_metrics.SqlMetrics` for the SQL
database, the ClickHouse plugin its own; :func:`metrics_backend` picks the configured one.
Definitions (the same on every backend; docs/analytics.md has the reference):

* a message counts as **sent** when the provider accepted it (a ``sent`` event);
* **open rate** = messages with a human open / messages sent. Machine opens (privacy proxies,
  image prefetch; ``automated``) are left out unless asked for;
* **click-through rate** = messages with a human click / messages sent; scanner clicks are
  counted apart;
* **attribution**: each conversion goes to the last human click of the same contact within the
  window before it (``last_click``), or to the first click in that window (``first_touch``);
* **delivery health** per provider or recipient domain: of the messages attempted (accepted,
  bounced or given up), how many were accepted, bounced or failed, and how many accepted ones
  drew a complaint.

Counts are of distinct messages, so a message opened five times is one open.
"""

from __future__ import annotations

import enum
import functools
import threading
import weakref
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol

from sqlmodel import Session, col, select

from postwise.analytics.collector import open_sink
from postwise.contacts.segments import get_segment
from postwise.db.models import Segment
from postwise.errors import ConfigurationError, ValidationError

if TYPE_CHECKING:
    from postwise.analytics.sinks import AnalyticsSink
    from postwise.runtime import Runtime

__all__ = [
    "AttributionModel",
    "AttributionReport",
    "AttributionRow",
    "ClickThrough",
    "DeliveryHealth",
    "HealthKey",
    "MetricsBackend",
    "OpenRate",
    "OpenRateReport",
    "Scope",
    "VariantKey",
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
class OpenRate:
    segment: str | None
    sent: int
    opened: int
    opened_including_machine: int
    rate: float | None


@dataclass(frozen=True, slots=True)
class OpenRateReport:
    include_machine_opens: bool
    overall: OpenRate
    segments: list[OpenRate]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class ClickThrough:
    campaign_id: int | None
    experiment_id: int | None
    variant: str | None
    sent: int
    clicked: int
    scanner_clicked: int
    rate: float | None

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
        """Open rate overall and among the members of each of ``segments``.

        ``session`` is the state database's, where segment membership is decided.
        """

    def click_through(self, by: VariantKey, scope: Scope) -> list[ClickThrough]:
        """Click-through rate per campaign, or per experiment variant."""

    def attribution(
        self, model: AttributionModel, window: timedelta, scope: Scope
    ) -> AttributionReport:
        """Conversions (occurring within ``scope``'s window) credited to campaigns/variants."""

    def delivery_health(self, by: HealthKey, scope: Scope) -> list[DeliveryHealth]:
        """Accepted, bounced, failed and complained messages per provider or recipient domain."""


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
