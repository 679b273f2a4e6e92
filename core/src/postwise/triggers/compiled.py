"""Triggers compiled for evaluation, indexed by event type.

The engine keeps a :class:`TriggerSet` in memory and reloads it when a trigger changes (the store
bumps a version key in Redis after each commit) or at least every half minute. A trigger whose
definition no longer compiles — its condition plugin was uninstalled, its campaign cancelled —
is kept out of evaluation and reported with the reason, instead of stopping the engine.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from sqlmodel import Session, col, select

from postwise.db.models import Campaign, CampaignStatus, Trigger
from postwise.errors import PostwiseError
from postwise.triggers.definitions import AllOf, compile_conditions

if TYPE_CHECKING:
    from postwise.registry import Registry
    from postwise.triggers.conditions import ConditionType

__all__ = ["CompiledTrigger", "TriggerSet", "compile_trigger", "load_trigger_set"]

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

    @classmethod
    def of(cls, triggers: Sequence[CompiledTrigger]) -> TriggerSet:
        result = cls()
        for trigger in sorted(triggers, key=lambda t: (-t.priority, t.id)):
            result.by_id[trigger.id] = trigger
            if trigger.active and trigger.usable:
                result.by_event_type.setdefault(trigger.event_type, []).append(trigger)
        return result

    def for_event_type(self, event_type: str) -> list[CompiledTrigger]:
        return self.by_event_type.get(event_type, [])


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
