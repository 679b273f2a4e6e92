"""What the last poll and push of each CRM did, and where each CRM's sync stands.

The outcome of the latest run of each kind (``poll``, ``push``, ``webhook``) is kept in Redis
as one small JSON value per CRM and kind: counts, CRM record ids in error messages, never
addresses or names.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlmodel import col, select

from postwise.db.models import CrmLink, CrmSyncState, utcnow
from postwise.plugins import CRM_CONNECTORS

if TYPE_CHECKING:
    from postwise.runtime import Runtime

__all__ = ["RUN_KINDS", "crm_status", "record_failure", "record_run"]

RUN_KINDS = ("poll", "push", "webhook")


def _key(system: str, kind: str) -> str:
    return f"postwise:crm:{system}:last:{kind}"


def record_run(runtime: Runtime, system: str, kind: str, outcome: Mapping[str, Any]) -> None:
    """Remember the outcome of a successful run of ``kind``."""
    value = {"at": utcnow().isoformat(), "ok": True, **outcome}
    runtime.redis.set(_key(system, kind), json.dumps(value, default=str))


def record_failure(runtime: Runtime, system: str, kind: str, error: str) -> None:
    """Remember that a run of ``kind`` failed, and why."""
    value = {"at": utcnow().isoformat(), "ok": False, "error": error[:1000]}
    runtime.redis.set(_key(system, kind), json.dumps(value))


def _last(runtime: Runtime, system: str, kind: str) -> dict[str, Any] | None:
    raw = runtime.redis.get(_key(system, kind))
    if raw is None:
        return None
    loaded: dict[str, Any] = json.loads(raw)
    return loaded


def crm_status(runtime: Runtime, system: str) -> dict[str, Any]:
    """The sync state of ``system``: cursor, links, pending pushes and the latest runs."""
    from postwise.crm.engagement import pending_count
    from postwise.crm.sync import configured_systems

    installed = system in runtime.plugins.registry(CRM_CONNECTORS)
    with runtime.session() as session:
        state = session.get(CrmSyncState, system)
        links = session.exec(
            select(sa.func.count()).select_from(CrmLink).where(col(CrmLink.system) == system)
        ).one()
    return {
        "system": system,
        "configured": system in configured_systems(runtime),
        "installed": installed,
        "cursor": state.cursor if state else None,
        "last_polled_at": state.last_polled_at.isoformat()
        if state and state.last_polled_at
        else None,
        "links": int(links),
        "pending_push": pending_count(runtime, system),
        "last": {kind: _last(runtime, system, kind) for kind in RUN_KINDS},
    }
