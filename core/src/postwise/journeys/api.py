"""``/v1/journeys``: save flows (each save a new version), pause and resume them, move contacts
between versions, read per-step reports, dry-run a contact's path and simulate a sample.

Bodies are validated by :func:`~postwise.journeys.definition.validate_journey`, as in the CLI
and Python: a bad flow is a 422 problem naming the field (``steps[2].then: no step 'cupon'``).
"""

from __future__ import annotations

from typing import Any

from litestar import Controller, get, post, put
from litestar.status_codes import HTTP_200_OK
from sqlmodel import Session

from postwise.errors import ValidationError
from postwise.journeys.dryrun import dry_run_journey, journey_report, simulate_journey
from postwise.journeys.store import JourneyStore, journey_to_dict
from postwise.runtime import Runtime

__all__ = ["JourneysController"]


def _to_dict(store: JourneyStore, ref: int | str) -> dict[str, Any]:
    journey = store.get(ref)
    return journey_to_dict(journey, store.definition(journey))


class JourneysController(Controller):
    path = "/v1/journeys"
    tags = ["journeys"]

    @post("/", sync_to_thread=True)
    def create(self, session: Session, runtime: Runtime, data: dict[str, Any]) -> dict[str, Any]:
        """Create a journey from a definition (see docs/journeys.md)."""
        store = JourneyStore(session, runtime)
        journey = store.create(data)
        assert journey.id is not None
        return _to_dict(store, journey.id)

    @get("/", sync_to_thread=True)
    def list_journeys(self, session: Session, runtime: Runtime) -> dict[str, Any]:
        store = JourneyStore(session, runtime)
        return {
            "journeys": [journey_to_dict(j, store.definition(j)) for j in store.list()],
        }

    @get("/{journey_id:int}", sync_to_thread=True)
    def show(self, session: Session, runtime: Runtime, journey_id: int) -> dict[str, Any]:
        return _to_dict(JourneyStore(session, runtime), journey_id)

    @put("/{journey_id:int}", sync_to_thread=True)
    def replace(
        self, session: Session, runtime: Runtime, journey_id: int, data: dict[str, Any]
    ) -> dict[str, Any]:
        """Save a new version: new entrants get it; contacts inside stay on theirs."""
        store = JourneyStore(session, runtime)
        store.replace(journey_id, data)
        return _to_dict(store, journey_id)

    @post("/{journey_id:int}/pause", sync_to_thread=True, status_code=HTTP_200_OK)
    def pause(self, session: Session, runtime: Runtime, journey_id: int) -> dict[str, Any]:
        """No one enters; contacts inside wait where they are until it is resumed."""
        store = JourneyStore(session, runtime)
        store.set_active(journey_id, False)
        return _to_dict(store, journey_id)

    @post("/{journey_id:int}/resume", sync_to_thread=True, status_code=HTTP_200_OK)
    def resume(self, session: Session, runtime: Runtime, journey_id: int) -> dict[str, Any]:
        store = JourneyStore(session, runtime)
        store.set_active(journey_id, True)
        return _to_dict(store, journey_id)

    @post("/{journey_id:int}/migrate", sync_to_thread=True, status_code=HTTP_200_OK)
    def migrate(
        self, session: Session, runtime: Runtime, journey_id: int, data: dict[str, Any]
    ) -> dict[str, Any]:
        """Move contacts of an older version: ``{"from_version": 1, "mapping": {old: new}}``."""
        version = data.get("from_version")
        mapping = data.get("mapping")
        if not isinstance(version, int) or isinstance(version, bool):
            raise ValidationError(
                "is required: the version to move contacts from", field="from_version"
            )
        if not isinstance(mapping, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()
        ):
            raise ValidationError(
                'must map old step ids to new step ids, e.g. {"wait": "pause"}',
                field="mapping",
            )
        moved = JourneyStore(session, runtime).migrate(journey_id, version, mapping)
        return {"journey_id": journey_id, "moved": moved}

    @get("/{journey_id:int}/report", sync_to_thread=True)
    def report(self, runtime: Runtime, journey_id: int) -> dict[str, Any]:
        """Per step: entered, waiting now, sent, opened, clicked, converted, exited."""
        return journey_report(runtime, journey_id)

    @post(
        "/{journey_id:int}/test",
        sync_to_thread=True,
        status_code=HTTP_200_OK,
        opt={"scope": "read"},
    )
    def test_contact(
        self, runtime: Runtime, journey_id: int, data: dict[str, Any]
    ) -> dict[str, Any]:
        """Dry-run the journey for ``contact_id`` (with ``event`` and ``assume_events``)."""
        contact_id = data.get("contact_id")
        if not isinstance(contact_id, int) or isinstance(contact_id, bool):
            raise ValidationError("is required: the id of the contact", field="contact_id")
        event = data.get("event")
        if event is not None and not isinstance(event, dict):
            raise ValidationError("must be an object (type, properties)", field="event")
        assume = data.get("assume_events") or []
        if not isinstance(assume, list) or not all(isinstance(a, str) for a in assume):
            raise ValidationError("must be a list of event types", field="assume_events")
        return dry_run_journey(runtime, journey_id, contact_id, event=event, assume_events=assume)

    @post(
        "/{journey_id:int}/simulate",
        sync_to_thread=True,
        status_code=HTTP_200_OK,
        opt={"scope": "read"},
    )
    def simulate(self, runtime: Runtime, journey_id: int, data: dict[str, Any]) -> dict[str, Any]:
        """Dry-run a random sample of contacts (``{"sample": 1000}``): counts per step."""
        sample = data.get("sample", 1000)
        if not isinstance(sample, int) or isinstance(sample, bool) or not 1 <= sample <= 100_000:
            raise ValidationError("must be an integer from 1 to 100000", field="sample")
        return simulate_journey(runtime, journey_id, sample=sample)
