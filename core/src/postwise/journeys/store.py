"""Saving journeys: validated, versioned; and the Redis keys and counters of the subsystem.

Every save of a journey's definition makes a new version; new entrants get the latest, contacts
already inside stay on the version they entered — unless :meth:`JourneyStore.migrate` moves them
with an explicit mapping of old step ids to new ones (runs at steps the mapping does not name
stay where they are).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import redis
import sqlalchemy as sa
from sqlmodel import Session, col, select

from postwise.db.models import Journey, JourneyRun, JourneyVersion, utcnow
from postwise.errors import ConflictError, NotFoundError, ValidationError
from postwise.journeys.definition import parse_journey, validate_journey

if TYPE_CHECKING:
    from postwise.runtime import Runtime

__all__ = [
    "JourneyKeys",
    "JourneyStore",
    "journey_to_dict",
    "read_journey_stats",
]


@dataclass(frozen=True, slots=True)
class JourneyKeys:
    namespace: str = "postwise:journeys"

    @property
    def due(self) -> str:
        """Sorted set: run id -> when it must be looked at again (ms)."""
        return f"{self.namespace}:due"

    @property
    def version(self) -> str:
        return f"{self.namespace}:version"

    def stats(self, journey_id: int) -> str:
        return f"{self.namespace}:stats:{journey_id}"

    def message(self, message_id: str) -> str:
        """Which journey and step sent a message (for per-step opens and clicks)."""
        return f"{self.namespace}:msg:{message_id}"


def journey_to_dict(journey: Journey, definition: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "id": journey.id,
        "name": journey.name,
        "active": journey.active,
        "version": journey.version,
        "definition": dict(definition),
        "created_at": journey.created_at.isoformat() if journey.created_at else None,
        "updated_at": journey.updated_at.isoformat() if journey.updated_at else None,
    }


class JourneyStore:
    """Journey CRUD on one session; bumps the version key after commit so engines reload."""

    def __init__(self, session: Session, runtime: Runtime, *, keys: JourneyKeys | None = None):
        self.session = session
        self.runtime = runtime
        self.keys = keys or JourneyKeys()

    @property
    def _registry(self) -> Any:
        return self.runtime.plugins.registry("conditions")

    def _validated(self, data: Mapping[str, Any]) -> dict[str, Any]:
        definition = validate_journey(data, self._registry, self.session)
        return definition.model_dump(mode="json", by_alias=True, exclude_none=True)

    def create(self, data: Mapping[str, Any]) -> Journey:
        stored = self._validated(data)
        if self._by_name(stored["name"]) is not None:
            raise ConflictError(
                f"a journey called {stored['name']!r} already exists; choose another name or "
                "save a new version of it (PUT /v1/journeys/{id}, postwise journeys create "
                "--replace)"
            )
        journey = Journey(name=stored["name"], active=stored.get("active", True), version=1)
        self.session.add(journey)
        self.session.flush()
        assert journey.id is not None
        self.session.add(JourneyVersion(journey_id=journey.id, version=1, definition=stored))
        self.session.flush()
        self._bump_on_commit()
        return journey

    def replace(self, ref: int | str, data: Mapping[str, Any]) -> Journey:
        """Save a new version; new entrants get it, contacts inside stay on theirs."""
        journey = self.get(ref)
        stored = self._validated(data)
        other = self._by_name(stored["name"])
        if other is not None and other.id != journey.id:
            raise ConflictError(f"a journey called {stored['name']!r} already exists")
        assert journey.id is not None
        journey.version += 1
        journey.name = stored["name"]
        journey.active = stored.get("active", True)
        journey.updated_at = utcnow()
        self.session.add(journey)
        self.session.add(
            JourneyVersion(journey_id=journey.id, version=journey.version, definition=stored)
        )
        self.session.flush()
        self._bump_on_commit()
        return journey

    def get(self, ref: int | str) -> Journey:
        journey: Journey | None = None
        if isinstance(ref, int) or ref.isdigit():
            journey = self.session.get(Journey, int(ref))
        if journey is None and isinstance(ref, str):
            journey = self._by_name(ref)
        if journey is None:
            raise NotFoundError(f"no journey {ref!r}; `postwise journeys list` shows them all")
        return journey

    def definition(self, journey: Journey, version: int | None = None) -> dict[str, Any]:
        row = self.session.exec(
            select(JourneyVersion).where(
                JourneyVersion.journey_id == journey.id,
                JourneyVersion.version == (version or journey.version),
            )
        ).first()
        if row is None:
            raise NotFoundError(f"journey {journey.name!r} has no version {version}")
        return dict(row.definition)

    def list(self) -> list[Journey]:
        return list(self.session.exec(select(Journey).order_by(col(Journey.name))).all())

    def set_active(self, ref: int | str, active: bool) -> Journey:
        """Pause (no new entrants; contacts inside wait where they are) or resume."""
        journey = self.get(ref)
        if journey.active != active:
            journey.active = active
            journey.updated_at = utcnow()
            self.session.add(journey)
            self.session.flush()
            self._bump_on_commit()
        return journey

    def migrate(
        self, ref: int | str, from_version: int, mapping: Mapping[str, str]
    ) -> dict[str, int]:
        """Move the runs of ``from_version`` at the mapped steps to the current version's steps.

        Every target must be a step of the current version; the runs moved keep their wait
        (due time) and count as having taken a step. Returns how many moved from each step.
        """
        journey = self.get(ref)
        if from_version >= journey.version:
            raise ValidationError(
                f"version {from_version} is not older than the current version {journey.version}",
                field="from_version",
            )
        target = parse_journey(self.definition(journey))
        steps = {step.id for step in target.steps}
        old = {step.id for step in parse_journey(self.definition(journey, from_version)).steps}
        for source, destination in mapping.items():
            if source not in old:
                raise ValidationError(
                    f"version {from_version} has no step {source!r}", field=f"mapping.{source}"
                )
            if destination not in steps:
                raise ValidationError(
                    f"version {journey.version} has no step {destination!r}",
                    field=f"mapping.{source}",
                )
        moved: dict[str, int] = {}
        for source, destination in mapping.items():
            result = self.session.execute(
                sa.update(JourneyRun)
                .where(
                    col(JourneyRun.journey_id) == journey.id,
                    col(JourneyRun.version) == from_version,
                    col(JourneyRun.status) == "active",
                    col(JourneyRun.step) == source,
                )
                .values(
                    version=journey.version,
                    step=destination,
                    seq=JourneyRun.seq + 1,
                    updated_at=utcnow(),
                )
            )
            moved[source] = int(getattr(result, "rowcount", 0) or 0)
        self.session.flush()
        self._bump_on_commit()
        return moved

    def _by_name(self, name: str) -> Journey | None:
        return self.session.exec(select(Journey).where(Journey.name == name)).first()

    def _bump_on_commit(self) -> None:
        flag = "postwise.journeys.bump"
        if self.session.info.get(flag):
            return
        self.session.info[flag] = True
        client = self.runtime.redis
        key = self.keys.version

        def bump(session: Session) -> None:
            session.info.pop(flag, None)
            client.incr(key)

        sa.event.listen(self.session, "after_commit", bump, once=True)


def read_journey_stats(
    client: redis.Redis, keys: JourneyKeys, journey_ids: Iterable[int]
) -> dict[int, dict[str, int]]:
    """Counters of each journey: ``<step>:<counter>``, ``exit:<reason>``, ``goal:converted``."""
    ids = list(journey_ids)
    pipe = client.pipeline(transaction=False)
    for journey_id in ids:
        pipe.hgetall(keys.stats(journey_id))
    result: dict[int, dict[str, int]] = {}
    for journey_id, raw in zip(ids, pipe.execute(), strict=True):
        result[journey_id] = {
            (k.decode() if isinstance(k, bytes) else str(k)): int(v) for k, v in raw.items()
        }
    return result


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), default=str)
