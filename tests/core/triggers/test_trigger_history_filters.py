"""History conditions that see what marketers filter on: the same item, the clicked link, human
opens only, sums over a window — from the event table and from the stream not stored yet."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from postwise.db.models import Event
from postwise.events import EVENT_STREAM, EventEnvelope, encode_event
from postwise.runtime import Runtime
from postwise.triggers.builtin import BUILTIN_CONDITIONS
from postwise.triggers.conditions import ConditionType, TriggerEvent
from postwise.triggers.context import BatchContext
from postwise.triggers.recent import StreamTail

NOW = datetime(2026, 4, 1, 12, tzinfo=UTC)
HISTORY: ConditionType[Any] = {c.name: c for c in BUILTIN_CONDITIONS}["action_history"]


def store(
    runtime: Runtime, contact: int, kind: str, ago: timedelta, automated: bool = False, **props: Any
) -> None:
    with runtime.session() as session:
        session.add(
            Event(
                event_id=uuid.uuid4().hex,
                type=kind,
                occurred_at=NOW - ago,
                contact_id=contact,
                properties=props,
                automated=automated,
            )
        )


def check(runtime: Runtime, config: dict[str, Any], events: list[TriggerEvent]) -> list[bool]:
    parsed = HISTORY.parse_config(config)
    with runtime.session() as session:
        context = BatchContext(session, events, now=NOW, recent=StreamTail(runtime.redis))
        return [HISTORY.evaluate(parsed, e, context.for_event(e)) for e in events]


def test_the_same_item_as_the_triggering_event(
    runtime: Runtime, make_contact: Callable[..., int]
) -> None:
    contact = make_contact()
    store(runtime, contact, "viewed", timedelta(days=2), item_id="sku-1")
    drop_on_viewed = TriggerEvent("e1", "price_drop", contact, NOW, {"item_id": "sku-1"})
    drop_elsewhere = TriggerEvent("e2", "price_drop", contact, NOW, {"item_id": "sku-9"})
    config = {"event_type": "viewed", "within_days": 30, "same_as_event": ["item_id"]}
    assert check(runtime, config, [drop_on_viewed, drop_elsewhere]) == [True, False]


def test_the_clicked_link_and_human_clicks_only(
    runtime: Runtime, make_contact: Callable[..., int]
) -> None:
    person, scanned = make_contact(), make_contact()
    store(runtime, person, "click", timedelta(hours=3), url="https://x.example/pricing")
    store(runtime, person, "click", timedelta(hours=2), url="https://x.example/blog")
    store(
        runtime,
        scanned,
        "click",
        timedelta(hours=1),
        automated=True,
        url="https://x.example/pricing",
    )
    events = [TriggerEvent(f"v{c}", "visit", c, NOW) for c in (person, scanned)]
    pricing = {
        "event_type": "click",
        "within_days": 1,
        "where": [{"property": "url", "op": "contains", "value": "/pricing"}],
    }
    assert check(runtime, pricing, events) == [True, False]
    assert check(runtime, {**pricing, "include_automated": True}, events) == [True, True]


def test_machine_opens_do_not_count_as_opens(
    runtime: Runtime, make_contact: Callable[..., int]
) -> None:
    contact = make_contact()
    store(runtime, contact, "open", timedelta(hours=5), automated=True, machine_open=True)
    event = TriggerEvent("v", "visit", contact, NOW)
    assert check(runtime, {"event_type": "open", "within_days": 7}, [event]) == [False]
    assert check(
        runtime, {"event_type": "open", "within_days": 7, "include_automated": True}, [event]
    ) == [True]


def test_sums_over_a_window_including_events_not_stored_yet(
    runtime: Runtime, make_contact: Callable[..., int]
) -> None:
    contact = make_contact()
    store(runtime, contact, "purchase", timedelta(days=3), amount=30)
    store(runtime, contact, "purchase", timedelta(days=40), amount=500)  # outside the window
    # Accepted on the stream a moment ago; the collector has not stored it.
    runtime.redis.xadd(
        EVENT_STREAM,
        encode_event(
            EventEnvelope(
                event_id="fresh",
                type="purchase",
                occurred_at=NOW - timedelta(hours=1),
                contact_id=contact,
                properties={"amount": 45.5},
            )
        ),
    )
    event = TriggerEvent("v", "visit", contact, NOW)
    config = {"event_type": "purchase", "within_days": 30, "sum_of": "amount"}
    assert check(runtime, {**config, "sum_at_least": 75}, [event]) == [True]
    assert check(runtime, {**config, "sum_at_least": 76}, [event]) == [False]


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"event_type": "purchase", "within_days": 3, "sum_of": "amount"}, None),
        (
            {"event_type": "purchase", "within_days": 3, "where": [{"property": "x", "op": "gt"}]},
            "where",
        ),
    ],
)
def test_bad_filters_are_refused(config: dict[str, Any], field: str | None) -> None:
    from postwise.errors import ValidationError

    with pytest.raises(ValidationError) as caught:
        HISTORY.parse_config(config)
    if field:
        assert (caught.value.field or "").startswith(field)
    assert HISTORY.explain(
        HISTORY.parse_config(
            {
                "event_type": "click",
                "within_days": 1,
                "where": [{"property": "url", "op": "contains", "value": "/pricing"}],
                "same_as_event": ["campaign"],
            }
        )
    ) == (
        "did 'click' where url contains '/pricing' with the same campaign as the event in the "
        "1 days before the event"
    )
