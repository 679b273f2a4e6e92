"""The one way onto the event stream: validate, de-duplicate, append atomically, notify.

Every producer — ingestion (``POST /v1/events``, :func:`postwise.analytics.ingest.track`),
delivery's settlements, compliance's bounce and complaint reports and reputation alerts —
publishes through :func:`publish`, so every event is checked the same way and every event
fires the ``postwise_event_tracked`` hook when it is appended to the stream.

De-duplication is by ``event_id``: a ``SET NX EX`` idempotency marker (kept
``settings.event_dedupe_ttl_seconds``) is written with the entry in one atomic step, so a
retried publish of the same event is reported as a duplicate and not appended again. A producer
whose ids are deterministic and whose consumers are idempotent anyway (delivery: ``sent:<message
id>``) may pass ``dedupe=False`` to spare Redis one marker per message at sending volume.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from postwise.errors import ValidationError
from postwise.events import EVENT_STREAM, EventEnvelope, encode_event
from postwise.ops.metrics import count_events

if TYPE_CHECKING:
    from postwise.runtime import Runtime

__all__ = [
    "DEDUPE_PREFIX",
    "EVENT_ID_RE",
    "EVENT_TYPE_RE",
    "check_envelope",
    "publish",
]

log = logging.getLogger(__name__)

#: Redis key prefix of the idempotency markers.
DEDUPE_PREFIX = "postwise:evid:"
#: An event id: 1 to 100 characters without whitespace or control characters.
EVENT_ID_RE = re.compile(r"^[^\s\x00-\x1f\x7f]{1,100}$")
#: An event type: letters, digits, ``_ . : -``, up to 100, starting with a letter or digit.
EVENT_TYPE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,99}$")

# One round trip per batch on a real Redis. KEYS: the stream, then one marker per event; ARGV:
# ttl (0: no markers), maxlen, then one payload per event. For each event, SET NX EX its marker
# and, when the marker is new, XADD it with MAXLEN ~. Atomic, so no marker without its entry.
_PUBLISH_SCRIPT = """
local flags = {}
local dedupe = ARGV[1] ~= '0'
for i = 2, #KEYS do
  if (not dedupe) or redis.call('SET', KEYS[i], '1', 'NX', 'EX', ARGV[1]) then
    redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', 'e', ARGV[i + 1])
    flags[i - 1] = 1
  else
    flags[i - 1] = 0
  end
end
return flags
"""


def check_envelope(event: EventEnvelope) -> None:
    """Raise :class:`ValidationError` unless ``event`` may go on the stream.

    Ingestion has checked client input field by field before this; for postwise's own producers
    a failure here is a bug, reported before anything is written.
    """
    if not isinstance(event.event_id, str) or not EVENT_ID_RE.match(event.event_id):
        raise ValidationError(
            "must be 1 to 100 characters without whitespace or control characters",
            field="event_id",
        )
    if not isinstance(event.type, str) or not EVENT_TYPE_RE.match(event.type):
        raise ValidationError("must be 1 to 100 letters, digits or _ . : -", field="type")
    if event.occurred_at.tzinfo is None or event.occurred_at.utcoffset() is None:
        raise ValidationError("must be timezone-aware", field="occurred_at")


def publish(
    runtime: Runtime, events: Sequence[EventEnvelope], *, dedupe: bool = True
) -> list[bool]:
    """Publish ``events``; returns, per event, whether it was new (not a duplicate).

    Every event is checked first (:func:`check_envelope`): one bad event publishes nothing.
    Per event: ``SET NX EX`` of its idempotency marker (unless ``dedupe`` is off), and ``XADD
    MAXLEN ~`` when the marker was new. On Redis this is one script call per batch (one round
    trip, atomic); on the in-process stand-in, which has no scripting, two pipelines: the
    markers, then the new events in one ``MULTI``; if the second fails, the markers are removed
    so a retry publishes the events instead of calling them duplicates. The new events are then
    passed to ``postwise_event_tracked``.
    """
    if not events:
        return []
    for event in events:
        check_envelope(event)
    redis = runtime.redis
    ttl = runtime.settings.event_dedupe_ttl_seconds if dedupe else 0
    maxlen = runtime.settings.event_stream_maxlen
    if not runtime.settings.redis_url.startswith("fakeredis://"):
        keys = [EVENT_STREAM, *(DEDUPE_PREFIX + event.event_id for event in events)]
        payloads = [encode_event(event)[b"e"] for event in events]
        flags: Any = redis.eval(_PUBLISH_SCRIPT, len(keys), *keys, ttl, maxlen, *payloads)
        fresh = [bool(flag) for flag in flags]
        _notify(runtime, [e for e, ok in zip(events, fresh, strict=True) if ok])
        return fresh
    if dedupe:
        pipe = redis.pipeline(transaction=False)
        for event in events:
            pipe.execute_command("SET", DEDUPE_PREFIX + event.event_id, b"1", "NX", "EX", ttl)
        fresh = [bool(ok) for ok in pipe.execute()]
    else:
        fresh = [True] * len(events)
    new = [event for event, ok in zip(events, fresh, strict=True) if ok]
    if not new:
        return fresh
    pipe = redis.pipeline(transaction=True)
    for event in new:
        pipe.execute_command(
            "XADD", EVENT_STREAM, "MAXLEN", "~", maxlen, "*", "e", encode_event(event)[b"e"]
        )
    try:
        pipe.execute()
    except Exception:
        if dedupe:
            try:
                redis.delete(*(DEDUPE_PREFIX + event.event_id for event in new))
            except Exception:  # the original error is what the caller must see
                log.warning("could not remove idempotency markers after a failed publish")
        raise
    _notify(runtime, new)
    return fresh


def _notify(runtime: Runtime, events: Sequence[EventEnvelope]) -> None:
    count_events(event.type for event in events)
    hook = runtime.plugins.hook.postwise_event_tracked
    if not hook.get_hookimpls():
        return
    for event in events:
        try:
            hook(event=event.to_dict())
        except Exception:
            # The event is already on the stream; a failing observer must not undo that.
            log.exception("a postwise_event_tracked hook failed for event %s", event.event_id)
