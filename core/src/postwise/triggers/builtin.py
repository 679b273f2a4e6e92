"""The built-in condition types.

Each is an ordinary :class:`~postwise.triggers.conditions.ConditionType` with a pydantic
configuration model; :mod:`postwise.triggers.plugin` registers them through
``postwise_register_conditions`` exactly as a third-party plugin registers its own.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, model_validator
from sqlmodel import Session, select

from postwise.db.models import Segment
from postwise.errors import ValidationError
from postwise.triggers.conditions import (
    ConditionContext,
    ConditionType,
    HistoryEvent,
    Predicate,
    TriggerEvent,
)

__all__ = [
    "BUILTIN_CONDITIONS",
    "ActionHistory",
    "ActionHistoryConfig",
    "ContactAttribute",
    "ContactAttributeConfig",
    "EngagementScore",
    "EngagementScoreConfig",
    "EventProperty",
    "EventPropertyConfig",
    "PropertyFilter",
    "SegmentMembership",
    "SegmentMembershipConfig",
    "TimeWindow",
    "TimeWindowConfig",
    "compare",
    "contact_zone",
    "lookup",
]

Weekday = Literal["mon", "tue", "wed", "thu", "fri", "sat", "sun"]
_WEEKDAYS: tuple[Weekday, ...] = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
Operator = Literal["eq", "ne", "gt", "gte", "lt", "lte", "in", "not_in", "contains", "exists"]
_SYMBOLS = {"eq": "==", "ne": "!=", "gt": ">", "gte": ">=", "lt": "<", "lte": "<="}
_ORDERINGS: dict[str, Callable[[Any, Any], Any]] = {
    "gt": operator.gt,
    "gte": operator.ge,
    "lt": operator.lt,
    "lte": operator.le,
}
_MISSING = object()
_UTC = ZoneInfo("UTC")


class _Config(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


@lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return _UTC


def contact_zone(contact: Mapping[str, Any]) -> ZoneInfo:
    """The contact's time zone; an unknown or missing zone counts as UTC."""
    name = contact.get("timezone")
    return _zone(name) if isinstance(name, str) and name else _UTC


def lookup(data: Mapping[str, Any], path: str) -> Any:
    """The value at dotted ``path`` in nested mappings, or a sentinel when absent."""
    return _get(data, tuple(path.split(".")))


def _get(data: Any, parts: tuple[str, ...]) -> Any:
    current = data
    for part in parts:
        # Exact dict first: isinstance against the Mapping ABC is slow on the hot path.
        if current.__class__ is not dict and not isinstance(current, Mapping):
            return _MISSING
        current = current.get(part, _MISSING)
        if current is _MISSING:
            return _MISSING
    return current


def _matcher(op: str, expected: Any) -> Callable[[Any], bool]:
    """``compare(actual, op, expected)`` as a function of ``actual``, specialised once per
    configuration for the common operators."""
    if op == "eq":
        return lambda actual: actual is not _MISSING and bool(actual == expected)
    if op == "ne":
        return lambda actual: actual is _MISSING or bool(actual != expected)
    if op in ("in", "not_in"):
        try:
            members = frozenset(expected)
        except TypeError:
            return lambda actual: compare(actual, op, expected)
        inside = op == "in"

        def member(actual: Any) -> bool:
            if actual is _MISSING:
                return not inside
            try:
                return (actual in members) is inside
            except TypeError:  # an unhashable value is in no set of hashables
                return not inside

        return member
    if op in _ORDERINGS and not isinstance(expected, bool):
        order = _ORDERINGS[op]

        def ordered(actual: Any) -> bool:
            if actual is _MISSING or actual.__class__ is bool:
                return False
            try:
                return bool(order(actual, expected))
            except TypeError:
                return False

        return ordered
    return lambda actual: compare(actual, op, expected)


def compare(actual: Any, op: str, expected: Any) -> bool:
    """Apply ``op`` to a looked-up value. Values of incomparable types never match."""
    if op == "exists":
        present = actual is not _MISSING and actual is not None
        return present is (expected is not False)
    if actual is _MISSING:
        return op in ("ne", "not_in")
    try:
        if op == "eq":
            return bool(actual == expected)
        if op == "ne":
            return bool(actual != expected)
        if op == "in":
            return actual in expected
        if op == "not_in":
            return actual not in expected
        if op == "contains":
            if isinstance(actual, str):
                return isinstance(expected, str) and expected in actual
            return expected in actual
        if isinstance(actual, bool) or isinstance(expected, bool):
            return False
        if op == "gt":
            return bool(actual > expected)
        if op == "gte":
            return bool(actual >= expected)
        if op == "lt":
            return bool(actual < expected)
        if op == "lte":
            return bool(actual <= expected)
    except TypeError:
        return False
    raise ValueError(f"unknown operator {op!r}")


class _Comparison(_Config):
    op: Operator = "eq"
    value: Any = None

    @model_validator(mode="after")
    def _check_value(self) -> _Comparison:
        if self.op in ("in", "not_in") and not isinstance(self.value, list | tuple):
            raise ValueError(f"'value' must be a list for op {self.op!r}")
        if self.op in ("gt", "gte", "lt", "lte") and not isinstance(self.value, int | float | str):
            raise ValueError(f"'value' must be a number or a string for op {self.op!r}")
        if self.op == "exists" and not isinstance(self.value, bool | None):
            raise ValueError("'value' must be true, false or omitted for op 'exists'")
        if self.op in ("eq", "ne", "contains") and self.value is None:
            raise ValueError(f"'value' is required for op {self.op!r}")
        return self

    def describe(self, subject: str) -> str:
        if self.op == "exists":
            return f"{subject} {'is missing' if self.value is False else 'exists'}"
        if self.op in _SYMBOLS:
            return f"{subject} {_SYMBOLS[self.op]} {self.value!r}"
        return f"{subject} {self.op.replace('_', ' ')} {self.value!r}"


class TimeWindowConfig(_Config):
    """When the event happened: within the last ``hours``, on ``days_of_week``, between
    ``hour_from`` and ``hour_to`` (contact's local time, half-open, wrapping past midnight)."""

    hours: float | None = Field(default=None, gt=0, description="Event no older than this.")
    days_of_week: list[Weekday] | None = Field(default=None, min_length=1)
    hour_from: int | None = Field(default=None, ge=0, le=23)
    hour_to: int | None = Field(default=None, ge=1, le=24)

    @model_validator(mode="after")
    def _check(self) -> TimeWindowConfig:
        if (self.hour_from is None) != (self.hour_to is None):
            raise ValueError("set both 'hour_from' and 'hour_to', or neither")
        if self.hour_from is not None and self.hour_from == self.hour_to:
            raise ValueError("'hour_from' and 'hour_to' must differ")
        if self.hours is None and self.days_of_week is None and self.hour_from is None:
            raise ValueError("set at least one of 'hours', 'days_of_week', 'hour_from'/'hour_to'")
        return self


class TimeWindow(ConditionType[TimeWindowConfig]):
    """The event is recent enough and happened on allowed days and hours, in the contact's zone."""

    name = "time_window"
    config_model = TimeWindowConfig
    requires = frozenset({"contact"})
    description = "Event within the last N hours; days of week and hours in the contact's zone."

    def evaluate(
        self, config: TimeWindowConfig, event: TriggerEvent, context: ConditionContext
    ) -> bool:
        if config.hours is not None and context.now - event.occurred_at > timedelta(
            hours=config.hours
        ):
            return False
        if config.days_of_week is None and config.hour_from is None:
            return True
        local = event.occurred_at.astimezone(contact_zone(context.contact))
        if config.days_of_week is not None and _WEEKDAYS[local.weekday()] not in (
            config.days_of_week
        ):
            return False
        if config.hour_from is not None and config.hour_to is not None:
            start, end, hour = config.hour_from, config.hour_to, local.hour
            inside = start <= hour < end if start < end else hour >= start or hour < end
            if not inside:
                return False
        return True

    def explain(self, config: TimeWindowConfig) -> str:
        parts = []
        if config.hours is not None:
            parts.append(f"within the last {config.hours:g} h")
        if config.days_of_week is not None:
            parts.append("on " + ", ".join(config.days_of_week))
        if config.hour_from is not None:
            parts.append(f"between {config.hour_from:02d}:00 and {config.hour_to:02d}:00")
        return "event " + " ".join(parts) + " (contact's time zone)"


class EngagementScoreConfig(_Config):
    """Bounds on the contact's current engagement score (inclusive)."""

    min: float | None = None
    max: float | None = None

    @model_validator(mode="after")
    def _check(self) -> EngagementScoreConfig:
        if self.min is None and self.max is None:
            raise ValueError("set 'min', 'max' or both")
        for name in ("min", "max"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"'{name}' must be a finite number")
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError("'min' must not exceed 'max'")
        return self


class EngagementScore(ConditionType[EngagementScoreConfig]):
    """The contact's (decayed) engagement score lies within bounds."""

    name = "engagement_score"
    config_model = EngagementScoreConfig
    requires = frozenset({"engagement"})
    description = "The contact's engagement score is at least / at most a threshold."

    def evaluate(
        self, config: EngagementScoreConfig, event: TriggerEvent, context: ConditionContext
    ) -> bool:
        score = context.engagement_score()
        if config.min is not None and score < config.min:
            return False
        return not (config.max is not None and score > config.max)

    def explain(self, config: EngagementScoreConfig) -> str:
        if config.max is None:
            return f"engagement score >= {config.min:g}"
        if config.min is None:
            return f"engagement score <= {config.max:g}"
        return f"engagement score between {config.min:g} and {config.max:g}"


class SegmentMembershipConfig(_Config):
    segment: str = Field(min_length=1, max_length=200)
    member: bool = Field(default=True, description="False: the contact must NOT be in it.")


class SegmentMembership(ConditionType[SegmentMembershipConfig]):
    """The contact is (or is not) a member of a named segment."""

    name = "segment"
    config_model = SegmentMembershipConfig
    requires = frozenset({"segments"})
    description = "The contact is (or is not) in a segment."

    def evaluate(
        self, config: SegmentMembershipConfig, event: TriggerEvent, context: ConditionContext
    ) -> bool:
        return context.in_segment(config.segment) is config.member

    def check_references(self, config: SegmentMembershipConfig, session: Session) -> None:

        if session.exec(select(Segment.id).where(Segment.name == config.segment)).first() is None:
            raise ValidationError(
                f"no segment is called {config.segment!r}; create it first "
                "(postwise segments create) or fix the name",
                field="segment",
            )

    def explain(self, config: SegmentMembershipConfig) -> str:
        return f"{'in' if config.member else 'not in'} segment {config.segment!r}"


class PropertyFilter(_Comparison):
    """A test on a property (dotted path) of a past event."""

    property: str = Field(min_length=1, max_length=200)


_ENGAGEMENT_TYPES = frozenset({"open", "click"})


class ActionHistoryConfig(_Config):
    """``did``: the contact had ``event_type`` at least ``at_least`` times in the ``within_days``
    days before the triggering event; ``did: false`` inverts it (fewer than ``at_least`` times).

    ``since_event`` looks forward instead: events after the triggering event, up to now (and,
    with ``within_days``, at most that many days after the event). It is what exit conditions of
    delayed sends use ("purchased since the cart was abandoned").

    Both windows are anchored at the triggering event, not at the time of the check, so a
    condition means the same whether it is checked at once or after a delay of weeks.
    """

    event_type: str = Field(min_length=1, max_length=100)
    within_days: float | None = Field(default=None, gt=0, le=3650)
    since_event: bool = False
    at_least: int = Field(default=1, ge=1)
    did: bool = True
    #: Only past events whose properties match all of these (``{"property": "url", "op":
    #: "contains", "value": "/pricing"}``).
    where: list[PropertyFilter] = Field(default_factory=list, max_length=20)
    #: Only past events whose properties equal the triggering event's (e.g. ``["item_id"]``:
    #: "viewed this same item").
    same_as_event: list[str] = Field(default_factory=list, max_length=10)
    #: Count machine opens (privacy proxies, prefetch) and link scanners' clicks too.
    include_automated: bool = False
    #: Sum this numeric property of the matching events instead of counting them...
    sum_of: str | None = Field(default=None, min_length=1, max_length=200)
    #: ...and hold when the sum reaches this (required with ``sum_of``).
    sum_at_least: float | None = None

    @model_validator(mode="after")
    def _check(self) -> ActionHistoryConfig:
        if self.within_days is None and not self.since_event:
            raise ValueError("set 'within_days', or 'since_event': true")
        if (self.sum_of is None) != (self.sum_at_least is None):
            raise ValueError("set both 'sum_of' and 'sum_at_least', or neither")
        if self.sum_at_least is not None and not math.isfinite(self.sum_at_least):
            raise ValueError("'sum_at_least' must be a finite number")
        return self

    @property
    def detailed(self) -> bool:
        """Whether the events' properties are needed (not only how many there were)."""
        return bool(
            self.where
            or self.same_as_event
            or self.sum_of
            or (not self.include_automated and self.event_type in _ENGAGEMENT_TYPES)
        )


class ActionHistory(ConditionType[ActionHistoryConfig]):
    """Previous-action history: did / did not do X within N days, at least k times."""

    name = "action_history"
    config_model = ActionHistoryConfig
    requires = frozenset({"history"})
    description = "The contact did (or did not) do X at least k times within N days."

    def evaluate(
        self, config: ActionHistoryConfig, event: TriggerEvent, context: ConditionContext
    ) -> bool:
        until: datetime | None
        if config.since_event:
            since, until = event.occurred_at, None
            if config.within_days is not None:
                end = event.occurred_at + timedelta(days=config.within_days)
                until = end if end < context.now else None
        else:
            since = event.occurred_at - timedelta(days=config.within_days or 0)
            until = event.occurred_at
        if not config.detailed:
            done = context.count_events(config.event_type, since, until) >= config.at_least
            return done is config.did
        matching = [
            past
            for past in context.events(config.event_type, since, until)
            if _matches(config, past, event)
        ]
        if config.sum_of is not None:
            assert config.sum_at_least is not None
            total = 0.0
            for past in matching:
                value = lookup(past.properties, config.sum_of)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    total += float(value)
            done = total >= config.sum_at_least
        else:
            done = len(matching) >= config.at_least
        return done is config.did

    def explain(self, config: ActionHistoryConfig) -> str:
        times = "" if config.at_least == 1 else f" at least {config.at_least} times"
        if config.sum_of is not None:
            times = f" with {config.sum_of} adding up to at least {config.sum_at_least:g}"
        for test in config.where:
            times += f" where {test.describe(test.property)}"
        if config.same_as_event:
            times += " with the same " + ", ".join(config.same_as_event) + " as the event"
        verb = "did" if config.did else "did not do"
        if config.since_event:
            window = "since the event"
            if config.within_days is not None:
                window += f" (within {config.within_days:g} days of it)"
        else:
            window = f"in the {config.within_days:g} days before the event"
        return f"{verb} {config.event_type!r}{times} {window}"


def _matches(config: ActionHistoryConfig, past: HistoryEvent, event: TriggerEvent) -> bool:
    if past.automated and not config.include_automated:
        return False
    for test in config.where:
        if not compare(lookup(past.properties, test.property), test.op, test.value):
            return False
    for name in config.same_as_event:
        expected = lookup(event.properties, name)
        if expected is _MISSING or lookup(past.properties, name) != expected:
            return False
    return True


class ContactAttributeConfig(_Comparison):
    """Compare a contact field or attribute (dotted path into ``attributes``) with ``value``."""

    attribute: str = Field(min_length=1, max_length=200)


class ContactAttribute(ConditionType[ContactAttributeConfig]):
    """A contact field or attribute compared with a value."""

    name = "contact_attribute"
    config_model = ContactAttributeConfig
    requires = frozenset({"contact"})
    description = "A contact field or attribute: eq, ne, gt, gte, lt, lte, in, contains, exists."

    def evaluate(
        self, config: ContactAttributeConfig, event: TriggerEvent, context: ConditionContext
    ) -> bool:
        return compare(lookup(context.contact, config.attribute), config.op, config.value)

    def bind(self, config: ContactAttributeConfig) -> Predicate:
        test = _matcher(config.op, config.value)
        parts = tuple(config.attribute.split("."))
        if len(parts) == 1:
            key = parts[0]
            return lambda event, context: test(context.contact.get(key, _MISSING))
        return lambda event, context: test(_get(context.contact, parts))

    def explain(self, config: ContactAttributeConfig) -> str:
        return config.describe(f"contact.{config.attribute}")


class EventPropertyConfig(_Comparison):
    """Compare an event property (dotted path into ``properties``) with ``value``."""

    property: str = Field(min_length=1, max_length=200)


class EventProperty(ConditionType[EventPropertyConfig]):
    """An event property compared with a value."""

    name = "event_property"
    config_model = EventPropertyConfig
    description = "An event property: eq, ne, gt, gte, lt, lte, in, contains, exists."

    def evaluate(
        self, config: EventPropertyConfig, event: TriggerEvent, context: ConditionContext
    ) -> bool:
        return compare(lookup(event.properties, config.property), config.op, config.value)

    def bind(self, config: EventPropertyConfig) -> Predicate:
        test = _matcher(config.op, config.value)
        parts = tuple(config.property.split("."))
        if len(parts) == 1:
            key = parts[0]
            return lambda event, context: test(event.properties.get(key, _MISSING))
        return lambda event, context: test(_get(event.properties, parts))

    def explain(self, config: EventPropertyConfig) -> str:
        return config.describe(f"event.{config.property}")


#: The built-in condition types, instantiated once.
BUILTIN_CONDITIONS: tuple[ConditionType[Any], ...] = (
    TimeWindow(),
    EngagementScore(),
    SegmentMembership(),
    ActionHistory(),
    ContactAttribute(),
    EventProperty(),
)
