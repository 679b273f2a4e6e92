"""The built-in condition types, evaluated against a real batch context."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from postwise.db.models import ContactTag, Event, Segment, SegmentMember
from postwise.runtime import Runtime
from postwise.triggers.builtin import BUILTIN_CONDITIONS, compare, lookup
from postwise.triggers.conditions import ConditionType, TriggerEvent
from postwise.triggers.context import BatchContext, engagement_decay

NOW = datetime(2026, 1, 5, 14, 0, tzinfo=UTC)  # a Monday: 09:00 in New York, 23:00 in Tokyo
CONDITIONS = {c.name: c for c in BUILTIN_CONDITIONS}


def _event(
    contact_id: int, *, type_: str = "signup", at: datetime = NOW, **props: Any
) -> TriggerEvent:
    return TriggerEvent(f"ev-{contact_id}-{type_}-{at.timestamp()}", type_, contact_id, at, props)


def _check(
    runtime: Runtime,
    name: str,
    config: dict[str, Any],
    events: list[TriggerEvent],
    *,
    now: datetime = NOW,
) -> list[bool]:
    condition: ConditionType[Any] = CONDITIONS[name]
    parsed = condition.parse_config(config)
    with runtime.session() as session:
        context = BatchContext(session, events, now=now, score=engagement_decay(runtime.settings))
        evaluated = [condition.evaluate(parsed, e, context.for_event(e)) for e in events]
        predicate = condition.bind(parsed)
        assert [predicate(e, context.for_event(e)) for e in events] == evaluated
        return evaluated


def test_time_window_uses_the_contacts_time_zone(
    runtime: Runtime, make_contact: Callable[..., int]
) -> None:
    new_york = make_contact(timezone="America/New_York")
    tokyo = make_contact(timezone="Asia/Tokyo")
    unknown = make_contact(timezone="Mars/Olympus")
    config = {"days_of_week": ["mon"], "hour_from": 9, "hour_to": 17}
    results = _check(
        runtime, "time_window", config, [_event(new_york), _event(tokyo), _event(unknown)]
    )
    # 09:00 Monday in New York: inside; 23:00 Monday in Tokyo: outside; unknown zone is UTC (14:00).
    assert results == [True, False, True]


def test_time_window_hours_wrap_past_midnight(
    runtime: Runtime, make_contact: Callable[..., int]
) -> None:
    tokyo = make_contact(timezone="Asia/Tokyo")
    assert _check(runtime, "time_window", {"hour_from": 22, "hour_to": 6}, [_event(tokyo)]) == [
        True
    ]


def test_time_window_rejects_stale_events(
    runtime: Runtime, make_contact: Callable[..., int]
) -> None:
    contact = make_contact()
    fresh = _event(contact, at=NOW - timedelta(hours=1))
    stale = _event(contact, at=NOW - timedelta(hours=7))
    assert _check(runtime, "time_window", {"hours": 6}, [fresh, stale]) == [True, False]


def test_engagement_score_bounds(runtime: Runtime, make_contact: Callable[..., int]) -> None:
    low, mid, high = (make_contact(engagement_score=s) for s in (2.0, 10.0, 50.0))
    events = [_event(low), _event(mid), _event(high)]
    assert _check(runtime, "engagement_score", {"min": 10}, events) == [False, True, True]
    assert _check(runtime, "engagement_score", {"min": 5, "max": 20}, events) == [
        False,
        True,
        False,
    ]


def test_engagement_score_is_read_decayed_to_now(
    runtime: Runtime, make_contact: Callable[..., int]
) -> None:
    # Half-life 30 days: a score of 100 stored 30 days ago reads as 50 now.
    contact = make_contact(engagement_score=100.0, engagement_updated_at=NOW - timedelta(days=30))
    never = make_contact(engagement_score=100.0, engagement_updated_at=None)
    events = [_event(contact), _event(never)]
    assert _check(runtime, "engagement_score", {"min": 45}, events) == [True, False]
    assert _check(runtime, "engagement_score", {"min": 55}, events) == [False, False]


def test_segment_membership_static_and_rules(
    runtime: Runtime, make_contact: Callable[..., int]
) -> None:
    member, other = make_contact(country="FR"), make_contact(country="DE")
    with runtime.session() as session:
        listed = Segment(name="beta", kind="static")
        session.add(listed)
        session.add(Segment(name="french", kind="rules", rules={"field": "country", "value": "FR"}))
        session.flush()
        assert listed.id is not None
        session.add(SegmentMember(segment_id=listed.id, contact_id=member))
    events = [_event(member), _event(other)]
    assert _check(runtime, "segment", {"segment": "beta"}, events) == [True, False]
    assert _check(runtime, "segment", {"segment": "french"}, events) == [True, False]
    assert _check(runtime, "segment", {"segment": "beta", "member": False}, events) == [False, True]


def _store_events(runtime: Runtime, contact_id: int, type_: str, *ages: timedelta) -> None:
    with runtime.session() as session:
        for index, age in enumerate(ages):
            session.add(
                Event(
                    event_id=f"hist-{contact_id}-{type_}-{index}",
                    type=type_,
                    occurred_at=NOW - age,
                    contact_id=contact_id,
                )
            )


def test_action_history_did_at_least_k_times_within_n_days(
    runtime: Runtime, make_contact: Callable[..., int]
) -> None:
    loyal, lapsed, new = make_contact(), make_contact(), make_contact()
    _store_events(
        runtime, loyal, "purchase", timedelta(days=1), timedelta(days=3), timedelta(days=9)
    )
    _store_events(runtime, lapsed, "purchase", timedelta(days=40))
    events = [_event(loyal), _event(lapsed), _event(new)]
    config = {"event_type": "purchase", "within_days": 10, "at_least": 3}
    assert _check(runtime, "action_history", config, events) == [True, False, False]
    config = {"event_type": "purchase", "within_days": 30, "did": False}
    assert _check(runtime, "action_history", config, events) == [False, True, True]


def test_action_history_never_counts_the_event_itself(
    runtime: Runtime, make_contact: Callable[..., int]
) -> None:
    contact = make_contact()
    event = _event(contact, type_="purchase")
    with runtime.session() as session:
        session.add(
            Event(event_id=event.event_id, type="purchase", occurred_at=NOW, contact_id=contact)
        )
    config = {"event_type": "purchase", "within_days": 30, "did": False}
    assert _check(runtime, "action_history", config, [event]) == [True]


def test_action_history_counts_earlier_events_of_the_same_batch(
    runtime: Runtime, make_contact: Callable[..., int]
) -> None:
    contact = make_contact()
    first = _event(contact, type_="purchase", at=NOW - timedelta(minutes=5))
    second = _event(contact, type_="purchase", at=NOW)
    config = {"event_type": "purchase", "within_days": 30, "did": False}
    # Neither is in the event table yet; the first is still the only "first purchase".
    assert _check(runtime, "action_history", config, [first, second]) == [True, False]


def test_action_history_since_event_looks_forward(
    runtime: Runtime, make_contact: Callable[..., int]
) -> None:
    converted, waiting = make_contact(), make_contact()
    abandoned_at = NOW - timedelta(hours=2)
    _store_events(runtime, converted, "purchase", timedelta(hours=1))
    _store_events(runtime, waiting, "purchase", timedelta(hours=3))
    events = [_event(c, type_="cart_abandoned", at=abandoned_at) for c in (converted, waiting)]
    config = {"event_type": "purchase", "since_event": True}
    assert _check(runtime, "action_history", config, events) == [True, False]


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"attribute": "plan", "value": "pro"}, True),
        ({"attribute": "plan", "op": "ne", "value": "pro"}, False),
        ({"attribute": "seats", "op": "gt", "value": 5}, True),
        ({"attribute": "seats", "op": "lt", "value": 5}, False),
        ({"attribute": "seats", "op": "gte", "value": 10}, True),
        ({"attribute": "plan", "op": "in", "value": ["pro", "team"]}, True),
        ({"attribute": "tags", "op": "contains", "value": "vip"}, True),
        ({"attribute": "company.name", "op": "contains", "value": "Acme"}, True),
        ({"attribute": "company.size", "op": "exists"}, False),
        ({"attribute": "country", "value": "FR"}, True),
        ({"attribute": "seats", "op": "gt", "value": "many"}, False),
    ],
)
def test_contact_attribute_comparisons(
    runtime: Runtime, make_contact: Callable[..., int], config: dict[str, Any], expected: bool
) -> None:
    contact = make_contact(
        country="FR", attributes={"plan": "pro", "seats": 10, "company": {"name": "Acme Ltd"}}
    )
    with runtime.session() as session:
        session.add(ContactTag(contact_id=contact, tag="vip"))
    assert _check(runtime, "contact_attribute", config, [_event(contact)]) == [expected]


def test_event_property_match(runtime: Runtime, make_contact: Callable[..., int]) -> None:
    contact = make_contact()
    big = _event(contact, total=120, items=["shoe"])
    small = _event(contact, total=20, items=["sock"])
    assert _check(
        runtime, "event_property", {"property": "total", "op": "gte", "value": 100}, [big, small]
    ) == [True, False]
    assert _check(
        runtime,
        "event_property",
        {"property": "items", "op": "contains", "value": "shoe"},
        [big, small],
    ) == [True, False]
    assert _check(
        runtime, "event_property", {"property": "coupon", "op": "exists", "value": False}, [big]
    ) == [True]


def test_comparison_operators_directly() -> None:
    assert compare(lookup({"a": {"b": 1}}, "a.b"), "eq", 1)
    assert compare(lookup({}, "missing"), "ne", 1)
    assert not compare(lookup({}, "missing"), "eq", None)
    assert not compare(True, "gt", 0)


@pytest.mark.parametrize(
    ("name", "config", "field"),
    [
        ("time_window", {"hour_from": 9}, None),
        ("time_window", {"days_of_week": ["monday"]}, "days_of_week.0"),
        ("engagement_score", {"min": 5, "max": 1}, None),
        ("action_history", {"event_type": "purchase"}, None),
        ("action_history", {"event_type": "purchase", "within_days": -1}, "within_days"),
        ("contact_attribute", {"attribute": "plan", "op": "in", "value": "pro"}, None),
        ("event_property", {"property": "x", "op": "between", "value": 1}, "op"),
    ],
)
def test_invalid_configurations_are_rejected(
    name: str, config: dict[str, Any], field: str | None
) -> None:
    from postwise.errors import ValidationError

    with pytest.raises(ValidationError) as caught:
        CONDITIONS[name].parse_config(config)
    assert caught.value.field == field


def test_every_builtin_explains_itself() -> None:
    samples = {
        "time_window": {"hours": 2, "days_of_week": ["sat", "sun"], "hour_from": 8, "hour_to": 20},
        "engagement_score": {"min": 10},
        "segment": {"segment": "vip"},
        "action_history": {"event_type": "purchase", "within_days": 30, "at_least": 2},
        "contact_attribute": {"attribute": "plan", "value": "pro"},
        "event_property": {"property": "total", "op": "gt", "value": 50},
    }
    texts = {n: CONDITIONS[n].explain(CONDITIONS[n].parse_config(c)) for n, c in samples.items()}
    assert texts["engagement_score"] == "engagement score >= 10"
    assert texts["segment"] == "in segment 'vip'"
    assert (
        texts["action_history"] == "did 'purchase' at least 2 times in the 30 days before the event"
    )
    assert texts["contact_attribute"] == "contact.plan == 'pro'"
    assert texts["event_property"] == "event.total > 50"
    assert "sat, sun" in texts["time_window"]


@contextmanager
def _count_queries(runtime: Runtime) -> Iterator[list[str]]:
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append(statement)

    sa.event.listen(runtime.engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        sa.event.remove(runtime.engine, "before_cursor_execute", record)


def test_context_loads_each_kind_once_per_batch_not_per_condition(
    runtime: Runtime, make_contact: Callable[..., int]
) -> None:
    contacts = [make_contact(engagement_score=float(i)) for i in range(60)]
    with runtime.session() as session:
        session.add(Segment(name="everyone", kind="rules", rules={"status": "active"}))
    for contact in contacts[::3]:
        _store_events(runtime, contact, "purchase", timedelta(days=2))
    events = [_event(c) for c in contacts]
    checks = [
        ("engagement_score", {"min": 10}),
        ("segment", {"segment": "everyone"}),
        ("action_history", {"event_type": "purchase", "within_days": 7}),
        ("action_history", {"event_type": "purchase", "within_days": 3, "at_least": 1}),
        ("contact_attribute", {"attribute": "status", "value": "active"}),
    ]
    with _count_queries(runtime) as statements, runtime.session() as session:
        context = BatchContext(session, events, now=NOW)
        results = []
        for event in events:
            per_event = context.for_event(event)
            results.append(
                [
                    CONDITIONS[n].evaluate(CONDITIONS[n].parse_config(c), event, per_event)
                    for n, c in checks
                ]
            )
    # Contacts: 1; segment: the segment lookup + its members; history: 1 (the 3-day window
    # is inside the loaded 7-day one).
    assert len(statements) <= 4, statements
    assert sum(r[2] for r in results) == 20
    assert all(r[4] for r in results)
