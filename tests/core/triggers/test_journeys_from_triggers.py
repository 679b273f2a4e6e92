"""Triggers become one-step journeys that behave the same, and are paused as they move."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlmodel import select

from postwise.db.models import Campaign, JourneyRun, Message, Trigger
from postwise.journeys.engine import JourneyEngine
from postwise.journeys.migrate import import_triggers
from postwise.runtime import Runtime


def test_a_delayed_trigger_with_exit_conditions_becomes_a_journey_that_does_the_same(
    runtime: Runtime,
    template_id: int,
    make_contact: Callable[..., int],
    make_trigger: Callable[..., int],
    publish: Callable[..., str],
) -> None:
    trigger = make_trigger(
        name="cart-reminder",
        event_type="cart_abandoned",
        delay="2h",
        cooldown="1d",
        exit_conditions={
            "type": "action_history",
            "config": {"event_type": "purchase", "since_event": True},
        },
    )
    with runtime.session() as session:
        campaign = Campaign(name="promo", template_id=template_id)
        session.add(campaign)
    make_trigger(name="enrol", action={"type": "enrol_campaign", "campaign": "promo"})
    with runtime.session() as session:
        outcomes = import_triggers(runtime, session)
    by_name: dict[str, Any] = {o["trigger"]: o for o in outcomes}
    assert "journey_id" in by_name["cart-reminder"]
    assert "campaign" in by_name["enrol"]["skipped"]
    with runtime.session() as session:
        assert session.get(Trigger, trigger).active is False  # type: ignore[union-attr]
        assert session.exec(select(Trigger).where(Trigger.name == "enrol")).one().active
    journey_id = by_name["cart-reminder"]["journey_id"]
    start = datetime.now(UTC)
    clock = [start]
    engine = JourneyEngine(runtime, consumer="converted", block_ms=10, clock=lambda: clock[0])
    engine.ensure_group("0")
    engine.reload()
    buyer, browser = make_contact(), make_contact()
    for contact in (buyer, browser):
        publish("cart_abandoned", contact, occurred_at=start)
    for _ in range(3):
        engine.step()
    publish("purchase", buyer, occurred_at=start + timedelta(minutes=30))
    clock[0] = start + timedelta(hours=2, seconds=1)
    for _ in range(3):
        engine.step()
    engine.close()
    with runtime.session() as session:
        sent = [m.contact_id for m in session.exec(select(Message))]
        reasons = {
            r.contact_id: r.exit_reason
            for r in session.exec(select(JourneyRun).where(JourneyRun.journey_id == journey_id))
        }
    assert sent == [browser]
    assert reasons == {buyer: "exit_conditions", browser: "completed"}
