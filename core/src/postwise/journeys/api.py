"""``/v1/journeys``: save flows (each save a new version), pause and resume them, move contacts
between versions, read per-step reports, dry-run a contact's path and simulate a sample.

Bodies are validated by :func:`~postwise.journeys.definition.validate_journey`, as in the CLI
and Python: a bad flow is a 422 problem naming the field (``steps[2].then: no step 'cupon'``).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, get, post, put
from litestar.status_codes import HTTP_200_OK
from sqlmodel import Session

from postwise.journeys.dryrun import dry_run_journey, journey_report, simulate_journey
from postwise.journeys.store import JourneyStore, journey_to_dict
from postwise.runtime import Runtime
from postwise.server.dto import Body, IdField, Name

__all__ = [
    "DryRunIn",
    "JourneyIn",
    "JourneysController",
    "MigrateIn",
    "SimulateIn",
]

_Object = dict[str, Any]


class JourneyIn(Body):
    """A journey definition (docs/journeys.md). Steps, entry and conditions are checked in full
    when it is saved; a refusal is a 422 naming the field (``steps[2].then``)."""

    name: Annotated[Name, msgspec.Meta(examples=["abandoned-cart"])]
    #: ``{"event": TYPE}``, ``{"date_attribute": {...}}``, ``{"schedule": {...}}`` or
    #: ``{"segment": {...}}``, with optional ``conditions``.
    entry: Annotated[_Object, msgspec.Meta(examples=[{"event": "cart_abandoned"}])]
    steps: Annotated[
        list[_Object],
        msgspec.Meta(
            min_length=1,
            max_length=200,
            examples=[[{"id": "hello", "type": "send", "template": "welcome"}]],
        ),
    ]
    start: Annotated[str, msgspec.Meta(min_length=1, max_length=100)] | None = None
    reentry: Literal["once", "always"] | _Object = "once"
    goal: _Object | None = None
    exit_on: Annotated[list[_Object], msgspec.Meta(max_length=20)] | None = None
    quiet_hours: Annotated[str, msgspec.Meta(max_length=20, examples=["21-8"])] | None = None
    priority: Annotated[int, msgspec.Meta(ge=-1000, le=1000)] = 0
    active: bool = True

    def to_definition(self) -> dict[str, Any]:
        return {
            name: value for name, value in msgspec.structs.asdict(self).items() if value is not None
        }


class MigrateIn(Body):
    """Move the contacts of an older version at the mapped steps to the current version."""

    from_version: Annotated[int, msgspec.Meta(ge=1, le=1_000_000, examples=[1])]
    mapping: Annotated[
        dict[Annotated[str, msgspec.Meta(min_length=1, max_length=100)], str],
        msgspec.Meta(min_length=1, examples=[{"wait": "pause"}]),
    ]


class DryRunIn(Body):
    """Dry-run the journey for a contact."""

    contact_id: IdField
    #: The entry event (``type``, ``properties``); a made-up one of the entry type if omitted.
    event: _Object | None = None
    #: Event types assumed to arrive while the contact waits for them.
    assume_events: Annotated[
        list[Annotated[str, msgspec.Meta(min_length=1, max_length=100)]],
        msgspec.Meta(max_length=50),
    ] = msgspec.field(default_factory=list)


class SimulateIn(Body):
    """Dry-run a random sample of contacts."""

    sample: Annotated[int, msgspec.Meta(ge=1, le=100_000)] = 1000


def _to_dict(store: JourneyStore, ref: int | str) -> dict[str, Any]:
    journey = store.get(ref)
    return journey_to_dict(journey, store.definition(journey))


class JourneysController(Controller):
    path = "/v1/journeys"
    tags = ["journeys"]

    @post("/", sync_to_thread=True)
    def create(self, session: Session, runtime: Runtime, data: JourneyIn) -> dict[str, Any]:
        """Create a journey from a definition (see docs/journeys.md)."""
        store = JourneyStore(session, runtime)
        journey = store.create(data.to_definition())
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
        self, session: Session, runtime: Runtime, journey_id: int, data: JourneyIn
    ) -> dict[str, Any]:
        """Save a new version: new entrants get it; contacts inside stay on theirs."""
        store = JourneyStore(session, runtime)
        store.replace(journey_id, data.to_definition())
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
        self, session: Session, runtime: Runtime, journey_id: int, data: MigrateIn
    ) -> dict[str, Any]:
        """Move contacts of an older version: ``{"from_version": 1, "mapping": {old: new}}``."""
        moved = JourneyStore(session, runtime).migrate(
            journey_id, data.from_version, dict(data.mapping)
        )
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
    def test_contact(self, runtime: Runtime, journey_id: int, data: DryRunIn) -> dict[str, Any]:
        """Dry-run the journey for ``contact_id`` (with ``event`` and ``assume_events``)."""
        return dry_run_journey(
            runtime,
            journey_id,
            data.contact_id,
            event=data.event,
            assume_events=data.assume_events,
        )

    @post(
        "/{journey_id:int}/simulate",
        sync_to_thread=True,
        status_code=HTTP_200_OK,
        opt={"scope": "read"},
    )
    def simulate(self, runtime: Runtime, journey_id: int, data: SimulateIn) -> dict[str, Any]:
        """Dry-run a random sample of contacts (``{"sample": 1000}``): counts per step."""
        return simulate_journey(runtime, journey_id, sample=data.sample)
