"""The evaluation context of a batch of events: what conditions ask, loaded once per batch.

:class:`BatchContext` loads the batch's contacts (with their tags) in one query when it is
built. Segment membership and event history are loaded the first time any condition asks, for
every contact of the batch at once: one query per segment, one per event type (re-run only if a
later question reaches further back in time than the loaded window). Each event then gets a
light :class:`EventContext` that answers from memory.

Failures while loading are remembered, so a broken segment raises for each condition that asks
about it without a query per event.
"""

from __future__ import annotations

import bisect
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import datetime
from types import MappingProxyType
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col

from postwise.analytics.engagement import EngagementModel
from postwise.contacts.segments import contacts_in_segment
from postwise.db.models import Contact, ContactTag, Event, as_utc
from postwise.settings import Settings
from postwise.triggers.conditions import HistoryEvent, TriggerEvent
from postwise.triggers.recent import StreamTail

__all__ = [
    "BatchContext",
    "EventContext",
    "ScoreFunction",
    "engagement_decay",
    "is_automated",
    "load_contacts",
]

#: score, updated_at, now -> the score as of now. The analytics subsystem owns the decay
#: (:func:`engagement_decay`); without one, conditions see the stored score.
ScoreFunction = Callable[[float, datetime | None, datetime], float]

_EMPTY: Mapping[str, Any] = MappingProxyType({})


# Built once: constructing a statement costs more than running it on a small batch. The ids
# are one expanding parameter, bound at execution rather than coerced one by one.
_CONTACTS = (
    sa.select(
        col(Contact.id),
        col(Contact.email),
        col(Contact.first_name),
        col(Contact.last_name),
        col(Contact.timezone),
        col(Contact.country),
        col(Contact.status),
        col(Contact.attributes),
        col(Contact.engagement_score),
        col(Contact.engagement_updated_at),
        col(Contact.created_at),
        col(ContactTag.tag),
    )
    .outerjoin(ContactTag, col(ContactTag.contact_id) == col(Contact.id))
    .where(col(Contact.id).in_(sa.bindparam("ids", expanding=True)))
)
_HISTORY = sa.select(col(Event.contact_id), col(Event.occurred_at), col(Event.event_id)).where(
    col(Event.type) == sa.bindparam("event_type"),
    col(Event.contact_id).in_(sa.bindparam("ids", expanding=True)),
    col(Event.occurred_at) >= sa.bindparam("since"),
)


_FULL_HISTORY = sa.select(
    col(Event.contact_id),
    col(Event.occurred_at),
    col(Event.event_id),
    col(Event.properties),
    col(Event.automated),
).where(
    col(Event.type) == sa.bindparam("event_type"),
    col(Event.contact_id).in_(sa.bindparam("ids", expanding=True)),
    col(Event.occurred_at) >= sa.bindparam("since"),
)


def is_automated(properties: Mapping[str, Any]) -> bool:
    """Whether an open or click was a machine's (as the trackers and ESP plugins flag it)."""
    return bool(properties.get("machine_open") or properties.get("scanner"))


def load_contacts(session: Session, contact_ids: Iterable[int]) -> dict[int, dict[str, Any]]:
    """The contacts (as condition-facing mappings, tags included), in one query."""
    ids = sorted(set(contact_ids))
    if not ids:
        return {}
    contacts: dict[int, dict[str, Any]] = {}
    tags: dict[int, set[str]] = {}
    for row in session.connection().execute(_CONTACTS, {"ids": ids}):
        cid = row[0]
        if cid not in contacts:
            attributes = row[7] or {}
            contact = dict(attributes)
            contact.update(
                id=cid,
                email=row[1],
                first_name=row[2],
                last_name=row[3],
                timezone=row[4] or "UTC",
                country=row[5],
                status=row[6],
                attributes=attributes,
                engagement_score=float(row[8] or 0.0),
                engagement_updated_at=as_utc(row[9]) if row[9] is not None else None,
                created_at=as_utc(row[10]) if row[10] is not None else None,
            )
            contacts[cid] = contact
            tags[cid] = set()
        if row[11] is not None:
            tags[cid].add(row[11])
    for cid, contact in contacts.items():
        contact["tags"] = frozenset(tags[cid])
    return contacts


class _History:
    """Times of one event type for the batch's contacts, from ``since`` on."""

    __slots__ = ("since", "times")

    def __init__(self, since: datetime, times: dict[int, list[tuple[datetime, str]]]) -> None:
        self.since = since
        self.times = times


class BatchContext:
    """Everything conditions may ask about the contacts of one batch of events."""

    def __init__(
        self,
        session: Session,
        events: Sequence[TriggerEvent],
        *,
        now: datetime,
        score: ScoreFunction | None = None,
        contacts: dict[int, dict[str, Any]] | None = None,
        recent: StreamTail | None = None,
    ) -> None:
        self.session = session
        #: Events accepted on the stream but perhaps not stored yet; refreshed before the first
        #: history query of this context, so the history counts every event accepted before it.
        self._recent = recent
        self._recent_fresh = recent is None
        self.events = events
        self.now = now
        self._score = score
        self.contact_ids = sorted({event.contact_id for event in events})
        self.contacts = (
            contacts if contacts is not None else load_contacts(session, self.contact_ids)
        )
        self._segments: dict[str, set[int] | BaseException] = {}
        self._history: dict[str, _History | BaseException] = {}
        self._full: dict[str, tuple[datetime, dict[int, list[HistoryEvent]]] | BaseException] = {}
        self.queries = 1 if contacts is None else 0

    def for_event(self, event: TriggerEvent) -> EventContext:
        return EventContext(self, event)

    def engagement_score(self, contact_id: int) -> float:
        contact = self.contacts.get(contact_id)
        if contact is None:
            return 0.0
        score: float = contact["engagement_score"]
        if self._score is None:
            return score
        return self._score(score, contact["engagement_updated_at"], self.now)

    def in_segment(self, contact_id: int, segment: str) -> bool:
        members = self._segments.get(segment)
        if members is None:
            try:
                self.queries += 1
                members = contacts_in_segment(self.session, segment, self.contact_ids)
            except Exception as exc:
                self._segments[segment] = exc
                raise
            self._segments[segment] = members
        if isinstance(members, BaseException):
            raise members
        return contact_id in members

    def count_events(
        self,
        event: TriggerEvent,
        event_type: str,
        since: datetime,
        until: datetime | None,
    ) -> int:
        history = self._history.get(event_type)
        if isinstance(history, BaseException):
            raise history
        if history is None or since < history.since:
            try:
                history = self._load_history(event_type, since)
            except Exception as exc:
                self._history[event_type] = exc
                raise
            self._history[event_type] = history
        times = history.times.get(event.contact_id)
        if not times:
            return 0
        end = self.now if until is None else until
        low = bisect.bisect_left(times, (since, ""))
        high = bisect.bisect_left(times, (end, ""))
        count = high - low
        if count and since <= event.occurred_at < end and event.type == event_type:
            # The event under evaluation is never part of its own history.
            index = bisect.bisect_left(times, (event.occurred_at, event.event_id), low, high)
            if index < high and times[index] == (event.occurred_at, event.event_id):
                count -= 1
        return count

    def history_events(
        self,
        event: TriggerEvent,
        event_type: str,
        since: datetime,
        until: datetime | None,
    ) -> list[HistoryEvent]:
        """The contact's events of a type in ``[since, until)``, with properties, oldest first."""
        loaded = self._full.get(event_type)
        if isinstance(loaded, BaseException):
            raise loaded
        if loaded is None or since < loaded[0]:
            try:
                loaded = (since, self._load_full(event_type, since))
            except Exception as exc:
                self._full[event_type] = exc
                raise
            self._full[event_type] = loaded
        end = self.now if until is None else until
        return [
            item
            for item in loaded[1].get(event.contact_id, ())
            if since <= item.occurred_at < end and item.event_id != event.event_id
        ]

    def _refresh_recent(self) -> None:
        if not self._recent_fresh and self._recent is not None:
            self._recent.refresh()
            self._recent_fresh = True

    def _load_full(self, event_type: str, since: datetime) -> dict[int, list[HistoryEvent]]:
        self._refresh_recent()
        self.queries += 1
        found: dict[int, list[HistoryEvent]] = {}
        seen: set[str] = set()
        rows: Any = self.session.connection().execute(
            _FULL_HISTORY, {"event_type": event_type, "ids": self.contact_ids, "since": since}
        )
        for contact_id, occurred_at, event_id, properties, automated in rows:
            found.setdefault(contact_id, []).append(
                HistoryEvent(
                    event_id, event_type, as_utc(occurred_at), properties or {}, bool(automated)
                )
            )
            seen.add(event_id)
        extra: list[tuple[int, HistoryEvent]] = []
        if self._recent is not None:
            for contact_id, recent in self._recent.events(
                event_type, self.contact_ids, since
            ).items():
                for tail in recent:
                    props = dict(tail.properties)
                    extra.append(
                        (
                            contact_id,
                            HistoryEvent(
                                tail.event_id,
                                event_type,
                                tail.occurred_at,
                                props,
                                is_automated(props),
                            ),
                        )
                    )
        for event in self.events:
            if event.type == event_type and event.occurred_at >= since:
                props = dict(event.properties)
                extra.append(
                    (
                        event.contact_id,
                        HistoryEvent(
                            event.event_id,
                            event_type,
                            event.occurred_at,
                            props,
                            is_automated(props),
                        ),
                    )
                )
        for contact_id, past in extra:
            if past.event_id not in seen:
                seen.add(past.event_id)
                found.setdefault(contact_id, []).append(past)
        for values in found.values():
            values.sort(key=lambda item: (item.occurred_at, item.event_id))
        return found

    def _load_history(self, event_type: str, since: datetime) -> _History:
        # Before the table query: whatever the collector stores after this refresh is either in
        # the query's result or still in the tail.
        self._refresh_recent()
        self.queries += 1
        times: dict[int, list[tuple[datetime, str]]] = {}
        seen: set[str] = set()
        rows: Any = self.session.connection().execute(
            _HISTORY, {"event_type": event_type, "ids": self.contact_ids, "since": since}
        )
        for contact_id, occurred_at, event_id in rows:
            times.setdefault(contact_id, []).append((as_utc(occurred_at), event_id))
            seen.add(event_id)
        if self._recent is not None:
            # Accepted on the stream, not stored yet (the collector's lag, or it is down).
            for contact_id, recent in self._recent.events(
                event_type, self.contact_ids, since
            ).items():
                for item in recent:
                    if item.event_id not in seen:
                        seen.add(item.event_id)
                        times.setdefault(contact_id, []).append((item.occurred_at, item.event_id))
        # Events of this batch may not have reached the event table yet: add them.
        for event in self.events:
            if (
                event.type == event_type
                and event.event_id not in seen
                and event.occurred_at >= since
            ):
                times.setdefault(event.contact_id, []).append((event.occurred_at, event.event_id))
        for values in times.values():
            values.sort()
        return _History(since, times)


class EventContext:
    """The :class:`~postwise.triggers.conditions.ConditionContext` of one event of a batch."""

    __slots__ = ("_batch", "_event")

    def __init__(self, batch: BatchContext, event: TriggerEvent) -> None:
        self._batch = batch
        self._event = event

    @property
    def now(self) -> datetime:
        return self._batch.now

    @property
    def contact(self) -> Mapping[str, Any]:
        return self._batch.contacts.get(self._event.contact_id, _EMPTY)

    def engagement_score(self) -> float:
        return self._batch.engagement_score(self._event.contact_id)

    def in_segment(self, segment: str) -> bool:
        return self._batch.in_segment(self._event.contact_id, segment)

    def count_events(self, event_type: str, since: datetime, until: datetime | None = None) -> int:
        return self._batch.count_events(self._event, event_type, since, until)

    def events(
        self, event_type: str, since: datetime, until: datetime | None = None
    ) -> list[HistoryEvent]:
        return self._batch.history_events(self._event, event_type, since, until)


def engagement_decay(settings: Settings) -> ScoreFunction:
    """The analytics subsystem's decay of stored engagement scores to the time of reading."""

    return EngagementModel.from_settings(settings).current
