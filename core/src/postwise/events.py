"""The one event shape every subsystem shares, and its encoding on the Redis stream.

Product events (``signup``, ``purchase``, ...) and email events (``delivered``, ``open``,
``click``, ``conversion``, ``unsubscribe``, ``bounce``, ``complaint``) are one
:class:`EventEnvelope` from ingestion to the stream :data:`EVENT_STREAM` to the analytics sinks
(which store it as it is: ``postwise.analytics.sinks.StoredEvent`` is this class) and the
consumers (the batch writer, the trigger engine, the compliance consumer), each reading through
its own consumer group. Conversions happen only at the edges: client JSON in ingestion, a
vendor's webhook payload in its plugin, a sink's columns in the sink. Contacts are referred to
by id, never by address, so erasure can remove them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = [
    "EMAIL_EVENT_TYPES",
    "EVENT_STREAM",
    "EventEnvelope",
    "decode_event",
    "encode_event",
]

#: The Redis stream all events go through (bounded with MAXLEN ~ settings.event_stream_maxlen).
EVENT_STREAM = "postwise:events"

#: Event types postwise itself emits about email.
EMAIL_EVENT_TYPES = frozenset(
    {
        "sent",
        "delivered",
        "open",
        "click",
        "conversion",
        "unsubscribe",
        "bounce",
        "complaint",
        "dead_letter",
    }
)


@dataclass(frozen=True, slots=True)
class EventEnvelope:
    """One event. ``occurred_at`` is timezone-aware; ``event_id`` makes processing idempotent."""

    event_id: str
    type: str
    occurred_at: datetime
    contact_id: int | None = None
    message_id: str | None = None
    campaign_id: int | None = None
    trigger_id: int | None = None
    experiment_id: int | None = None
    variant: str | None = None
    provider: str | None = None
    properties: Mapping[str, Any] = field(default_factory=dict)

    @property
    def automated(self) -> bool:
        """Made by a machine, not a person: an image proxy's open or a link scanner's click."""
        return bool(self.properties.get("machine_open") or self.properties.get("scanner"))

    @property
    def recipient_domain(self) -> str | None:
        """The recipient's domain, which ingestion records on email events."""
        domain = self.properties.get("recipient_domain")
        return str(domain) if domain else None

    @property
    def stored_properties(self) -> Mapping[str, Any]:
        """The properties a sink stores: with ``trigger_id``, for sinks that have no column
        for it (the built-in ones keep it in the properties)."""
        if self.trigger_id is None or "trigger_id" in self.properties:
            return self.properties
        return {**self.properties, "trigger_id": self.trigger_id}

    def to_dict(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "type": self.type,
            "occurred_at": self.occurred_at.isoformat(),
            "contact_id": self.contact_id,
            "message_id": self.message_id,
            "campaign_id": self.campaign_id,
            "trigger_id": self.trigger_id,
            "experiment_id": self.experiment_id,
            "variant": self.variant,
            "provider": self.provider,
            "properties": dict(self.properties),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> EventEnvelope:
        occurred = data["occurred_at"]
        return cls(
            event_id=str(data["event_id"]),
            type=str(data["type"]),
            occurred_at=occurred
            if isinstance(occurred, datetime)
            else datetime.fromisoformat(occurred),
            contact_id=data.get("contact_id"),
            message_id=data.get("message_id"),
            campaign_id=data.get("campaign_id"),
            trigger_id=data.get("trigger_id"),
            experiment_id=data.get("experiment_id"),
            variant=data.get("variant"),
            provider=data.get("provider"),
            properties=data.get("properties") or {},
        )


def encode_event(event: EventEnvelope) -> dict[bytes, bytes]:
    """The stream entry for ``event``: one field ``e`` holding compact JSON."""
    return {b"e": json.dumps(event.to_dict(), separators=(",", ":")).encode()}


def decode_event(fields: Mapping[bytes | str, bytes | str]) -> EventEnvelope:
    """The event in a stream entry written by :func:`encode_event`."""
    raw = fields.get(b"e", fields.get("e"))
    if raw is None:
        raise ValueError("stream entry has no 'e' field")
    return EventEnvelope.from_dict(json.loads(raw))
