"""Record what an ESP's event webhook reported, once per vendor event id.

Each vendor event is first mapped (by the vendor's webhook module) to a :class:`MappedEvent`:
an engagement or delivery event for the stream, a bounce or complaint for compliance, an
unsubscribe, or nothing. :func:`record_events` then acts on a request's events:

* bounces and complaints go to :func:`postwise.compliance.processing.record_provider_feedback`,
  which suppresses, counts for reputation and puts the ``bounce``/``complaint`` event on the
  stream itself;
* unsubscribes go to :func:`postwise.compliance.unsubscribe.unsubscribe` (the contact the
  ledger names) or :func:`~postwise.compliance.unsubscribe.unsubscribe_email` (the address);
* ``delivered``, ``open``, ``click``, ``dropped`` and ``unsubscribe`` events are published
  through :func:`postwise.analytics.ingest.ingest`, which fills contact, campaign and variant
  from the ledger by message id.

Every step is idempotent by the vendor's event id, and the id is remembered in Redis for the
webhook's maximum age: a retried or replayed request inside that window is recognised and
changes nothing, and one outside it is refused by its age before it gets here. A failure part
way (database down) raises, the vendor retries, and the steps already done are not repeated.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from postwise.analytics.bots import classify_click, classify_open
from postwise.analytics.ingest import ingest
from postwise.compliance.processing import record_provider_feedback
from postwise.compliance.unsubscribe import unsubscribe, unsubscribe_email
from postwise.db.models import Message as LedgerRow
from postwise.errors import NotFoundError, ValidationError

if TYPE_CHECKING:
    from postwise.runtime import Runtime

__all__ = [
    "Feedback",
    "MappedEvent",
    "WebhookSummary",
    "bounded_id",
    "clean_message_id",
    "engagement_properties",
    "record_events",
    "record_raw_events",
    "short_id",
]

log = logging.getLogger(__name__)

_SEEN_PREFIX = "postwise:hooks:"
#: Ledger ids are what postwise put in the custom argument / metadata; anything else is ignored.
_MESSAGE_ID_RE = re.compile(r"^[A-Za-z0-9_.:@-]{1,64}$")
#: Clock skew allowed between the vendor and this server when marking events remembered.
_SKEW_SECONDS = 300


@dataclass(frozen=True, slots=True)
class Feedback:
    """A bounce or complaint for compliance; ``kind`` None lets the core classify the reply."""

    kind: str | None
    status: str | None = None
    smtp_code: int | None = None
    diagnostic: str = ""
    feedback_type: str | None = None


@dataclass(frozen=True, slots=True)
class MappedEvent:
    """What postwise does with one vendor event."""

    #: The vendor's own event id (unique per event).
    vendor_id: str
    vendor_type: str
    occurred_at: datetime
    message_id: str | None
    recipient: str | None
    #: The postwise event type to publish (``delivered``, ``open``...), if any.
    publish: str | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    feedback: Feedback | None = None
    unsubscribe: bool = False

    @property
    def acts(self) -> bool:
        return self.publish is not None or self.feedback is not None or self.unsubscribe


@dataclass(slots=True)
class WebhookSummary:
    """What one webhook request did; returned to the vendor as JSON (for humans and tests)."""

    received: int = 0
    recorded: int = 0
    duplicates: int = 0
    ignored: int = 0
    invalid: int = 0
    expired: int = 0
    #: Events published without a contact or message postwise knows (test sends, other tools).
    unmatched: int = 0

    def to_dict(self) -> dict[str, int]:
        return {
            "received": self.received,
            "recorded": self.recorded,
            "duplicates": self.duplicates,
            "ignored": self.ignored,
            "invalid": self.invalid,
            "expired": self.expired,
            "unmatched": self.unmatched,
        }


def clean_message_id(value: Any) -> str | None:
    """``value`` when it looks like a postwise ledger id, else None."""
    return value if isinstance(value, str) and _MESSAGE_ID_RE.match(value) else None


def engagement_properties(
    kind: str,
    properties: dict[str, Any],
    *,
    occurred_at: datetime,
    user_agent: str | None,
    ip: str | None = None,
    url: Any = None,
    machine: str | None = None,
) -> bool:
    """Fill ``properties`` of an ESP-reported ``open`` or ``click`` the way postwise's own
    tracking would: a machine open (``machine`` when the vendor says so, else judged from the
    user agent and IP) or a link scanner's click is flagged, and a click keeps its URL.
    Returns False for a click without a URL, which the vendor event cannot be recorded without.
    """

    if kind == "open":
        machine = machine or classify_open(user_agent, ip, sent_at=None, now=occurred_at)
        if machine:
            properties.update(machine_open=True, machine_reason=machine)
        return True
    if not isinstance(url, str) or not url:
        return False
    properties["url"] = url[:2000]
    scanner = classify_click(user_agent, sent_at=None, now=occurred_at)
    if scanner:
        properties.update(scanner=True, scanner_reason=scanner)
    return True


def short_id(vendor_id: str) -> str:
    """``vendor_id``, hashed when longer than 64 characters, so that ids built from it stay
    within the 100 characters events allow."""
    if len(vendor_id) <= 64:
        return vendor_id
    return hashlib.sha256(vendor_id.encode()).hexdigest()


def bounded_id(provider: str, vendor_id: str, suffix: str = "") -> str:
    """``provider:<short id>[:suffix]``: the id of a postwise event made from a vendor event."""
    return f"{provider}:{short_id(vendor_id)}{':' + suffix if suffix else ''}"


def _seen_key(provider: str, vendor_id: str) -> str:
    return _SEEN_PREFIX + bounded_id(provider, vendor_id)


def record_events(
    runtime: Runtime,
    provider: str,
    events: Sequence[MappedEvent],
    *,
    remember_seconds: int,
    summary: WebhookSummary,
) -> WebhookSummary:
    """Act on ``events`` (see the module docs) and add the counts to ``summary``."""

    acting = [event for event in events if event.acts]
    summary.ignored += len(events) - len(acting)
    if not acting:
        return summary
    redis = runtime.redis
    pipe = redis.pipeline(transaction=False)
    for event in acting:
        pipe.exists(_seen_key(provider, event.vendor_id))
    fresh = [event for event, seen in zip(acting, pipe.execute(), strict=True) if not seen]
    summary.duplicates += len(acting) - len(fresh)
    items: list[dict[str, Any]] = []
    for event in fresh:
        if event.feedback is not None:
            feedback = event.feedback
            record_provider_feedback(
                runtime,
                provider=provider,
                kind=feedback.kind,
                recipient=event.recipient,
                message_id=event.message_id,
                status=feedback.status,
                smtp_code=feedback.smtp_code,
                diagnostic=feedback.diagnostic,
                feedback_type=feedback.feedback_type,
                # record_provider_feedback prefixes the provider's name itself.
                event_id=short_id(event.vendor_id),
                occurred_at=event.occurred_at,
            )
        if event.unsubscribe:
            _unsubscribe(runtime, provider, event)
        if event.publish is not None:
            items.append(_analytics_item(provider, event))
    if items:
        result = ingest(runtime, items, partial=True)
        summary.unmatched += len(result.rejected)
        for rejected in result.rejected:
            log.info("%s webhook event not published: %s", provider, rejected.error)
    pipe = redis.pipeline(transaction=False)
    for event in fresh:
        pipe.set(_seen_key(provider, event.vendor_id), b"1", ex=remember_seconds + _SKEW_SECONDS)
    pipe.execute()
    summary.recorded += len(fresh)
    return summary


def record_raw_events(
    runtime: Runtime,
    provider: str,
    raw_events: Any,
    map_event: Callable[[Any], MappedEvent | None],
    *,
    remember_seconds: int,
    max_age: float | None = None,
    future_tolerance: float = 300.0,
) -> WebhookSummary:
    """Map a verified request's events with ``map_event`` and record them (:func:`record_events`).

    Events ``map_event`` cannot read count as ``invalid``; with ``max_age``, events that
    happened longer ago count as ``expired`` and those more than ``future_tolerance`` seconds
    ahead as ``invalid``, and neither is recorded. Raises ``ValueError`` unless ``raw_events``
    is a list.
    """
    if not isinstance(raw_events, list):
        raise ValueError("the events must be a JSON array")
    summary = WebhookSummary(received=len(raw_events))
    now = time.time()
    mapped: list[MappedEvent] = []
    for raw in raw_events:
        event = map_event(raw)
        age = now - event.occurred_at.timestamp() if event is not None else 0.0
        if event is None or age < -future_tolerance:
            summary.invalid += 1
        elif max_age is not None and age > max_age:
            summary.expired += 1
        else:
            mapped.append(event)
    return record_events(
        runtime, provider, mapped, remember_seconds=remember_seconds, summary=summary
    )


def _analytics_item(provider: str, event: MappedEvent) -> dict[str, Any]:
    assert event.publish is not None
    item: dict[str, Any] = {
        "event_id": bounded_id(provider, event.vendor_id, event.publish),
        "type": event.publish,
        "occurred_at": event.occurred_at,
        "provider": provider,
        "properties": {**event.properties, "source": f"webhook:{provider}"},
    }
    if event.message_id is not None:
        item["message_id"] = event.message_id
    elif event.recipient:
        item["email"] = event.recipient
    return item


def _unsubscribe(runtime: Runtime, provider: str, event: MappedEvent) -> None:
    """Unsubscribe the contact the ledger names for the message, else the address."""

    source = f"webhook:{provider}"
    with runtime.session() as session:
        row = session.get(LedgerRow, event.message_id) if event.message_id else None
        try:
            if row is not None and row.contact_id is not None:
                unsubscribe(session, row.contact_id, source=source, message_id=event.message_id)
            elif event.recipient:
                unsubscribe_email(session, event.recipient, source=source)
        except (NotFoundError, ValidationError) as exc:
            # An erased contact or a malformed address: nothing left to unsubscribe.
            log.info("%s unsubscribe event %s not applied: %s", provider, event.vendor_id, exc)
