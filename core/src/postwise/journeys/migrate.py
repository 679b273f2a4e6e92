"""Triggers as journeys: the journey a trigger is, and moving triggers over.

A trigger is the one-step journey "on EVENT if CONDITIONS: [wait DELAY; unless EXIT_CONDITIONS]
send TEMPLATE", re-entered at most once per COOLDOWN. :func:`trigger_as_journey` writes that
journey; :func:`import_triggers` saves one per trigger and pauses the trigger in the same
transaction, so from the commit on exactly one of them handles each new event (their dedupe keys
differ: running both would send twice).

A trigger is left as it is, with the reason, when the journey could not do the same: it enrols
in a campaign (journeys send templates; campaign attribution is the trigger's), sends through an
experiment, or still has delayed sends scheduled (pausing it would cancel them: import it once
they have gone).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlmodel import Session, col, select

from postwise.db.models import Trigger
from postwise.errors import ConflictError, PostwiseError
from postwise.journeys.store import JourneyStore
from postwise.triggers.cooldown import TriggerKeys
from postwise.triggers.store import TriggerStore

if TYPE_CHECKING:
    from postwise.runtime import Runtime

__all__ = ["import_triggers", "trigger_as_journey"]


def trigger_as_journey(trigger: Trigger, quiet_hours: str = "") -> dict[str, Any]:
    """The journey definition that does what ``trigger`` does (see the module docs)."""
    action = trigger.action or {}
    if action.get("type") != "send_template" or not action.get("template_id"):
        raise PostwiseError("it enrols in a campaign; journeys send templates")
    if trigger.experiment_id is not None:
        raise PostwiseError("it sends through an experiment")
    steps: list[dict[str, Any]] = []
    send: dict[str, Any] = {"id": "send", "type": "send", "template": action["template_id"]}
    if action.get("consent_purpose"):
        send["consent_purpose"] = action["consent_purpose"]
    if trigger.transactional:
        send["ignore_quiet_hours"] = True
    if trigger.delay_seconds:
        after_wait = "exit?" if trigger.exit_conditions else "send"
        steps.append(
            {"id": "delay", "type": "wait", "duration": trigger.delay_seconds, "next": after_wait}
        )
        if trigger.exit_conditions:
            steps.append(
                {
                    "id": "exit?",
                    "type": "branch",
                    "conditions": trigger.exit_conditions,
                    "then": "exited",
                    "else": "send",
                }
            )
    steps.append(send)
    if trigger.delay_seconds and trigger.exit_conditions:
        steps.append({"id": "exited", "type": "exit", "reason": "exit_conditions"})
    definition: dict[str, Any] = {
        "name": f"trigger:{trigger.name}"[:200],
        "entry": {"event": trigger.event_type, "conditions": trigger.conditions or {}},
        "reentry": {"every": trigger.cooldown_seconds} if trigger.cooldown_seconds else "always",
        "priority": trigger.priority,
        "steps": steps,
    }
    if quiet_hours.strip() and not trigger.transactional:
        definition["quiet_hours"] = quiet_hours
    return definition


def _scheduled(runtime: Runtime, trigger_id: int) -> int:
    keys = TriggerKeys()
    return sum(
        1 for _member in runtime.redis.zscan_iter(keys.scheduled, match=f"trigger:{trigger_id}:*")
    )


def import_triggers(
    runtime: Runtime, session: Session, refs: list[str] | None = None
) -> list[dict[str, Any]]:
    """Save a journey for each active trigger (or those named) and pause the trigger; the
    outcome of each: ``{"trigger", "journey_id"}`` or ``{"trigger", "skipped": reason}``."""
    triggers = TriggerStore(session, runtime)
    journeys = JourneyStore(session, runtime)
    if refs:
        chosen = [triggers.get(ref) for ref in refs]
    else:
        chosen = list(
            session.exec(select(Trigger).where(col(Trigger.active)).order_by(col(Trigger.id)))
        )
    outcomes: list[dict[str, Any]] = []
    for trigger in chosen:
        assert trigger.id is not None
        try:
            definition = trigger_as_journey(trigger, runtime.settings.quiet_hours)
            pending = _scheduled(runtime, trigger.id)
            if pending:
                raise PostwiseError(
                    f"{pending} delayed sends are still scheduled; pausing it would cancel them"
                )
            # create() checks everything before it writes: a refusal leaves nothing behind.
            journey = journeys.create(definition)
            triggers.set_active(trigger.id, False)
        except (PostwiseError, ConflictError) as exc:
            outcomes.append({"trigger": trigger.name, "skipped": str(exc)})
            continue
        outcomes.append({"trigger": trigger.name, "journey_id": journey.id})
    return outcomes
