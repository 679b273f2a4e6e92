"""Dry runs: which triggers one event would fire, and for the others what stopped them.

Nothing is written: cooldowns are looked at, not claimed; nothing is submitted. Delivery's own
checks (compliance gate, frequency cap) are not part of the verdict, because they depend on what
else is sent before the event really arrives.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from postwise.errors import ValidationError
from postwise.events import EventEnvelope
from postwise.plugins import CONDITIONS
from postwise.triggers.builtin import contact_zone
from postwise.triggers.compiled import CompiledTrigger, load_trigger_set
from postwise.triggers.conditions import TriggerEvent
from postwise.triggers.context import BatchContext, engagement_decay
from postwise.triggers.cooldown import TriggerKeys, peek
from postwise.triggers.definitions import ConditionFailed, Leaf
from postwise.triggers.engine import dedupe_key, to_trigger_event
from postwise.triggers.quiet_hours import QuietHours
from postwise.triggers.recent import StreamTail

if TYPE_CHECKING:
    from postwise.runtime import Runtime

__all__ = ["Verdict", "dry_run", "event_from_json"]


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one trigger would do with the event.

    ``outcome`` is one of ``fire``, ``schedule``, ``stopped`` (a condition was false),
    ``cooldown``, ``error`` (a condition raised), ``paused``, ``invalid`` (the definition no
    longer compiles) and ``no_contact``.
    """

    trigger_id: int
    trigger: str
    priority: int
    outcome: str
    detail: str
    condition: str | None = None
    send_at: datetime | None = None

    @property
    def fires(self) -> bool:
        return self.outcome in ("fire", "schedule")

    def to_dict(self) -> dict[str, Any]:
        return {
            "trigger_id": self.trigger_id,
            "trigger": self.trigger,
            "priority": self.priority,
            "outcome": self.outcome,
            "fires": self.fires,
            "detail": self.detail,
            "condition": self.condition,
            "send_at": self.send_at.isoformat() if self.send_at else None,
        }


def event_from_json(data: Mapping[str, Any]) -> TriggerEvent:
    """An event from JSON: an event envelope, where ``event_id`` and ``occurred_at`` may be
    left out (a dry-run id and now)."""
    if not isinstance(data, Mapping):
        raise ValidationError("the event must be a JSON object")
    raw = dict(data)
    raw.setdefault("event_id", "dry-run")
    raw.setdefault("occurred_at", datetime.now(UTC).isoformat())
    if not isinstance(raw.get("type"), str) or not raw["type"]:
        raise ValidationError("is required: the event type, e.g. 'cart_abandoned'", field="type")
    if not isinstance(raw.get("contact_id"), int):
        raise ValidationError("is required: the id of the contact (an integer)", field="contact_id")
    try:
        envelope = EventEnvelope.from_dict(raw)
    except (TypeError, ValueError) as exc:
        raise ValidationError(f"not a valid event: {exc}") from None
    event = to_trigger_event(envelope)
    assert event is not None
    return event


def dry_run(
    runtime: Runtime,
    event: TriggerEvent,
    *,
    keys: TriggerKeys | None = None,
    now: datetime | None = None,
) -> list[Verdict]:
    """The verdict of every trigger on the event's type, highest priority first."""
    keys = keys or TriggerKeys()
    now = now or datetime.now(UTC)
    quiet = QuietHours.parse(runtime.settings.quiet_hours)
    registry = runtime.plugins.registry(CONDITIONS)
    with runtime.session() as session:
        triggers = load_trigger_set(session, registry)
        context = BatchContext(
            session,
            [event],
            now=now,
            score=engagement_decay(runtime.settings),
            recent=StreamTail(runtime.redis),
        )
        candidates = sorted(
            (t for t in triggers.by_id.values() if t.event_type == event.type),
            key=lambda t: (-t.priority, t.id),
        )
        contact = context.contacts.get(event.contact_id)
        verdicts = []
        for trigger in candidates:
            if contact is None:
                verdicts.append(
                    _verdict(trigger, "no_contact", f"no contact with id {event.contact_id}")
                )
                continue
            verdicts.append(
                _judge(
                    runtime,
                    trigger,
                    event=event,
                    context=context,
                    contact=contact,
                    quiet=quiet,
                    keys=keys,
                    now=now,
                )
            )
    return verdicts


def _verdict(trigger: CompiledTrigger, outcome: str, detail: str, **extra: Any) -> Verdict:
    return Verdict(trigger.id, trigger.name, trigger.priority, outcome, detail, **extra)


def _judge(
    runtime: Runtime,
    trigger: CompiledTrigger,
    *,
    event: TriggerEvent,
    context: BatchContext,
    contact: Mapping[str, Any],
    quiet: QuietHours | None,
    keys: TriggerKeys,
    now: datetime,
) -> Verdict:
    if not trigger.usable or trigger.conditions is None:
        return _verdict(trigger, "invalid", trigger.error or "definition does not compile")
    if not trigger.active:
        return _verdict(trigger, "paused", "the trigger is paused")
    try:
        blocker = trigger.conditions.blocker(event, context.for_event(event))
    except ConditionFailed as failed:
        return _verdict(
            trigger,
            "error",
            f"condition {failed.leaf.condition.name!r} (plugin {failed.leaf.plugin!r}) raised "
            f"{type(failed.error).__name__}: {failed.error}",
            condition=failed.leaf.path,
        )
    if blocker is not None:
        what = blocker.explain()
        kind = "condition" if isinstance(blocker, Leaf) else "condition group"
        return _verdict(trigger, "stopped", f"{kind} not met: {what}", condition=blocker.path)
    key = (
        keys.cooldown(trigger.id, event.contact_id)
        if trigger.cooldown_seconds
        else keys.event(trigger.id, event.event_id)
    )
    holder, ttl_ms = peek(runtime.redis, key)
    if holder is not None:
        until = now + timedelta(milliseconds=ttl_ms)
        # A delayed send holds the cooldown from when it is scheduled; it has not fired (and
        # gives the cooldown back if its exit conditions cancel it).
        pending = runtime.redis.zscore(keys.scheduled, dedupe_key(trigger.id, holder))
        if holder == event.event_id:
            detail = (
                "a send is already scheduled for this event"
                if pending is not None
                else "already fired for this event"
            )
        elif pending is not None:
            due = datetime.fromtimestamp(float(pending) / 1000, UTC)
            detail = (
                f"held by cooldown until {until.isoformat(timespec='seconds')} (a send for event "
                f"{holder} is scheduled for {due.isoformat(timespec='seconds')}; it gives the "
                "cooldown back if it is cancelled)"
            )
        else:
            detail = (
                f"held by cooldown until {until.isoformat(timespec='seconds')} "
                f"(fired for event {holder})"
            )
        return _verdict(trigger, "cooldown", detail)
    due = now + timedelta(seconds=trigger.delay_seconds)
    held = None
    if quiet is not None and not trigger.transactional:
        held = quiet.hold_until(due, contact_zone(contact))
    send_at = held or due
    if trigger.delay_seconds:
        detail = f"schedules the send for {send_at.isoformat(timespec='seconds')}"
        if trigger.exit_conditions is not None:
            detail += f", cancelled then if {trigger.exit_conditions.explain()}"
    else:
        detail = "sends now" if held is None else "sends when quiet hours end"
    if held is not None:
        detail += " (quiet hours in the contact's time zone)"
    return _verdict(
        trigger, "schedule" if trigger.delay_seconds else "fire", detail, send_at=send_at
    )
