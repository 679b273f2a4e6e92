"""The engine end to end: stream → conditions → cooldown → submit_send → ledger and counters."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import BaseModel
from sqlmodel import select

import postwise
from postwise.db.models import Campaign, Event, Message, MessageStatus, Template
from postwise.delivery.dispatch import submit_send
from postwise.delivery.requests import SendRequest, SubmitResult
from postwise.events import EVENT_STREAM
from postwise.runtime import Runtime
from postwise.triggers.conditions import ConditionContext, ConditionType, TriggerEvent
from postwise.triggers.cooldown import TriggerKeys
from postwise.triggers.engine import TriggerEngine, dedupe_key
from postwise.triggers.stats import read_stats
from postwise.triggers.store import TriggerStore

Engine = Callable[..., TriggerEngine]


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
    """Step until the stream has nothing left for this consumer."""
    idle = 0
    while idle < 2:
        idle = idle + 1 if engine.step() == 0 else 0


def messages(runtime: Runtime, trigger_id: int) -> list[Message]:
    with runtime.session() as session:
        query = select(Message).where(Message.trigger_id == trigger_id)
        return list(session.exec(query).all())


def counters(runtime: Runtime, trigger_id: int) -> dict[str, int]:
    return read_stats(runtime.redis, TriggerKeys(), [trigger_id])[trigger_id]


def pending(runtime: Runtime) -> int:
    return int(runtime.redis.xpending(EVENT_STREAM, "triggers")["pending"])


def test_a_qualifying_event_is_sent_through_delivery(
    runtime: Runtime,
    make_contact: Callable[..., int],
    make_trigger: Callable[..., int],
    publish: Callable[..., str],
    make_engine: Engine,
) -> None:
    trigger = make_trigger(
        conditions=[{"type": "event_property", "config": {"property": "plan", "value": "pro"}}]
    )
    contact = make_contact()
    yes = publish("signup", contact, plan="pro")
    publish("signup", make_contact(), plan="free")
    drain(make_engine())
    rows = messages(runtime, trigger)
    assert [row.contact_id for row in rows] == [contact]
    expected = SendRequest(
        contact_id=contact,
        template_id=rows[0].template_id or 0,
        dedupe_key=dedupe_key(trigger, yes),
    )
    assert rows[0].id == expected.message_id
    assert rows[0].status == MessageStatus.QUEUED
    assert counters(runtime, trigger)["matched"] == 1
    assert counters(runtime, trigger)["fired"] == 1
    assert pending(runtime) == 0


def test_every_trigger_on_an_event_type_is_evaluated(
    runtime: Runtime,
    make_contact: Callable[..., int],
    make_trigger: Callable[..., int],
    publish: Callable[..., str],
    make_engine: Engine,
) -> None:
    triggers = [make_trigger() for _ in range(3)]
    publish("signup", make_contact())
    drain(make_engine())
    assert [len(messages(runtime, t)) for t in triggers] == [1, 1, 1]


def test_cooldown_holds_a_second_event_for_the_same_contact(
    runtime: Runtime,
    make_contact: Callable[..., int],
    make_trigger: Callable[..., int],
    publish: Callable[..., str],
    make_engine: Engine,
) -> None:
    trigger = make_trigger(cooldown="1h")
    contact, other = make_contact(), make_contact()
    for person in (contact, contact, other, contact):
        publish("signup", person)
    drain(make_engine())
    assert sorted(row.contact_id or 0 for row in messages(runtime, trigger)) == sorted(
        [contact, other]
    )
    stats = counters(runtime, trigger)
    assert (stats["matched"], stats["fired"], stats["cooldown"]) == (4, 2, 2)


def test_the_same_event_id_twice_fires_once(
    runtime: Runtime,
    make_contact: Callable[..., int],
    make_trigger: Callable[..., int],
    publish: Callable[..., str],
    make_engine: Engine,
) -> None:
    with_cooldown, without = make_trigger(), make_trigger(cooldown=0)
    contact = make_contact()
    publish("signup", contact, event_id="evt-1")
    publish("signup", contact, event_id="evt-1")
    engine = make_engine()
    drain(engine)
    publish("signup", contact, event_id="evt-1")
    drain(engine)
    for trigger in (with_cooldown, without):
        assert len(messages(runtime, trigger)) == 1
        stats = counters(runtime, trigger)
        assert (stats["fired"], stats["duplicates"]) == (1, 2)


def test_higher_priority_wins_when_the_cap_allows_only_one(
    make_settings: Callable[..., Any],
    make_contact: Callable[..., int],
    make_trigger: Callable[..., int],
    publish: Callable[..., str],
) -> None:
    runtime = Runtime(make_settings(frequency_cap="1/24h"))
    try:
        low = make_trigger(name="low", priority=1)
        high = make_trigger(name="high", priority=9)
        contact = make_contact()
        publish("signup", contact)
        engine = TriggerEngine(runtime, consumer="capped", block_ms=10)
        engine.ensure_group("0")
        drain(engine)
        engine.close()
        assert [m.status for m in messages(runtime, high)] == [MessageStatus.QUEUED]
        assert [m.status for m in messages(runtime, low)] == [MessageStatus.SKIPPED]
        assert counters(runtime, high)["fired"] == 1
        assert counters(runtime, low)["capped"] == 1
        # Nothing was sent for "low", so its cooldown is free for the next chance.
        assert not runtime.redis.exists(f"postwise:triggers:cd:{low}:{contact}")
        assert runtime.redis.exists(f"postwise:triggers:cd:{high}:{contact}")
    finally:
        runtime.close()


def _quiet_now(zone_offset_hours: int = 0) -> str:
    hour = (datetime.now(UTC).hour + zone_offset_hours) % 24
    return f"{hour}-{(hour + 2) % 24}"


def test_quiet_hours_hold_the_send_until_they_end_in_the_contacts_zone(
    make_settings: Callable[..., Any],
    make_contact: Callable[..., int],
    make_trigger: Callable[..., int],
    publish: Callable[..., str],
) -> None:
    runtime = Runtime(make_settings(quiet_hours=_quiet_now()))
    requests: list[SendRequest] = []

    def recording(rt: Runtime, request: SendRequest) -> SubmitResult:
        requests.append(request)
        return submit_send(rt, request)

    try:
        trigger = make_trigger()
        publish("signup", make_contact(timezone="UTC"))
        # +09:00 all year: quiet hours (UTC now .. +2 h) are over there, so it sends at once.
        publish("signup", make_contact(timezone="Asia/Tokyo"))
        engine = TriggerEngine(runtime, consumer="quiet", block_ms=10, submit=recording)
        engine.ensure_group("0")
        drain(engine)
        engine.close()
        held, immediate = requests
        assert held.not_before is not None
        end = datetime.now(UTC).replace(minute=0, second=0, microsecond=0) + timedelta(hours=2)
        assert abs((held.not_before - end).total_seconds()) < 3600 + 1
        assert held.not_before > datetime.now(UTC)
        assert immediate.not_before is None
        assert [m.status for m in messages(runtime, trigger)] == [MessageStatus.QUEUED] * 2
    finally:
        runtime.close()


def test_transactional_triggers_ignore_quiet_hours(
    make_settings: Callable[..., Any],
    make_contact: Callable[..., int],
    make_trigger: Callable[..., int],
    publish: Callable[..., str],
) -> None:
    runtime = Runtime(make_settings(quiet_hours=_quiet_now()))
    requests: list[SendRequest] = []

    def recording(rt: Runtime, request: SendRequest) -> SubmitResult:
        requests.append(request)
        return submit_send(rt, request)

    try:
        with runtime.session() as session:
            session.add(Template(name="receipt", kind="transactional"))
        make_trigger(action={"type": "send_template", "template": "receipt"})
        publish("signup", make_contact(timezone="UTC"))
        engine = TriggerEngine(runtime, consumer="tx", block_ms=10, submit=recording)
        engine.ensure_group("0")
        drain(engine)
        engine.close()
        assert [(r.transactional, r.not_before) for r in requests] == [(True, None)]
    finally:
        runtime.close()


def test_a_delayed_reminder_is_cancelled_if_the_contact_converted_meanwhile(
    runtime: Runtime,
    make_contact: Callable[..., int],
    make_trigger: Callable[..., int],
    publish: Callable[..., str],
    make_engine: Engine,
) -> None:
    trigger = make_trigger(
        event_type="cart_abandoned",
        delay="2h",
        exit_conditions={
            "type": "action_history",
            "config": {"event_type": "purchase", "since_event": True},
        },
    )
    converted, waiting = make_contact(), make_contact()
    start = datetime.now(UTC)
    clock = [start]
    engine = make_engine(clock=lambda: clock[0])
    for contact in (converted, waiting):
        publish("cart_abandoned", contact, occurred_at=start)
    drain(engine)
    assert messages(runtime, trigger) == []
    assert counters(runtime, trigger)["scheduled"] == 2
    with runtime.session() as session:
        session.add(
            Event(
                event_id="purchase-1",
                type="purchase",
                occurred_at=start + timedelta(minutes=30),
                contact_id=converted,
            )
        )
    clock[0] = start + timedelta(hours=1)
    assert engine.process_due() == 0
    clock[0] = start + timedelta(hours=2, seconds=1)
    assert engine.process_due() == 2
    assert [m.contact_id for m in messages(runtime, trigger)] == [waiting]
    stats = counters(runtime, trigger)
    assert (stats["exited"], stats["fired"]) == (1, 1)
    assert engine.process_due() == 0


def test_delayed_sends_of_a_paused_trigger_are_cancelled(
    runtime: Runtime,
    make_contact: Callable[..., int],
    make_trigger: Callable[..., int],
    publish: Callable[..., str],
    make_engine: Engine,
) -> None:
    trigger = make_trigger(delay="10m")
    start = datetime.now(UTC)
    clock = [start]
    engine = make_engine(clock=lambda: clock[0])
    publish("signup", make_contact())
    drain(engine)
    with runtime.session() as session:
        TriggerStore(session, runtime).set_active(trigger, False)
    engine.reload()
    clock[0] = start + timedelta(minutes=11)
    assert engine.process_due() == 1
    assert messages(runtime, trigger) == []
    assert counters(runtime, trigger)["cancelled"] == 1


def test_enrolling_in_a_campaign_sends_its_message_attributed_to_it(
    runtime: Runtime,
    template_id: int,
    make_contact: Callable[..., int],
    make_trigger: Callable[..., int],
    publish: Callable[..., str],
    make_engine: Engine,
) -> None:
    with runtime.session() as session:
        campaign = Campaign(name="onboarding", template_id=template_id)
        session.add(campaign)
        session.flush()
        campaign_id = campaign.id
    trigger = make_trigger(action={"type": "enrol_campaign", "campaign": "onboarding"})
    publish("signup", make_contact())
    drain(make_engine())
    [row] = messages(runtime, trigger)
    assert (row.campaign_id, row.template_id) == (campaign_id, template_id)


def test_a_trigger_created_while_running_is_picked_up(
    runtime: Runtime,
    make_contact: Callable[..., int],
    make_trigger: Callable[..., int],
    publish: Callable[..., str],
    make_engine: Engine,
) -> None:
    make_trigger(event_type="other")
    engine = make_engine()
    drain(engine)
    trigger = make_trigger()
    engine._checked_at = 0.0  # the next step checks the version now rather than in a second
    publish("signup", make_contact())
    drain(engine)
    assert len(messages(runtime, trigger)) == 1


def test_events_without_trigger_or_known_contact_are_acknowledged(
    runtime: Runtime,
    make_trigger: Callable[..., int],
    publish: Callable[..., str],
    make_engine: Engine,
) -> None:
    trigger = make_trigger()
    publish("page_view", 1)
    publish("signup", 999_999)
    runtime.redis.xadd(EVENT_STREAM, {b"e": b"not json"})
    drain(make_engine())
    assert pending(runtime) == 0
    assert messages(runtime, trigger) == []
    engine_stats = runtime.redis.hgetall("postwise:triggers:stats:engine")
    assert engine_stats[b"unknown_contact"] == b"1"
    assert engine_stats[b"undecodable"] == b"1"


class ExplodingConfig(BaseModel):
    pass


class Exploding(ConditionType[ExplodingConfig]):
    name = "exploding"
    config_model = ExplodingConfig

    def evaluate(
        self, config: ExplodingConfig, event: TriggerEvent, context: ConditionContext
    ) -> bool:
        raise RuntimeError("kaboom")


class ExplodingPlugin:
    @postwise.hookimpl
    def postwise_register_conditions(self, register: Any) -> None:
        register("exploding", Exploding())


def test_a_raising_condition_plugin_is_isolated_logged_and_counted(
    runtime: Runtime,
    make_contact: Callable[..., int],
    make_trigger: Callable[..., int],
    publish: Callable[..., str],
    make_engine: Engine,
    caplog: pytest.LogCaptureFixture,
) -> None:
    plugin = ExplodingPlugin()
    assert runtime.plugins.register(plugin, "exploding-plugin")
    try:
        broken = make_trigger(conditions=[{"type": "exploding"}], priority=5)
        healthy = make_trigger()
        for _ in range(3):
            publish("signup", make_contact())
        engine = make_engine()
        with caplog.at_level(logging.ERROR, logger="postwise.triggers.engine"):
            drain(engine)
        assert counters(runtime, broken)["errors"] == 3
        assert messages(runtime, broken) == []
        assert len(messages(runtime, healthy)) == 3
        assert pending(runtime) == 0
        logged = [r.getMessage() for r in caplog.records if r.name == "postwise.triggers.engine"]
        assert len(logged) == 3
        assert "'exploding-plugin'" in logged[0]
        assert "kaboom" in logged[0]
        # And it keeps running: later events are handled as before.
        publish("signup", make_contact())
        drain(engine)
        assert len(messages(runtime, healthy)) == 4
    finally:
        runtime.plugins.unregister("exploding-plugin")


def test_dry_run_reports_cooldown_and_schedule_without_claiming(
    runtime: Runtime,
    make_contact: Callable[..., int],
    make_trigger: Callable[..., int],
    publish: Callable[..., str],
    make_engine: Engine,
) -> None:
    from postwise.triggers.dryrun import dry_run, event_from_json

    immediate = make_trigger(name="now", priority=2)
    make_trigger(
        name="later",
        delay="1h",
        exit_conditions={
            "type": "action_history",
            "config": {"event_type": "purchase", "since_event": True},
        },
    )
    contact = make_contact()
    before = dry_run(runtime, event_from_json({"type": "signup", "contact_id": contact}))
    assert [(v.trigger, v.outcome) for v in before] == [("now", "fire"), ("later", "schedule")]
    assert "did 'purchase' since the event" in before[1].detail
    assert not runtime.redis.exists(f"postwise:triggers:cd:{immediate}:{contact}")
    fired = publish("signup", contact)
    drain(make_engine())
    after = dry_run(runtime, event_from_json({"type": "signup", "contact_id": contact}))
    assert [v.outcome for v in after] == ["cooldown", "cooldown"]
    assert f"fired for event {fired}" in after[0].detail
