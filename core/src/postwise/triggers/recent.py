"""Events accepted on the stream that the event table may not hold yet.

History conditions (``action_history``, exit checks, journey goals) read the event table, which
the ``analytics`` collector fills in batches about once a second — and not at all while it is
down. A check made in that gap would miss an event the API has already accepted ("purchased ten
milliseconds before the reminder came due"). :class:`StreamTail` closes the gap.

The collector acknowledges an entry only after the sink committed it, so every stream entry
below the collector group's *watermark* — its oldest pending entry, or, with nothing pending,
just past its last delivered entry — is in the table. The tail keeps, in memory, the entries at
and after the watermark: each :meth:`StreamTail.refresh` reads the watermark first, forgets the
entries below it and reads only the entries added since the previous refresh (``XRANGE`` from
where it stopped). A check then reads the table *after* refreshing, and adds the tail's events
of the same type and contacts (by event id, so an event stored meanwhile counts once). Every
event accepted before the refresh is therefore counted, whatever the collector's lag.

Memory is proportional to the collector's lag (a second of traffic when it keeps up). A tail
longer than ``max_entries`` (the collector down for a long time) drops its oldest entries and
says so in :attr:`StreamTail.overflowed`; history checks then count what the table and the
kept entries hold.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from postwise.events import EVENT_STREAM, decode_event
from postwise.redis_client import as_text

__all__ = ["COLLECTOR_GROUP", "RecentEvent", "StreamTail", "parse_stream_id"]

log = logging.getLogger(__name__)

#: The consumer group of the collector that fills the event table.
COLLECTOR_GROUP = "analytics"

StreamId = tuple[int, int]


def parse_stream_id(value: bytes | str) -> StreamId:
    text = value.decode() if isinstance(value, bytes) else value
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


def _format(stream_id: StreamId) -> str:
    return f"{stream_id[0]}-{stream_id[1]}"


@dataclass(frozen=True, slots=True)
class RecentEvent:
    """One event of the tail."""

    stream_id: StreamId
    event_id: str
    type: str
    contact_id: int
    occurred_at: datetime
    properties: Mapping[str, Any]


class StreamTail:
    """The stream's entries the collector has not stored yet, indexed by type and contact."""

    def __init__(
        self,
        client: redis.Redis,
        *,
        stream: str = EVENT_STREAM,
        group: str = COLLECTOR_GROUP,
        max_entries: int = 200_000,
        chunk: int = 5000,
    ) -> None:
        self.client = client
        self.stream = stream
        self.group = group
        self.max_entries = max_entries
        self.chunk = chunk
        self._entries: deque[RecentEvent] = deque()
        self._index: dict[tuple[str, int], deque[RecentEvent]] = {}
        #: The last entry read (the next refresh reads after it).
        self._last: StreamId | None = None
        #: Entries below this are in the event table.
        self.watermark: StreamId = (0, 0)
        #: Entries were dropped because the tail exceeded ``max_entries``.
        self.overflowed = False
        #: Entries read from the stream since this tail was made (for tests and benchmarks).
        self.read_total = 0

    def __len__(self) -> int:
        return len(self._entries)

    def _read_watermark(self) -> StreamId:
        pipe = self.client.pipeline(transaction=False)
        pipe.xinfo_groups(self.stream)
        pipe.xpending(self.stream, self.group)
        try:
            groups, pending = pipe.execute(raise_on_error=False)
        except redis.ResponseError:
            return (0, 0)
        if isinstance(groups, Exception):
            return (0, 0)  # no stream yet
        info = next((g for g in groups if as_text(g.get("name")) == self.group), None)
        if info is None:
            return (0, 0)  # no collector has ever run: nothing is stored
        if not isinstance(pending, Exception) and pending and int(pending.get("pending") or 0):
            return parse_stream_id(pending["min"])
        last = parse_stream_id(info["last-delivered-id"])
        return (last[0], last[1] + 1)

    def refresh(self) -> None:
        """Move the watermark and read the entries added since the last refresh."""
        watermark = self._read_watermark()
        self.watermark = watermark
        while self._entries and self._entries[0].stream_id < watermark:
            self._forget(self._entries.popleft())
        start = watermark if self._last is None or self._last < watermark else None
        while True:
            low = _format(start) if start is not None else f"({_format(self._last or (0, 0))}"
            rows: Any = self.client.xrange(self.stream, min=low, max="+", count=self.chunk)
            for entry_id, fields in rows:
                stream_id = parse_stream_id(entry_id)
                self._last = stream_id
                self.read_total += 1
                self._add(stream_id, fields)
            start = None
            if len(rows) < self.chunk:
                break

    def _add(self, stream_id: StreamId, fields: Mapping[Any, Any]) -> None:
        if not fields:
            return
        try:
            envelope = decode_event(fields)
        except (ValueError, KeyError, TypeError):
            return
        if envelope.contact_id is None:
            return
        occurred = envelope.occurred_at
        if occurred.tzinfo is None:
            occurred = occurred.replace(tzinfo=UTC)
        event = RecentEvent(
            stream_id,
            envelope.event_id,
            envelope.type,
            int(envelope.contact_id),
            occurred,
            envelope.properties or {},
        )
        self._entries.append(event)
        self._index.setdefault((event.type, event.contact_id), deque()).append(event)
        while len(self._entries) > self.max_entries:
            if not self.overflowed:
                log.warning(
                    "the event collector is %d+ entries behind: history checks see the event "
                    "table and the newest %d entries of the stream only",
                    self.max_entries,
                    self.max_entries,
                )
            self.overflowed = True
            self._forget(self._entries.popleft())

    def _forget(self, event: RecentEvent) -> None:
        key = (event.type, event.contact_id)
        bucket = self._index.get(key)
        if bucket is None:
            return
        if bucket and bucket[0] is event:
            bucket.popleft()
        else:  # not in id order (cannot happen with one reader); fall back to a scan
            with contextlib.suppress(ValueError):
                bucket.remove(event)
        if not bucket:
            del self._index[key]

    def events(
        self, event_type: str, contact_ids: Iterable[int], since: datetime
    ) -> dict[int, list[RecentEvent]]:
        """The tail's events of ``event_type`` for the contacts, occurred at or after ``since``."""
        found: dict[int, list[RecentEvent]] = {}
        for contact_id in contact_ids:
            bucket = self._index.get((event_type, contact_id))
            if bucket:
                kept = [e for e in bucket if e.occurred_at >= since]
                if kept:
                    found[contact_id] = kept
        return found
