"""Create, read, change and delete triggers (the ``trigger`` table).

Every write validates the whole definition first (:func:`validate_definition`) and, once the
session commits, bumps the trigger version in Redis so running engines reload at once.

Python use::

    with runtime.session() as session:
        store = TriggerStore(session, runtime)
        trigger = store.create({"name": "welcome", "event_type": "signup",
                                "action": {"type": "send_template", "template": "welcome"}})
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from postwise.db.models import Message, Trigger, utcnow
from postwise.errors import ConflictError, NotFoundError
from postwise.plugins import CONDITIONS
from postwise.triggers.cooldown import TriggerKeys
from postwise.triggers.definitions import TriggerDefinition, ValidatedTrigger, validate_definition
from postwise.triggers.stats import reset_stats

if TYPE_CHECKING:
    from postwise.runtime import Runtime

__all__ = ["TriggerStore", "trigger_to_dict"]

_BUMP_FLAG = "postwise.triggers.bump"


def trigger_to_dict(trigger: Trigger) -> dict[str, Any]:
    """The stored trigger as a definition (re-submittable) plus id and timestamps."""
    action = dict(trigger.action or {})
    return {
        "id": trigger.id,
        "name": trigger.name,
        "event_type": trigger.event_type,
        "conditions": trigger.conditions or {},
        "action": action,
        "delay": trigger.delay_seconds,
        "cooldown": trigger.cooldown_seconds,
        "priority": trigger.priority,
        "active": trigger.active,
        "exit_conditions": trigger.exit_conditions or None,
        "transactional": trigger.transactional,
        "experiment_id": trigger.experiment_id,
        "created_at": trigger.created_at.isoformat() if trigger.created_at else None,
        "updated_at": trigger.updated_at.isoformat() if trigger.updated_at else None,
    }


class TriggerStore:
    """Trigger CRUD on one session; ``runtime`` gives the condition registry and Redis."""

    def __init__(
        self, session: Session, runtime: Runtime, *, keys: TriggerKeys | None = None
    ) -> None:
        self.session = session
        self.runtime = runtime
        self.keys = keys or TriggerKeys()

    @property
    def _registry(self) -> Any:
        return self.runtime.plugins.registry(CONDITIONS)

    def create(self, data: Mapping[str, Any] | TriggerDefinition) -> Trigger:
        """Validate and store a new trigger; a taken name is a ConflictError."""
        validated = validate_definition(data, registry=self._registry, session=self.session)
        definition = validated.definition
        if self._by_name(definition.name) is not None:
            raise ConflictError(
                f"a trigger called {definition.name!r} already exists; choose another name or "
                "update that one"
            )
        trigger = Trigger(name=definition.name, event_type=definition.event_type)
        self._apply(trigger, validated)
        self.session.add(trigger)
        self.session.flush()
        self._bump_on_commit()
        return trigger

    def replace(self, ref: int | str, data: Mapping[str, Any] | TriggerDefinition) -> Trigger:
        """Replace the definition of an existing trigger (its id and counters stay)."""
        trigger = self.get(ref)
        validated = validate_definition(data, registry=self._registry, session=self.session)
        other = self._by_name(validated.definition.name)
        if other is not None and other.id != trigger.id:
            raise ConflictError(f"a trigger called {validated.definition.name!r} already exists")
        trigger.name = validated.definition.name
        trigger.event_type = validated.definition.event_type
        self._apply(trigger, validated)
        self.session.add(trigger)
        self.session.flush()
        self._bump_on_commit()
        return trigger

    def get(self, ref: int | str) -> Trigger:
        """The trigger with id or name ``ref``."""
        trigger: Trigger | None = None
        if isinstance(ref, int) or ref.isdigit():
            trigger = self.session.get(Trigger, int(ref))
        if trigger is None and isinstance(ref, str):
            trigger = self._by_name(ref)
        if trigger is None:
            raise NotFoundError(f"no trigger {ref!r}; `postwise triggers list` shows them all")
        return trigger

    def list(self, *, event_type: str | None = None, active: bool | None = None) -> list[Trigger]:
        """Triggers ordered by event type, then priority (highest first), then id."""
        query = select(Trigger)
        if event_type is not None:
            query = query.where(Trigger.event_type == event_type)
        if active is not None:
            query = query.where(Trigger.active == active)
        query = query.order_by(
            col(Trigger.event_type), col(Trigger.priority).desc(), col(Trigger.id)
        )
        return list(self.session.exec(query).all())

    def set_active(self, ref: int | str, active: bool) -> Trigger:
        """Pause (``False``) or resume (``True``) a trigger."""
        trigger = self.get(ref)
        if trigger.active != active:
            trigger.active = active
            trigger.updated_at = utcnow()
            self.session.add(trigger)
            self.session.flush()
            self._bump_on_commit()
        return trigger

    def delete(self, ref: int | str) -> None:
        """Delete a trigger that never sent anything; one with messages can only be paused."""
        trigger = self.get(ref)
        sent = self.session.execute(
            sa.select(sa.func.count())
            .select_from(Message)
            .where(col(Message.trigger_id) == trigger.id)
        ).scalar_one()
        if sent:
            raise ConflictError(
                f"trigger {trigger.name!r} has {sent} messages in the ledger, which refer to it; "
                "pause it instead (postwise triggers pause)"
            )
        trigger_id = trigger.id
        self.session.delete(trigger)
        self.session.flush()
        self._bump_on_commit()
        assert trigger_id is not None
        sa.event.listen(
            self.session,
            "after_commit",
            lambda _s: reset_stats(self.runtime.redis, self.keys, trigger_id),
            once=True,
        )

    def _apply(self, trigger: Trigger, validated: ValidatedTrigger) -> None:
        definition: TriggerDefinition = validated.definition
        trigger.conditions = validated.conditions
        trigger.exit_conditions = validated.exit_conditions
        trigger.action = validated.action
        trigger.delay_seconds = definition.delay_seconds
        trigger.cooldown_seconds = definition.cooldown_seconds
        trigger.priority = definition.priority
        trigger.active = definition.active
        trigger.transactional = validated.transactional
        trigger.experiment_id = definition.experiment_id
        trigger.updated_at = utcnow()

    def _by_name(self, name: str) -> Trigger | None:
        return self.session.exec(select(Trigger).where(Trigger.name == name)).first()

    def _bump_on_commit(self) -> None:
        # Bumping before the commit could let an engine reload, miss the change and then not
        # reload again: so bump once the change is visible.
        if self.session.info.get(_BUMP_FLAG):
            return
        self.session.info[_BUMP_FLAG] = True
        redis = self.runtime.redis
        key = self.keys.version

        def bump(session: Session) -> None:
            session.info.pop(_BUMP_FLAG, None)
            redis.incr(key)

        sa.event.listen(self.session, "after_commit", bump, once=True)
