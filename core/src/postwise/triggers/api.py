"""``/v1/triggers``: define triggers, pause and resume them, read their counters, dry-run events.

Bodies are validated by :func:`~postwise.triggers.definitions.validate_definition`, so the API
rejects exactly what the CLI and Python reject, with the same field paths
(``{"detail": "must be > 0", "field": "conditions.all[1].config.hours"}``, status 422).
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, delete, get, post, put
from litestar.status_codes import HTTP_200_OK, HTTP_204_NO_CONTENT
from sqlmodel import Session

from postwise.runtime import Runtime
from postwise.triggers.compiled import read_invalid
from postwise.triggers.dryrun import dry_run, event_from_json
from postwise.triggers.stats import read_stats
from postwise.triggers.store import TriggerStore, trigger_to_dict

__all__ = ["TriggersController"]


class TriggersController(Controller):
    path = "/v1/triggers"
    tags = ["triggers"]

    @post("/", sync_to_thread=True)
    def create(self, session: Session, runtime: Runtime, data: dict[str, Any]) -> dict[str, Any]:
        """Create a trigger from a definition (see docs/triggers.md)."""
        return trigger_to_dict(TriggerStore(session, runtime).create(data))

    @get("/", sync_to_thread=True)
    def list_triggers(
        self,
        session: Session,
        runtime: Runtime,
        event_type: str | None = None,
        active: bool | None = None,
    ) -> dict[str, Any]:
        """Triggers by event type, highest priority first."""
        rows = TriggerStore(session, runtime).list(event_type=event_type, active=active)
        return {"triggers": [trigger_to_dict(t) for t in rows]}

    @get("/{trigger_id:int}", sync_to_thread=True)
    def show(self, session: Session, runtime: Runtime, trigger_id: int) -> dict[str, Any]:
        return trigger_to_dict(TriggerStore(session, runtime).get(trigger_id))

    @put("/{trigger_id:int}", sync_to_thread=True)
    def replace(
        self, session: Session, runtime: Runtime, trigger_id: int, data: dict[str, Any]
    ) -> dict[str, Any]:
        """Replace a trigger's definition; its id and counters stay."""
        return trigger_to_dict(TriggerStore(session, runtime).replace(trigger_id, data))

    @post("/{trigger_id:int}/pause", sync_to_thread=True, status_code=HTTP_200_OK)
    def pause(self, session: Session, runtime: Runtime, trigger_id: int) -> dict[str, Any]:
        """Stop firing; delayed sends that come due while paused are cancelled."""
        return trigger_to_dict(TriggerStore(session, runtime).set_active(trigger_id, False))

    @post("/{trigger_id:int}/resume", sync_to_thread=True, status_code=HTTP_200_OK)
    def resume(self, session: Session, runtime: Runtime, trigger_id: int) -> dict[str, Any]:
        return trigger_to_dict(TriggerStore(session, runtime).set_active(trigger_id, True))

    @delete("/{trigger_id:int}", sync_to_thread=True, status_code=HTTP_204_NO_CONTENT)
    def remove(self, session: Session, runtime: Runtime, trigger_id: int) -> None:
        """Delete a trigger that has never sent; one that has can only be paused (409)."""
        TriggerStore(session, runtime).delete(trigger_id)

    @get("/{trigger_id:int}/stats", sync_to_thread=True)
    def stats(self, session: Session, runtime: Runtime, trigger_id: int) -> dict[str, Any]:
        """Counters: matched, fired, scheduled, cooldown, capped, skipped, exited, ..."""
        trigger = TriggerStore(session, runtime).get(trigger_id)
        assert trigger.id is not None
        keys = TriggerStore(session, runtime).keys
        counters = read_stats(runtime.redis, keys, [trigger.id])
        return {
            "trigger_id": trigger.id,
            "name": trigger.name,
            "counters": counters[trigger.id],
            # Engines that cannot evaluate it (a condition plugin missing on their host).
            "engine_errors": read_invalid(runtime.redis, keys).get(trigger.id, []),
        }

    @get("/stats", sync_to_thread=True)
    def all_stats(self, session: Session, runtime: Runtime) -> dict[str, Any]:
        """Counters of every trigger."""
        store = TriggerStore(session, runtime)
        triggers = store.list()
        counters = read_stats(runtime.redis, store.keys, [t.id for t in triggers if t.id])
        invalid = read_invalid(runtime.redis, store.keys)
        return {
            "triggers": [
                {
                    "trigger_id": t.id,
                    "name": t.name,
                    "counters": counters[t.id],
                    "engine_errors": invalid.get(t.id, []),
                }
                for t in triggers
                if t.id is not None
            ]
        }

    @post("/test", sync_to_thread=True, status_code=HTTP_200_OK, opt={"scope": "read"})
    def test_event(self, runtime: Runtime, data: dict[str, Any]) -> dict[str, Any]:
        """Dry-run one event: which triggers would fire and what stopped the others."""
        event = event_from_json(data)
        verdicts = dry_run(runtime, event)
        return {
            "event_id": event.event_id,
            "type": event.type,
            "contact_id": event.contact_id,
            "fires": [v.trigger for v in verdicts if v.fires],
            "verdicts": [v.to_dict() for v in verdicts],
        }
