"""Event ingestion: validate, resolve, de-duplicate and publish to the event stream.

``POST /v1/events`` and :func:`track` both end here. An event (docs/analytics.md has the full
schema) is a JSON object::

    {"event_id": "order-1234-paid",           # the client's id: required, 1-100 characters
     "type": "purchase",                       # letters, digits, _ . : -, up to 100
     "occurred_at": "2025-05-01T10:00:00Z",    # ISO 8601 with a zone; default: now
     "contact_id": 42,                         # or "email": resolved to the contact's id
     "message_id": "...", "campaign_id": 7,    # optional; the rest comes from the ledger
     "properties": {"value": 19.99}}           # a JSON object of at most 16 KiB

Ingestion is idempotent by ``event_id``: a ``SET NX`` in Redis (kept
``settings.event_dedupe_ttl_seconds``, see :mod:`postwise.streams.publish`) drops client
retries at once, and the batch writer's
``ON CONFLICT DO NOTHING`` drops anything that gets past it. A batch is validated whole before
anything is published: one bad event rejects the batch unless partial acceptance is asked for.
Addresses given as ``email`` are resolved to contact ids and never stored in the event.
"""

from __future__ import annotations

import json
import logging
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from postwise.contacts.normalize import email_domain, normalize_email
from postwise.db.models import Contact
from postwise.db.models import Message as LedgerRow
from postwise.errors import ValidationError
from postwise.events import EMAIL_EVENT_TYPES, EventEnvelope
from postwise.streams.publish import DEDUPE_PREFIX, EVENT_ID_RE, EVENT_TYPE_RE, publish

if TYPE_CHECKING:
    from postwise.runtime import Runtime

__all__ = [
    "DEDUPE_PREFIX",
    "FUTURE_TOLERANCE",
    "MAX_AGE",
    "MAX_BATCH_EVENTS",
    "MAX_PROPERTIES_BYTES",
    "EventBatchError",
    "EventError",
    "IngestResult",
    "ingest",
    "publish",
    "track",
    "validate_event",
]

log = logging.getLogger(__name__)

MAX_BATCH_EVENTS = 1000
MAX_PROPERTIES_BYTES = 16 * 1024
#: Clocks disagree a little; an event further in the future than this is a client bug.
FUTURE_TOLERANCE = timedelta(minutes=5)
#: Older than this is a wrong year or a unit mistake, not a backfill.
MAX_AGE = timedelta(days=3653)

_FIELDS = (
    "event_id",
    "type",
    "occurred_at",
    "contact_id",
    "email",
    "message_id",
    "campaign_id",
    "trigger_id",
    "experiment_id",
    "variant",
    "provider",
    "properties",
)
_TOKEN_RE = re.compile(r"^[^\s\x00-\x1f\x7f]+$")
_MAX_INT = 2**31 - 1  # ids are 32-bit integers in the database


@dataclass(frozen=True, slots=True)
class EventError:
    """Why the event at ``index`` of a batch was rejected."""

    index: int
    field: str | None
    error: str

    def to_dict(self) -> dict[str, Any]:
        return {"index": self.index, "field": self.field, "error": self.error}


class EventBatchError(ValidationError):
    """Some events of a batch are invalid, so none of it was stored."""

    def __init__(self, errors: Sequence[EventError], total: int) -> None:
        self.errors = list(errors)
        first = self.errors[0]
        super().__init__(
            f"{len(self.errors)} of {total} events are invalid (the first, at index "
            f"{first.index}: {first.error}); nothing was stored. Fix them, or send "
            "?partial=true to store the valid ones",
            field=first.field,
        )


@dataclass(slots=True)
class IngestResult:
    """What happened to each event of a call."""

    accepted: list[str] = field(default_factory=list)
    duplicates: list[str] = field(default_factory=list)
    rejected: list[EventError] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "accepted": len(self.accepted),
            "duplicates": self.duplicates,
            "rejected": [error.to_dict() for error in self.rejected],
        }


@dataclass(slots=True)
class _Draft:
    envelope: EventEnvelope
    email: str | None


def _id(value: Any, name: str, *, required: bool = False) -> int | None:
    if value is None:
        if required:
            raise ValidationError("is required", field=name)
        return None
    if type(value) is not int or not 1 <= value <= _MAX_INT:
        raise ValidationError(f"must be a positive integer id, got {value!r}", field=name)
    return value


def _text(value: Any, name: str, max_length: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value or len(value) > max_length:
        raise ValidationError(f"must be a string of 1 to {max_length} characters", field=name)
    if not _TOKEN_RE.match(value):
        raise ValidationError("must not contain whitespace or control characters", field=name)
    return value


def _occurred_at(value: Any, now: datetime) -> datetime:
    if value is None:
        return now
    if isinstance(value, datetime):
        moment = value
    elif isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value)
        except ValueError:
            raise ValidationError(
                f"{value!r} is not an ISO 8601 time such as 2025-05-01T10:00:00Z",
                field="occurred_at",
            ) from None
    else:
        raise ValidationError("must be an ISO 8601 string", field="occurred_at")
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValidationError(
            f"{value!s} has no timezone; add Z or an offset such as +02:00",
            field="occurred_at",
        )
    moment = moment.astimezone(UTC)
    if moment > now + FUTURE_TOLERANCE:
        raise ValidationError(
            f"{moment.isoformat()} is in the future (more than "
            f"{int(FUTURE_TOLERANCE.total_seconds() // 60)} minutes ahead of the server's "
            "clock); send the time the event happened",
            field="occurred_at",
        )
    if moment < now - MAX_AGE:
        raise ValidationError(
            f"{moment.isoformat()} is more than {MAX_AGE.days // 365} years ago; "
            "check the year and that the time is not in the wrong unit",
            field="occurred_at",
        )
    return moment


def _properties(value: Any, event_type: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValidationError("must be a JSON object", field="properties")
    if value:
        try:
            size = len(json.dumps(value, separators=(",", ":"), allow_nan=False).encode())
        except (TypeError, ValueError) as exc:
            raise ValidationError(f"must be JSON-serialisable: {exc}", field="properties") from None
        if size > MAX_PROPERTIES_BYTES:
            raise ValidationError(
                f"is {size} bytes of JSON; the limit is {MAX_PROPERTIES_BYTES}. Keep large "
                "payloads elsewhere and send a reference",
                field="properties",
            )
    if event_type == "conversion" and "value" in value:
        amount = value["value"]
        if type(amount) not in (int, float):
            raise ValidationError(
                f"value of a conversion must be a number, got {amount!r}",
                field="properties.value",
            )
    return value


def validate_event(raw: Any, *, now: datetime | None = None) -> tuple[EventEnvelope, str | None]:
    """Check one event; return its envelope and the address to resolve (when given as email).

    Raises :class:`ValidationError` naming the field and the reason.
    """
    now = now or datetime.now(UTC)
    if not isinstance(raw, Mapping):
        raise ValidationError("an event must be a JSON object")
    unknown = [key for key in raw if key not in _FIELDS]
    if unknown:
        raise ValidationError(
            f"unknown field; an event has {', '.join(_FIELDS)}", field=str(unknown[0])
        )
    event_id = raw.get("event_id")
    if event_id is None:
        raise ValidationError("is required: the client's unique id of the event", field="event_id")
    if not isinstance(event_id, str) or not EVENT_ID_RE.match(event_id):
        raise ValidationError(
            "must be 1 to 100 characters without whitespace or control characters",
            field="event_id",
        )
    event_type = raw.get("type")
    if not isinstance(event_type, str) or not EVENT_TYPE_RE.match(event_type):
        raise ValidationError(
            "must be 1 to 100 letters, digits or _ . : - (e.g. 'purchase')", field="type"
        )
    contact_id = _id(raw.get("contact_id"), "contact_id")
    email = raw.get("email")
    if email is not None:
        if contact_id is not None:
            raise ValidationError("give contact_id or email, not both", field="email")
        email = normalize_email(email)
    envelope = EventEnvelope(
        event_id=event_id,
        type=event_type,
        occurred_at=_occurred_at(raw.get("occurred_at"), now),
        contact_id=contact_id,
        message_id=_text(raw.get("message_id"), "message_id", 64),
        campaign_id=_id(raw.get("campaign_id"), "campaign_id"),
        trigger_id=_id(raw.get("trigger_id"), "trigger_id"),
        experiment_id=_id(raw.get("experiment_id"), "experiment_id"),
        variant=_text(raw.get("variant"), "variant", 100),
        provider=_text(raw.get("provider"), "provider", 50),
        properties=_properties(raw.get("properties"), event_type),
    )
    return envelope, email


def _resolve(
    runtime: Runtime, drafts: dict[int, _Draft], errors: list[EventError]
) -> dict[int, EventEnvelope]:
    """Turn addresses into contact ids and fill message events from the ledger."""
    emails = {d.email for d in drafts.values() if d.email is not None}
    message_ids = {d.envelope.message_id for d in drafts.values() if d.envelope.message_id}
    contacts: dict[str, int] = {}
    ledger: dict[str, Any] = {}
    if emails or message_ids:
        contact = Contact.__table__  # type: ignore[attr-defined]
        message = LedgerRow.__table__  # type: ignore[attr-defined]
        with runtime.engine.connect() as connection:
            if emails:
                query = sa.select(contact.c.email, contact.c.id).where(
                    contact.c.email.in_(sorted(emails))
                )
                contacts = {row[0]: row[1] for row in connection.execute(query)}
            if message_ids:
                query = (
                    sa.select(
                        message.c.id,
                        message.c.contact_id,
                        message.c.campaign_id,
                        message.c.trigger_id,
                        message.c.experiment_id,
                        message.c.variant,
                        message.c.provider,
                        contact.c.email,
                    )
                    .select_from(message.outerjoin(contact, contact.c.id == message.c.contact_id))
                    .where(message.c.id.in_(sorted(message_ids)))
                )
                ledger = {row[0]: row for row in connection.execute(query)}
    resolved: dict[int, EventEnvelope] = {}
    for index, draft in drafts.items():
        envelope = draft.envelope
        if draft.email is not None:
            contact_id = contacts.get(draft.email)
            if contact_id is None:
                errors.append(
                    EventError(
                        index,
                        "email",
                        "no contact has this address; create the contact first or send contact_id",
                    )
                )
                continue
            envelope = replace(envelope, contact_id=contact_id)
        row = ledger.get(envelope.message_id) if envelope.message_id else None
        if row is not None:
            properties = envelope.properties
            if (
                envelope.type in EMAIL_EVENT_TYPES
                and row[7]
                and "recipient_domain" not in properties
            ):
                properties = {**properties, "recipient_domain": email_domain(row[7])}
            envelope = replace(
                envelope,
                contact_id=envelope.contact_id if envelope.contact_id is not None else row[1],
                campaign_id=envelope.campaign_id or row[2],
                trigger_id=envelope.trigger_id or row[3],
                experiment_id=envelope.experiment_id or row[4],
                variant=envelope.variant or row[5],
                provider=envelope.provider or row[6],
                properties=properties,
            )
        resolved[index] = envelope
    return resolved


def ingest(
    runtime: Runtime,
    items: Sequence[Any],
    *,
    partial: bool = False,
    now: datetime | None = None,
) -> IngestResult:
    """Validate, resolve and publish a batch of raw events (JSON-like mappings).

    Without ``partial``, one invalid event rejects the whole batch with
    :class:`EventBatchError` and nothing is published. With it, valid events are published
    and the invalid ones are reported in :attr:`IngestResult.rejected`.
    """
    if len(items) > MAX_BATCH_EVENTS:
        raise ValidationError(
            f"a batch holds at most {MAX_BATCH_EVENTS} events, got {len(items)}; split it"
        )
    now = now or datetime.now(UTC)
    errors: list[EventError] = []
    drafts: dict[int, _Draft] = {}
    for index, raw in enumerate(items):
        try:
            envelope, email = validate_event(raw, now=now)
        except ValidationError as exc:
            message = str(exc)
            if exc.field and message.startswith(f"{exc.field}: "):
                message = message[len(exc.field) + 2 :]
            errors.append(EventError(index, exc.field, message))
            continue
        drafts[index] = _Draft(envelope, email)
    resolved = _resolve(runtime, drafts, errors)
    errors.sort(key=lambda e: e.index)
    if errors and not partial:
        raise EventBatchError(errors, len(items))
    ordered = [resolved[index] for index in sorted(resolved)]
    fresh = publish(runtime, ordered)
    result = IngestResult(rejected=errors)
    for event, is_new in zip(ordered, fresh, strict=True):
        (result.accepted if is_new else result.duplicates).append(event.event_id)
    return result


@dataclass(frozen=True, slots=True)
class TrackResult:
    """The outcome of :func:`track`: the event's id, and False if it was a duplicate."""

    event_id: str
    accepted: bool


def track(
    event_type: str,
    *,
    runtime: Runtime,
    event_id: str | None = None,
    contact_id: int | None = None,
    email: str | None = None,
    occurred_at: datetime | None = None,
    properties: Mapping[str, Any] | None = None,
    message_id: str | None = None,
    campaign_id: int | None = None,
    experiment_id: int | None = None,
    variant: str | None = None,
) -> TrackResult:
    """Record one event in-process, exactly as ``POST /v1/events`` would.

    ``event_id`` makes the call idempotent; without one a random id is generated (then a
    retried call records the event twice). Raises :class:`ValidationError` for a bad event.
    """
    raw: dict[str, Any] = {
        "event_id": event_id if event_id is not None else uuid.uuid4().hex,
        "type": event_type,
        "occurred_at": occurred_at,
        "contact_id": contact_id,
        "email": email,
        "message_id": message_id,
        "campaign_id": campaign_id,
        "experiment_id": experiment_id,
        "variant": variant,
        "properties": dict(properties) if properties is not None else None,
    }
    try:
        result = ingest(runtime, [raw])
    except EventBatchError as exc:
        first = exc.errors[0]
        raise ValidationError(first.error, field=first.field) from None
    return TrackResult(str(raw["event_id"]), bool(result.accepted))
