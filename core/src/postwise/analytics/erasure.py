"""Erasing a contact's events: from the sink, the event stream and events in flight.

Events refer to contacts by id only, so erasure removes every event carrying the contact's id.
:func:`erase_contact_events` does it in the order that leaves nothing behind:

1. the contact id is recorded as erased (a Redis sorted set kept for a week), so a collector
   that already read some of the contact's events drops them instead of storing them after
   the sink was cleaned;
2. the contact's entries are deleted from the event stream and the dead-letter stream;
3. the sink erases the stored events (``AnalyticsSink.erase_contact``).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from postwise.analytics.collector import DEAD_LETTER_STREAM, ERASED_CONTACTS_KEY, open_sink
from postwise.analytics.sinks import AnalyticsSink
from postwise.events import EVENT_STREAM, decode_event

if TYPE_CHECKING:
    import redis

    from postwise.runtime import Runtime

__all__ = ["erase_contact_events", "erase_from_stream", "mark_erased"]

_CHUNK = 5000
_ERASED_RETENTION_SECONDS = 7 * 86400


def mark_erased(client: redis.Redis, contact_id: int) -> None:
    """Make collectors drop the contact's events still in flight."""
    now = time.time()
    pipe = client.pipeline(transaction=True)
    pipe.zadd(ERASED_CONTACTS_KEY, {str(contact_id): now})
    pipe.zremrangebyscore(ERASED_CONTACTS_KEY, "-inf", now - _ERASED_RETENTION_SECONDS)
    pipe.execute()


def erase_from_stream(client: redis.Redis, contact_id: int, *, stream: str = EVENT_STREAM) -> int:
    """Delete the entries of ``stream`` whose event names ``contact_id``; returns how many."""
    # encode_event writes compact JSON, so the id appears as this exact text; entries
    # containing it are decoded to confirm before they are deleted.
    needle = f'"contact_id":{contact_id},'.encode()
    removed = 0
    start = "-"
    while True:
        entries: Any = client.xrange(stream, min=start, max="+", count=_CHUNK)
        if not entries:
            return removed
        doomed = []
        for entry_id, fields in entries:
            raw = fields.get(b"e", b"")
            if needle not in raw:
                continue
            try:
                if decode_event({b"e": raw}).contact_id == contact_id:
                    doomed.append(entry_id)
            except (ValueError, KeyError, TypeError):
                continue
        if doomed:
            removed += int(client.xdel(stream, *doomed))
        if len(entries) < _CHUNK:
            return removed
        last = entries[-1][0]
        start = "(" + (last.decode() if isinstance(last, bytes) else str(last))


def erase_contact_events(
    runtime: Runtime, contact_id: int, *, sink: AnalyticsSink | None = None
) -> dict[str, int]:
    """Erase every event of ``contact_id``: in flight, on the streams and in the sink.

    Returns counts per store (``stream_entries``, ``dead_letters``, ``events``). Uses the
    configured sink unless ``sink`` is given.
    """
    mark_erased(runtime.redis, contact_id)
    counts = {
        "stream_entries": erase_from_stream(runtime.redis, contact_id),
        "dead_letters": erase_from_stream(runtime.redis, contact_id, stream=DEAD_LETTER_STREAM),
    }
    owned = sink is None
    target = sink if sink is not None else open_sink(runtime)
    try:
        counts["events"] = int(target.erase_contact(contact_id))
    finally:
        if owned:
            target.close()
    return counts
