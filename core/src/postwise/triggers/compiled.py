"""Triggers compiled for evaluation, indexed by event type.

The engine keeps a :class:`TriggerSet` in memory and reloads it when a trigger changes (the store
bumps a version key in Redis after each commit) or at least every half minute. A trigger whose
definition no longer compiles — its condition plugin was uninstalled, its campaign cancelled —
is kept out of evaluation and reported with the reason, instead of stopping the engine.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlmodel import Session, col, select

from postwise.db.models import Campaign, CampaignStatus, Trigger
from postwise.errors import PostwiseError
from postwise.triggers.definitions import AllOf, compile_conditions

if TYPE_CHECKING:
    import redis

    from postwise.registry import Registry
    from postwise.triggers.conditions import ConditionType
    from postwise.triggers.cooldown import TriggerKeys

__all__ = [
    "INVALID_REPORT_SECONDS",
    "CompiledTrigger",
    "TriggerSet",
    "compile_trigger",
    "load_trigger_set",
    "read_invalid",
    "report_invalid",
]

#: An engine's report that it cannot evaluate a trigger counts for this long (engines reload,
#: and so re-report, at least every 30 seconds).
INVALID_REPORT_SECONDS = 120

log = logging.getLogger(__name__)


@dataclass(slots=True)
class CompiledTrigger:
    """A trigger ready to evaluate: parsed condition trees and a resolved action."""

    id: int
    name: str
    event_type: str
    priority: int
    active: bool
    transactional: bool
    delay_seconds: int
    cooldown_seconds: int
    template_id: int | None
    campaign_id: int | None
    experiment_id: int | None
    conditions: AllOf | None
    exit_conditions: AllOf | None
    error: str | None = None
    #: The consent purpose the action's sends need (``action.consent_purpose``), if any.
    consent_purpose: str | None = None

    @property
    def usable(self) -> bool:
        return self.error is None and self.conditions is not None and self.template_id is not None


def compile_trigger(
    trigger: Trigger,
    registry: Registry[ConditionType[Any]],
    campaigns: dict[int, Campaign] | None = None,
) -> CompiledTrigger:
    """Compile one stored trigger; a definition that no longer compiles sets ``error``."""
    assert trigger.id is not None
    action = trigger.action or {}
    compiled = CompiledTrigger(
        id=trigger.id,
        name=trigger.name,
        event_type=trigger.event_type,
        priority=trigger.priority,
        active=trigger.active,
        transactional=trigger.transactional,
        delay_seconds=trigger.delay_seconds,
        cooldown_seconds=trigger.cooldown_seconds,
        template_id=action.get("template_id"),
        campaign_id=action.get("campaign_id"),
        experiment_id=trigger.experiment_id,
        conditions=None,
        exit_conditions=None,
        consent_purpose=action.get("consent_purpose"),
    )
    try:
        compiled.conditions = compile_conditions(trigger.conditions, registry)
        if trigger.exit_conditions:
            compiled.exit_conditions = compile_conditions(
                trigger.exit_conditions, registry, field="exit_conditions"
            )
    except PostwiseError as exc:
        compiled.error = f"definition no longer valid: {exc}"
        return compiled
    if compiled.campaign_id is not None:
        campaign = (campaigns or {}).get(compiled.campaign_id)
        if campaign is None:
            compiled.error = f"campaign {compiled.campaign_id} no longer exists"
        elif campaign.status == CampaignStatus.CANCELLED:
            compiled.error = f"campaign {campaign.name!r} was cancelled"
        elif compiled.consent_purpose is not None:
            # Stored before enrol_campaign refused it: the campaign's list decides the consent.
            compiled.error = (
                "an enrol_campaign action cannot name a consent_purpose (the campaign's list "
                "decides it); remove action.consent_purpose"
            )
        else:
            compiled.template_id = campaign.template_id
            if compiled.experiment_id is None:
                compiled.experiment_id = campaign.experiment_id
    if compiled.template_id is None and compiled.error is None:
        compiled.error = "the action names no template"
    return compiled


@dataclass(slots=True)
class TriggerSet:
    """Every trigger by id, and the usable active ones per event type, highest priority first."""

    by_id: dict[int, CompiledTrigger] = field(default_factory=dict)
    by_event_type: dict[str, list[CompiledTrigger]] = field(default_factory=dict)
    #: Active triggers whose definition does not compile on this host, by event type.
    invalid_by_event_type: dict[str, list[CompiledTrigger]] = field(default_factory=dict)

    @classmethod
    def of(cls, triggers: Sequence[CompiledTrigger]) -> TriggerSet:
        result = cls()
        for trigger in sorted(triggers, key=lambda t: (-t.priority, t.id)):
            result.by_id[trigger.id] = trigger
            if trigger.active and trigger.usable:
                result.by_event_type.setdefault(trigger.event_type, []).append(trigger)
            elif trigger.active:
                result.invalid_by_event_type.setdefault(trigger.event_type, []).append(trigger)
        return result

    def for_event_type(self, event_type: str) -> list[CompiledTrigger]:
        return self.by_event_type.get(event_type, [])

    def invalid_for_event_type(self, event_type: str) -> list[CompiledTrigger]:
        return self.invalid_by_event_type.get(event_type, [])

    @property
    def invalid(self) -> list[CompiledTrigger]:
        return [t for ts in self.invalid_by_event_type.values() for t in ts]


def load_trigger_set(session: Session, registry: Registry[ConditionType[Any]]) -> TriggerSet:
    """Load and compile every trigger (active or paused) in two queries."""
    triggers = list(session.exec(select(Trigger)).all())
    campaign_ids = {
        t.action.get("campaign_id") for t in triggers if (t.action or {}).get("campaign_id")
    }
    campaigns: dict[int, Campaign] = {}
    if campaign_ids:
        query = select(Campaign).where(col(Campaign.id).in_(campaign_ids))
        campaigns = {c.id: c for c in session.exec(query) if c.id is not None}
    compiled = [compile_trigger(t, registry, campaigns) for t in triggers]
    for trigger in compiled:
        if trigger.error and trigger.active:
            log.error("trigger %r (id %s) is skipped: %s", trigger.name, trigger.id, trigger.error)
    return TriggerSet.of(compiled)


def report_invalid(
    client: redis.Redis, keys: TriggerKeys, consumer: str, triggers: TriggerSet
) -> None:
    """Record, for the API and the CLI, which active triggers this engine cannot evaluate.

    The hash ``…:invalid`` has a field ``<trigger id>|<consumer>`` per (trigger, engine) with
    the reason and when it was reported; a trigger that compiles again clears its fields.
    """
    now = time.time()
    pipe = client.pipeline(transaction=False)
    for trigger in triggers.by_id.values():
        field_name = f"{trigger.id}|{consumer}"
        if trigger.active and not trigger.usable:
            report = {"consumer": consumer, "error": trigger.error, "at": now}
            pipe.hset(keys.invalid, field_name, json.dumps(report))
        else:
            pipe.hdel(keys.invalid, field_name)
    pipe.execute()


def read_invalid(client: redis.Redis, keys: TriggerKeys) -> dict[int, list[dict[str, Any]]]:
    """Recent engine reports of triggers they cannot evaluate, by trigger id."""
    found: dict[int, list[dict[str, Any]]] = {}
    cutoff = time.time() - INVALID_REPORT_SECONDS
    raw: Any = client.hgetall(keys.invalid)
    for name, value in raw.items():
        text = name.decode() if isinstance(name, bytes) else str(name)
        trigger_id, _, _consumer = text.partition("|")
        try:
            report = json.loads(value)
        except ValueError:
            continue
        if float(report.get("at", 0)) >= cutoff and trigger_id.isdigit():
            found.setdefault(int(trigger_id), []).append(report)
    return found
