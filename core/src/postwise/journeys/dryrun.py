"""Dry runs of a whole journey for one contact, simulations over a sample, per-step reports.

A dry run writes nothing: it walks the current version from its start for the contact and an
entry event (given, or a made-up one of the entry type), and says for each step what would
happen — which branch is taken (conditions judged now), how long each wait lasts (time moves on
virtually, so quiet hours and local times are computed at the moment the step would run), which
template is sent, where a wait for an event goes if the event comes (``assume_events``) or not.
Delivery's own checks (compliance gate, frequency cap) are not part of it: they depend on what
else is sent meanwhile.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlmodel import Session, col

from postwise.db.models import Contact, JourneyRun
from postwise.errors import NotFoundError
from postwise.journeys.definition import (
    BranchStep,
    CompiledJourney,
    ExitStep,
    SendStep,
    SplitStep,
    UpdateContactStep,
    WaitStep,
    WebhookStep,
    compile_journey,
    parse_journey,
)
from postwise.journeys.engine import _next_local_time, best_hour
from postwise.journeys.store import JourneyKeys, JourneyStore, read_journey_stats
from postwise.triggers.builtin import contact_zone
from postwise.triggers.conditions import TriggerEvent
from postwise.triggers.context import BatchContext, engagement_decay
from postwise.triggers.definitions import ConditionFailed
from postwise.triggers.recent import StreamTail

if TYPE_CHECKING:
    from postwise.runtime import Runtime

__all__ = ["dry_run_journey", "journey_report", "simulate_journey"]


def _compiled(runtime: Runtime, session: Session, ref: int | str) -> CompiledJourney:
    store = JourneyStore(session, runtime)
    journey = store.get(ref)
    assert journey.id is not None
    compiled = compile_journey(
        parse_journey(store.definition(journey)),
        runtime.plugins.registry("conditions"),
        journey_id=journey.id,
        version=journey.version,
    )
    compiled.active = journey.active
    return compiled


def dry_run_journey(
    runtime: Runtime,
    ref: int | str,
    contact_id: int,
    *,
    event: Mapping[str, Any] | None = None,
    assume_events: Iterable[str] = (),
    now: datetime | None = None,
) -> dict[str, Any]:
    """The path ``contact_id`` would take through the journey; nothing is written."""
    now = now or datetime.now(UTC)
    with runtime.session() as session:
        journey = _compiled(runtime, session, ref)
        return _walk(
            runtime,
            session,
            journey,
            contact_id,
            event=event,
            assume=set(assume_events),
            now=now,
        )


def _walk(
    runtime: Runtime,
    session: Session,
    journey: CompiledJourney,
    contact_id: int,
    *,
    event: Mapping[str, Any] | None,
    assume: set[str],
    now: datetime,
    check_entry: bool = True,
) -> dict[str, Any]:
    definition = journey.definition
    raw = dict(event or {})
    trigger_event = TriggerEvent(
        event_id=str(raw.get("event_id") or "dry-run"),
        type=str(raw.get("type") or definition.entry.event_type),
        contact_id=contact_id,
        occurred_at=now,
        properties=raw.get("properties") or {},
    )
    context = BatchContext(
        session,
        [trigger_event],
        now=now,
        score=engagement_decay(runtime.settings),
        recent=StreamTail(runtime.redis),
    )
    contact = context.contacts.get(contact_id)
    result: dict[str, Any] = {
        "journey": definition.name,
        "version": journey.version,
        "contact_id": contact_id,
        "enters": False,
        "path": [],
        "sends": 0,
        "ends": None,
    }
    if contact is None:
        raise NotFoundError(f"no contact with id {contact_id}")
    view = context.for_event(trigger_event)
    if check_entry:
        if trigger_event.type != definition.entry.event_type:
            result["entry"] = f"the journey starts on {definition.entry.event_type!r} events"
            return result
        try:
            blocker = journey.entry_conditions.blocker(trigger_event, view)
        except ConditionFailed as failed:
            result["entry"] = f"an entry condition raised: {failed.error!r}"
            return result
        if blocker is not None:
            result["entry"] = f"entry condition not met: {blocker.explain()}"
            return result
        inside = session.execute(
            sa.select(col(JourneyRun.status), col(JourneyRun.entered_at)).where(
                col(JourneyRun.journey_id) == journey.id, col(JourneyRun.contact_id) == contact_id
            )
        ).all()
        if any(status == "active" for status, _ in inside):
            result["entry"] = "already inside the journey"
            return result
        every = definition.reentry_seconds
        if inside and every is None:
            result["entry"] = "entered before, and the journey is entered once"
            return result
        if inside and every:
            last = max(entered.replace(tzinfo=entered.tzinfo or UTC) for _, entered in inside)
            if now - last < timedelta(seconds=every):
                result["entry"] = f"entered on {last.isoformat()}; re-entry every {every} s"
                return result
    result["enters"] = True
    if not journey.active:
        result["entry"] = "the journey is paused: no one enters now"
        result["enters"] = False
        return result
    at = now
    current: str | None = definition.start_step
    seen: Counter[str] = Counter()
    while current is not None:
        seen[current] += 1
        if seen[current] > 3 or len(result["path"]) > 100:
            result["path"].append({"step": current, "does": "loops (shown three times)"})
            result["ends"] = "loop"
            return result
        step = journey.steps[current]
        entry: dict[str, Any] = {"step": step.id, "type": step.type, "at": at.isoformat()}
        result["path"].append(entry)
        nxt: str | None = None
        if isinstance(step, WaitStep):
            if step.duration is not None:
                assert isinstance(step.duration, int)
                at += timedelta(seconds=step.duration)
                entry["does"] = f"waits {step.duration} s"
                nxt = step.next
            elif step.until_local_time is not None:
                at = _next_local_time(at, step.until_local_time, contact)
                entry["does"] = f"waits until {step.until_local_time} in {contact_zone(contact)}"
                nxt = step.next
            elif step.until_best_hour is not None:
                best = best_hour(context, trigger_event, step.until_best_hour, now, contact)
                at = _next_local_time(at, best, contact)
                entry["does"] = (
                    f"waits until {best} in {contact_zone(contact)} (the contact's most engaged "
                    f"hour, or the fallback {step.until_best_hour.fallback})"
                )
                nxt = step.next
            else:
                assert step.for_event is not None and isinstance(step.timeout, int)
                if step.for_event.type in assume:
                    entry["does"] = f"waits for {step.for_event.type!r}; it comes (assumed)"
                    nxt = step.next
                else:
                    at += timedelta(seconds=step.timeout)
                    entry["does"] = (
                        f"waits up to {step.timeout} s for {step.for_event.type!r}; it does "
                        "not come (pass assume_events to follow the other path)"
                    )
                    nxt = step.timeout_next
        elif isinstance(step, SendStep):
            held = None
            if journey.quiet is not None and not step.ignore_quiet_hours:
                held = journey.quiet.hold_until(at, contact_zone(contact))
            if held is not None:
                entry["does"] = f"sends template {step.template} when quiet hours end"
                at = held
            else:
                entry["does"] = f"sends template {step.template}"
            entry["send_at"] = at.isoformat()
            result["sends"] += 1
            nxt = step.next
        elif isinstance(step, BranchStep):
            try:
                blocker = journey.branch_conditions[step.id].blocker(trigger_event, view)
            except ConditionFailed as failed:
                entry["does"] = f"a condition raised ({failed.error!r}): takes 'else'"
                blocker = failed.leaf
            taken = blocker is None
            entry["does"] = f"takes {'then' if taken else 'else'}" + (
                "" if taken or blocker is None else f" ({blocker.explain()} is false)"
            )
            nxt = step.then if taken else step.else_
        elif isinstance(step, SplitStep):
            weights = [p.weight for p in step.paths]
            entry["does"] = "random split: " + ", ".join(
                f"{p.next} {100 * p.weight / sum(weights):.0f}%" for p in step.paths
            )
            nxt = step.paths[_pick(contact_id, step)].next
        elif isinstance(step, UpdateContactStep):
            entry["does"] = "updates the contact"
            nxt = step.next
        elif isinstance(step, WebhookStep):
            entry["does"] = f"calls {step.url}"
            nxt = step.next
        elif isinstance(step, ExitStep):
            result["ends"] = step.reason
            return result
        current = nxt
    result["ends"] = "completed"
    if definition.goal is not None:
        result["goal"] = f"leaves at once, converted, on a {definition.goal.event!r} event"
    return result


def _pick(contact_id: int, step: SplitStep) -> int:
    rng = random.Random(f"{contact_id}:{step.id}")
    point = rng.random() * sum(p.weight for p in step.paths)
    for index, path in enumerate(step.paths):
        point -= path.weight
        if point < 0:
            return index
    return len(step.paths) - 1


def simulate_journey(
    runtime: Runtime, ref: int | str, *, sample: int = 1000, seed: int = 7
) -> dict[str, Any]:
    """Dry-run the journey for a random sample of contacts; counts per step and outcome."""
    with runtime.session() as session:
        journey = _compiled(runtime, session, ref)
        ids = [row[0] for row in session.execute(sa.select(col(Contact.id)))]
        chosen = random.Random(seed).sample(ids, min(sample, len(ids)))
        visits: Counter[str] = Counter()
        ends: Counter[str] = Counter()
        entries: Counter[str] = Counter()
        sends = 0
        now = datetime.now(UTC)
        for contact_id in chosen:
            walked = _walk(runtime, session, journey, contact_id, event=None, assume=set(), now=now)
            if not walked["enters"]:
                entries[str(walked.get("entry", "not entered"))[:80]] += 1
                continue
            entries["enters"] += 1
            for item in walked["path"]:
                visits[item["step"]] += 1
            ends[str(walked["ends"])] += 1
            sends += walked["sends"]
    return {
        "journey": journey.name,
        "version": journey.version,
        "sample": len(chosen),
        "entry": dict(entries),
        "steps": dict(visits),
        "ends": dict(ends),
        "sends": sends,
    }


def journey_report(runtime: Runtime, ref: int | str) -> dict[str, Any]:
    """Per step: entered, waiting now, sent, opened, clicked, converted, exited; the goal."""
    keys = JourneyKeys()
    with runtime.session() as session:
        journey = _compiled(runtime, session, ref)
        waiting = dict(
            session.execute(
                sa.select(col(JourneyRun.step), sa.func.count())
                .where(col(JourneyRun.journey_id) == journey.id, col(JourneyRun.status) == "active")
                .group_by(col(JourneyRun.step))
            ).all()
        )
        exits = dict(
            session.execute(
                sa.select(col(JourneyRun.exit_reason), sa.func.count())
                .where(col(JourneyRun.journey_id) == journey.id, col(JourneyRun.status) == "done")
                .group_by(col(JourneyRun.exit_reason))
            ).all()
        )
    counters = read_journey_stats(runtime.redis, keys, [journey.id])[journey.id]
    steps = []
    for step in journey.definition.steps:
        prefix = f"{step.id}:"
        own = {k[len(prefix) :]: v for k, v in counters.items() if k.startswith(prefix)}
        steps.append(
            {
                "step": step.id,
                "type": step.type,
                "entered": own.pop("entered", 0),
                "waiting_now": int(waiting.get(step.id, 0)),
                "sent": own.pop("sent", 0),
                "opened": own.pop("opened", 0),
                "clicked": own.pop("clicked", 0),
                "converted": own.pop("converted", 0),
                "exited": own.pop("exited", 0),
                "other": own,
            }
        )
    entered = counters.get("journey:entered", 0)
    converted = counters.get("goal:converted", 0)
    return {
        "journey": journey.name,
        "version": journey.version,
        "entered": entered,
        "inside_now": int(sum(waiting.values())),
        "exited_by_reason": {str(k): int(v) for k, v in exits.items()},
        "goal": {
            "event": journey.definition.goal.event if journey.definition.goal else None,
            "converted": converted,
            "conversion_rate": round(converted / entered, 4) if entered else None,
        },
        "steps": steps,
    }
