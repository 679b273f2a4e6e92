"""The event stream: one way to publish onto it and one base for every consumer group.

:func:`publish` validates, de-duplicates, appends atomically and fires ``postwise_event_tracked``
for every event any producer emits; :class:`StreamConsumer` is the consumer-group reader the
analytics collector, the trigger engine and the compliance consumer are built on.
"""

from postwise.events import EVENT_STREAM, EventEnvelope, decode_event, encode_event
from postwise.streams.consumer import Entry, StreamConsumer, default_consumer_name
from postwise.streams.publish import DEDUPE_PREFIX, check_envelope, publish

__all__ = [
    "DEDUPE_PREFIX",
    "EVENT_STREAM",
    "Entry",
    "EventEnvelope",
    "StreamConsumer",
    "check_envelope",
    "decode_event",
    "default_consumer_name",
    "encode_event",
    "publish",
]
