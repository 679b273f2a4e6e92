"""Defects of the trigger engine found by issue 20, each pinned by a test.

1. exit checks see every event accepted on the stream before the check, whatever the
   collector's lag (not only the event table);
2. a delayed send cancelled by its exit conditions gives its cooldown back, and the dry run
   does not say a scheduled send "fired";
3. a trigger saved just before an event sees it; a condition plugin missing on the engine's
   host is counted and reported; the ``action_history`` window is anchored at the event.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel
from sqlmodel import select

import postwise
from postwise.analytics.collector import Collector, CollectorConfig, ensure_group, open_sink
from postwise.db.models import Event, Message
from postwise.events import EVENT_STREAM
from postwise.runtime import Runtime
from postwise.triggers.builtin import BUILTIN_CONDITIONS
from postwise.triggers.compiled import read_invalid
from postwise.triggers.conditions import ConditionContext, ConditionType, TriggerEvent
from postwise.triggers.cooldown import TriggerKeys
from postwise.triggers.dryrun import dry_run, event_from_json
from postwise.triggers.engine import TriggerEngine
from postwise.triggers.recent import StreamTail
from postwise.triggers.stats import read_stats

Engine = Callable[..., TriggerEngine]
EXIT_ON_PURCHASE = {
    "type": "action_history",
    "config": {"event_type": "purchase", "since_event": True},
}


@pytest.fixture
def make_engine(runtime: Runtime) -> Iterator[Engine]:
    engines: list[TriggerEngine] = []

    def make(**options: Any) -> TriggerEngine:
        options.setdefault("consumer", f"test-{len(engines)}")
        options.setdefault("block_ms", 10)
        engine = TriggerEngine(runtime, **options)
        engine.ensure_group("0")
        engine.reload()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


def drain(engine: TriggerEngine) -> None:
    idle = 0
    while idle < 2:
        idle = idle + 1 if engine.step() == 0 else 0


def messages(runtime: Runtime, trigger_id: int) -> list[Message]:
    with runtime.session() as session:
        return list(session.exec(select(Message).where(Message.trigger_id == trigger_id)).all())


def counters(runtime: Runtime, trigger_id: int) -> dict[str, int]:
    return read_stats(runtime.redis, TriggerKeys(), [trigger_id])[trigger_id]


def collect(runtime: Runtime) -> None:
    """Run the analytics collector once over what is on the stream (stores and acknowledges)."""
    ensure_group(runtime.redis)
    collector = Collector(runtime, open_sink(runtime), config=CollectorConfig(batch_size=1000))
    collector.run(exit_when_idle=0.05)


# -- 1. exit checks read the stream, whatever the collector's lag -------------------------------


@pytest.mark.parametrize("collector", ["never_ran", "caught_up_before_the_purchase"])
def test_an_exit_check_sees_a_purchase_the_collector_has_not_stored(
    runtime: Runtime,
    make_contact: Callable[..., int],
    make_trigger: Callable[..., int],
    publish: Callable[..., str],
    make_engine: Engine,
    collector: str,
) -> None:
    trigger = make_trigger(
        event_type="cart_abandoned", delay="2h", exit_conditions=EXIT_ON_PURCHASE
    )
    buyer, browser = make_contact(), make_contact()
    start = datetime.now(UTC)
    clock = [start]
    engine = make_engine(clock=lambda: clock[0])
    for contact in (buyer, browser):
        publish("cart_abandoned", contact, occurred_at=start)
    drain(engine)
    if collector == "caught_up_before_the_purchase":
        collect(runtime)
    # Accepted by the API a moment before the reminder comes due; not in the event table.
    publish("purchase", buyer, occurred_at=start + timedelta(hours=1, minutes=59))
    with runtime.session() as session:
        assert session.exec(select(Event).where(Event.type == "purchase")).first() is None
    clock[0] = start + timedelta(hours=2, seconds=1)
    assert engine.process_due() == 2
    assert [m.contact_id for m in messages(runtime, trigger)] == [browser]
    assert (counters(runtime, trigger)["exited"], counters(runtime, trigger)["fired"]) == (1, 1)


def test_the_stream_tail_counts_an_event_once_whether_stored_or_not(
    runtime: Runtime, make_contact: Callable[..., int], publish: Callable[..., str]
) -> None:
    contact = make_contact()
    at = datetime.now(UTC)
    ensure_group(runtime.redis)
    stored = publish("purchase", contact, occurred_at=at - timedelta(minutes=2))
    collect(runtime)
    # Read by the collector but not acknowledged (pending): in the tail, and perhaps stored.
    pending = publish("purchase", contact, occurred_at=at - timedelta(minutes=1))
    runtime.redis.xreadgroup("analytics", "slow", {EVENT_STREAM: ">"}, count=10)
    fresh = publish("purchase", contact, occurred_at=at)
    tail = StreamTail(runtime.redis)
    tail.refresh()
    assert [
        e.event_id for e in tail.events("purchase", [contact], at - timedelta(hours=1))[contact]
    ] == [pending, fresh]
    assert stored not in {e.event_id for e in tail._entries}
    # Once the collector catches up, the tail forgets what is stored.
    runtime.redis.xgroup_delconsumer(EVENT_STREAM, "analytics", "slow")
    collect(runtime)
    tail.refresh()
    assert len(tail) == 0


def test_history_conditions_count_stream_events_and_table_events_once(
    runtime: Runtime, make_contact: Callable[..., int], publish: Callable[..., str]
) -> None:
    from postwise.triggers.context import BatchContext

    contact = make_contact()
    now = datetime.now(UTC)
    ensure_group(runtime.redis)
    publish("purchase", contact, occurred_at=now - timedelta(days=2))
    collect(runtime)
    publish("purchase", contact, occurred_at=now - timedelta(days=1))
    runtime.redis.xreadgroup("analytics", "slow", {EVENT_STREAM: ">"}, count=10)
    # The collector stores it but dies before acknowledging: in the table and on the tail.
    with runtime.session() as session:
        raw = runtime.redis.xrange(EVENT_STREAM)[-1][1]
        from postwise.events import decode_event

        envelope = decode_event(raw)
        session.add(
            Event(
                event_id=envelope.event_id,
                type="purchase",
                occurred_at=envelope.occurred_at,
                contact_id=contact,
            )
        )
    event = TriggerEvent("now", "visit", contact, now)
    with runtime.session() as session:
        context = BatchContext(session, [event], now=now, recent=StreamTail(runtime.redis))
        assert context.count_events(event, "purchase", now - timedelta(days=30), None) == 2


# -- 2. an exited send keeps no cooldown; the dry run names no event that never fired ------------


def test_an_exited_delayed_send_gives_its_cooldown_back(
    runtime: Runtime,
    make_contact: Callable[..., int],
    make_trigger: Callable[..., int],
    publish: Callable[..., str],
    make_engine: Engine,
) -> None:
    trigger = make_trigger(
        name="cart",
        event_type="cart_abandoned",
        delay="1h",
        cooldown="24h",
        exit_conditions=EXIT_ON_PURCHASE,
    )
    contact = make_contact()
    start = datetime.now(UTC)
    clock = [start]
    engine = make_engine(clock=lambda: clock[0])
    first = publish("cart_abandoned", contact, occurred_at=start)
    drain(engine)
    # While it waits, the dry run says a send is scheduled, not that one fired.
    [verdict] = dry_run(
        runtime, event_from_json({"type": "cart_abandoned", "contact_id": contact}), now=start
    )
    assert verdict.outcome == "cooldown"
    assert f"a send for event {first} is scheduled" in verdict.detail
    assert "fired" not in verdict.detail
    publish("purchase", contact, occurred_at=start + timedelta(minutes=10))
    clock[0] = start + timedelta(hours=1, seconds=1)
    assert engine.process_due() == 1
    assert counters(runtime, trigger)["exited"] == 1
    # The next abandoned cart, the same day, gets its own reminder.
    [after] = dry_run(
        runtime,
        event_from_json({"type": "cart_abandoned", "contact_id": contact}),
        now=clock[0],
    )
    assert after.outcome == "schedule", after.detail
    clock[0] = start + timedelta(hours=2)
    publish("cart_abandoned", contact, occurred_at=clock[0])
    drain(engine)
    stats = counters(runtime, trigger)
    assert (stats["scheduled"], stats["cooldown"]) == (2, 0)
    clock[0] = start + timedelta(hours=3, seconds=1)
    assert engine.process_due() == 1
    assert [m.contact_id for m in messages(runtime, trigger)] == [contact]


# -- 3. the first second after a save; a missing plugin; the action_history window ----------------


def test_a_trigger_saved_just_before_an_event_sees_it(
    runtime: Runtime,
    make_contact: Callable[..., int],
    make_trigger: Callable[..., int],
    publish: Callable[..., str],
    make_engine: Engine,
) -> None:
    make_trigger(event_type="other")
    engine = make_engine()
    drain(engine)  # the engine has just checked the version: the next check is due in a second
    trigger = make_trigger()
    publish("signup", make_contact())
    drain(engine)
    assert len(messages(runtime, trigger)) == 1


class _TierConfig(BaseModel):
    tier: str


class _Tier(ConditionType[_TierConfig]):
    name = "loyalty_tier_test"
    config_model = _TierConfig
    requires = frozenset({"contact"})

    def evaluate(self, config: _TierConfig, event: TriggerEvent, context: ConditionContext) -> bool:
        return True


class _TierPlugin:
    @postwise.hookimpl
    def postwise_register_conditions(self, register: Any) -> None:
        register(_Tier.name, _Tier())


def test_a_condition_plugin_missing_on_the_engine_host_is_counted_and_reported(
    runtime: Runtime,
    make_contact: Callable[..., int],
    make_trigger: Callable[..., int],
    publish: Callable[..., str],
    make_engine: Engine,
) -> None:
    assert runtime.plugins.register(_TierPlugin(), "tier-plugin")
    try:
        trigger = make_trigger(conditions=[{"type": _Tier.name, "config": {"tier": "gold"}}])
    finally:
        runtime.plugins.unregister("tier-plugin")
    engine = make_engine(consumer="host-b")
    for _ in range(3):
        publish("signup", make_contact())
    drain(engine)
    assert messages(runtime, trigger) == []
    assert counters(runtime, trigger)["invalid"] == 3
    [report] = read_invalid(runtime.redis, TriggerKeys())[trigger]
    assert report["consumer"] == "host-b"
    assert _Tier.name in report["error"]


def test_action_history_window_is_the_n_days_before_the_event_even_after_a_long_delay() -> None:
    condition: ConditionType[Any] = {c.name: c for c in BUILTIN_CONDITIONS}["action_history"]
    event_at = datetime(2026, 1, 1, 12, tzinfo=UTC)
    asked: list[tuple[datetime, datetime | None]] = []

    class Context:
        now = event_at + timedelta(days=5)  # an exit checked after a five-day delay
        contact: dict[str, Any] = {}

        def count_events(self, event_type: str, since: datetime, until: Any = None) -> int:
            asked.append((since, until))
            return 1

        def engagement_score(self) -> float:
            return 0.0

        def in_segment(self, segment: str) -> bool:
            return False

    event = TriggerEvent("e", "cart_abandoned", 1, event_at)
    before = condition.parse_config({"event_type": "purchase", "within_days": 2})
    assert condition.evaluate(before, event, Context())
    after = condition.parse_config(
        {"event_type": "purchase", "within_days": 2, "since_event": True}
    )
    assert condition.evaluate(after, event, Context())
    assert asked == [
        (event_at - timedelta(days=2), event_at),
        (event_at, event_at + timedelta(days=2)),
    ]
