"""Acting on what comes back: bounces, complaints and the sending volume behind the rates.

Reports reach postwise three ways, and all end in :func:`apply_classification`:

* SMTP replies during sending: the delivery worker puts a ``bounce`` event on the stream, read
  here by the consumer group ``compliance`` (:class:`ComplianceConsumer`);
* DSNs and ARF reports in the bounce mailbox (maildir or IMAP): :func:`process_mailbox`;
* ESP webhooks: provider plugins call :func:`record_provider_feedback`.

What each verdict does (the reason decides; see ``postwise.compliance.bounces.reasons``):

* ``hard`` (only recipient-side permanent reasons: user unknown, host unknown, has moved, not
  accepted): the address is suppressed at once (scope ``all``), the contact's status becomes
  ``bounced`` and its unsent messages are skipped;
* ``soft`` with reason ``undetermined`` (an unrecognised 5xx, or a bounce that says it failed
  but not why): counted per address, once per message, and only ``undetermined_bounce_limit``
  of them within ``undetermined_bounce_window_days`` suppress it;
* other ``soft``: counted in Redis per address, once per message (repeated delay warnings about
  one message count once); ``soft_bounce_limit`` of them within ``soft_bounce_window_days``
  suppress it like a hard bounce;
* ``block`` (sender-side: IP/PTR/RBL, policy, DMARC, sender refused...): never suppresses the
  address; counts against the sending stream's reputation and is logged as an alert (counter
  ``alert:<reason>``);
* ``complaint``: the contact is unsubscribed, the address suppressed, the status ``complained``;
* ``auto_reply`` and ``unknown``: nothing but a log line and a counter. A malformed DSN is
  ``unknown``: postwise never suppresses on a guess.

Every action is idempotent and keyed by the event id, so a report seen twice (a webhook retried,
the same event read again after a crash) acts once and is counted once in the reputation rates.
"""

from __future__ import annotations

import email.policy
import hashlib
import logging
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from email.parser import BytesParser
from typing import TYPE_CHECKING, Any

from sqlmodel import Session, col, select

from postwise.compliance import reputation
from postwise.compliance.bounces import (
    REASONS,
    BounceClassification,
    BounceKind,
    BounceReason,
    Side,
    classify_message,
    classify_smtp_reply,
    parse_status,
)
from postwise.compliance.suppression import (
    SuppressionReason,
    SuppressionScope,
    scrub_addresses,
    suppress_hash,
)
from postwise.compliance.unsubscribe import (
    is_unsubscribe_request,
    process_unsubscribe_mail,
    skip_queued_messages,
    unsubscribe,
)
from postwise.contacts.normalize import email_domain, email_hash, normalize_email
from postwise.db.models import Contact, ContactStatus, utcnow
from postwise.db.models import Message as LedgerRow
from postwise.errors import PostwiseError, ValidationError
from postwise.events import EventEnvelope
from postwise.redis_client import as_text
from postwise.streams.consumer import Entry, StreamConsumer
from postwise.streams.publish import publish

if TYPE_CHECKING:
    import redis

    from postwise.runtime import Runtime

__all__ = [
    "CONSUMER_GROUP",
    "ComplianceConsumer",
    "MailboxRun",
    "ProcessingOutcome",
    "apply_classification",
    "bounce_keys",
    "classification_from_event",
    "counters",
    "process_mailbox",
    "process_raw_report",
    "record_provider_feedback",
    "soft_bounce_key",
    "undetermined_bounce_key",
]

log = logging.getLogger(__name__)

CONSUMER_GROUP = "compliance"
_DONE = "postwise:compliance:done:"
_SOFT = "postwise:compliance:soft:"
_UNDETERMINED = "postwise:compliance:undetermined:"
_COUNTERS = "postwise:compliance:counts"
#: How long an event id is remembered as handled; redeliveries come within minutes, webhook
#: retries within a few days.
_DONE_TTL_SECONDS = 7 * 86400
_EMITTED_KINDS = {
    BounceKind.HARD: "bounce",
    BounceKind.SOFT: "bounce",
    BounceKind.BLOCK: "bounce",
    BounceKind.COMPLAINT: "complaint",
}
_REPUTATION_METRIC = {
    BounceKind.HARD: reputation.Metric.HARD,
    BounceKind.SOFT: reputation.Metric.SOFT,
    BounceKind.BLOCK: reputation.Metric.BLOCK,
    BounceKind.COMPLAINT: reputation.Metric.COMPLAINT,
}
#: The reason a report gets when the provider names only a kind.
_PROVIDER_KIND_REASONS = {
    BounceKind.HARD: BounceReason.USER_UNKNOWN,
    BounceKind.SOFT: BounceReason.UNDETERMINED,
    BounceKind.BLOCK: BounceReason.BLOCKED,
    BounceKind.COMPLAINT: BounceReason.FEEDBACK,
    BounceKind.AUTO_REPLY: BounceReason.AUTO_REPLY,
    BounceKind.UNKNOWN: BounceReason.UNDETERMINED,
}
#: Contact statuses in order of severity: a later report never downgrades an earlier one.
_SEVERITY = {
    ContactStatus.ACTIVE: 0,
    ContactStatus.UNSUBSCRIBED: 1,
    ContactStatus.BOUNCED: 2,
    ContactStatus.COMPLAINED: 3,
}


@dataclass(frozen=True, slots=True)
class ProcessingOutcome:
    """What was done with one report."""

    event_id: str
    kind: str
    #: suppressed, soft_counted, soft_suppressed, undetermined_counted, undetermined_suppressed,
    #: unsubscribed, reputation, ignored, duplicate
    action: str
    contact_id: int | None
    reason: str
    paused: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "event_id": self.event_id,
            "kind": self.kind,
            "action": self.action,
            "contact_id": self.contact_id,
            "reason": self.reason,
            "paused": list(self.paused),
        }


def soft_bounce_key(hashed_address: str) -> str:
    """The Redis sorted set of an address's recent soft bounces (erasure deletes it)."""
    return _SOFT + hashed_address


def undetermined_bounce_key(hashed_address: str) -> str:
    """The Redis sorted set of an address's recent permanent failures of undetermined cause."""
    return _UNDETERMINED + hashed_address


def bounce_keys(hashed_address: str) -> list[str]:
    """Every Redis key that holds bounce counts of an address (erasure deletes them)."""
    return [soft_bounce_key(hashed_address), undetermined_bounce_key(hashed_address)]


def _count_recent(redis_client: redis.Redis, key: str, member: str, now: float, days: int) -> int:
    """Add ``member`` to the sorted set ``key`` and count its members of the last ``days``."""
    window = days * 86400
    pipe = redis_client.pipeline(transaction=True)
    pipe.zadd(key, {member: now})
    pipe.zremrangebyscore(key, "-inf", now - window)
    pipe.zcard(key)
    pipe.expire(key, window)
    return int(pipe.execute()[2])


def counters(redis_client: redis.Redis) -> dict[str, int]:
    """How many reports of each kind were handled, and how many acted on (for status pages)."""
    return {as_text(k): int(v) for k, v in redis_client.hgetall(_COUNTERS).items()}


@dataclass(frozen=True, slots=True)
class _Target:
    contact: Contact | None
    address: str | None
    provider: str | None


def _resolve(
    session: Session, classification: BounceClassification, contact_id: int | None
) -> _Target:
    """Find the contact a report is about: by contact id, by our message id, by address."""
    provider = None
    if contact_id is None and classification.message_id:
        row = session.get(LedgerRow, classification.message_id)
        if row is not None:
            contact_id = row.contact_id
            provider = row.provider
    contact = session.get(Contact, contact_id) if contact_id is not None else None
    if contact is None and classification.recipient:
        try:
            address = normalize_email(classification.recipient)
        except ValidationError:
            address = None
        if address is not None:
            contact = session.exec(select(Contact).where(Contact.email == address)).first()
            if contact is None:
                return _Target(None, address, provider)
    if contact is not None:
        return _Target(contact, contact.email, provider)
    return _Target(None, None, provider)


def _raise_status(session: Session, contact: Contact, status: ContactStatus) -> None:
    if _SEVERITY.get(ContactStatus(contact.status), 0) < _SEVERITY[status]:
        contact.status = status
        contact.updated_at = utcnow()
        session.add(contact)
        session.flush()


def _suppress_bounced(
    session: Session,
    hashed: str,
    contact: Contact | None,
    reason: SuppressionReason,
    detail: str | None,
) -> None:
    """The address cannot receive mail: suppress it for everything, mark the contact bounced
    and skip its unsent messages, transactional ones included."""
    suppress_hash(session, hashed, reason=reason, detail=detail)
    if contact is not None and contact.id is not None:
        _raise_status(session, contact, ContactStatus.BOUNCED)
        skip_queued_messages(session, contact.id, reason="bounced", include_transactional=True)


def _act(
    session: Session,
    redis_client: redis.Redis,
    settings: Any,
    *,
    classification: BounceClassification,
    target: _Target,
    event_id: str,
    now: float,
) -> tuple[str, str]:
    """Apply the database side of a classification; returns (action, reason)."""
    kind = classification.kind
    detail = scrub_addresses(
        " ".join(p for p in (classification.status, classification.diagnostic) if p)
    )
    contact = target.contact
    hashed = email_hash(target.address) if target.address else None
    info = REASONS[classification.reason]
    if kind is BounceKind.HARD and info.side is Side.RECIPIENT:
        if hashed is None:
            return "ignored", "hard bounce names no address or known contact"
        _suppress_bounced(session, hashed, contact, SuppressionReason.HARD_BOUNCE, detail)
        return "suppressed", f"hard bounce ({classification.reason.value}): address suppressed"
    # One count per message: an MTA that keeps retrying sends several delay warnings for the
    # same message (then maybe delivers it), and those are one bounce, not many.
    member = f"message:{classification.message_id}" if classification.message_id else event_id
    if kind is BounceKind.SOFT and classification.reason is BounceReason.UNDETERMINED:
        # A failure nobody could explain: the address may well be gone, but one such report is
        # no proof, and the soft rule's short window is for known passing causes. Only repeats
        # within their own (longer) window suppress.
        if hashed is None:
            return "ignored", "failure of undetermined cause names no address or known contact"
        limit = settings.undetermined_bounce_limit
        days = settings.undetermined_bounce_window_days
        recent = _count_recent(redis_client, undetermined_bounce_key(hashed), member, now, days)
        if recent < limit:
            return "undetermined_counted", (
                f"failure of undetermined cause {recent} of {limit} within {days} days"
            )
        summary = (
            f"{recent} failures of undetermined cause within {days} days; "
            f"last: {detail or 'no diagnostic'}"
        )
        _suppress_bounced(session, hashed, contact, SuppressionReason.HARD_BOUNCE, summary)
        return "undetermined_suppressed", (
            f"{recent} failures of undetermined cause: address suppressed"
        )
    if kind is BounceKind.SOFT:
        if hashed is None:
            return "ignored", "soft bounce names no address or known contact"
        days = settings.soft_bounce_window_days
        recent = _count_recent(redis_client, soft_bounce_key(hashed), member, now, days)
        if recent < settings.soft_bounce_limit:
            return "soft_counted", (
                f"soft bounce ({classification.reason.value}) {recent} of "
                f"{settings.soft_bounce_limit} within {days} days"
            )
        summary = f"{recent} soft bounces within {days} days; last: {detail or 'no diagnostic'}"
        _suppress_bounced(session, hashed, contact, SuppressionReason.SOFT_BOUNCE, summary)
        return "soft_suppressed", f"{recent} soft bounces within the window: address suppressed"
    if kind is BounceKind.COMPLAINT:
        if hashed is None:
            return "ignored", "complaint names no address or known contact"
        if contact is not None and contact.id is not None:
            unsubscribe(
                session, contact.id, source="complaint", message_id=classification.message_id
            )
            _raise_status(session, contact, ContactStatus.COMPLAINED)
        suppress_hash(
            session,
            hashed,
            reason=SuppressionReason.COMPLAINT,
            scope=SuppressionScope.ALL,
            detail=classification.feedback_type,
        )
        return "unsubscribed", "complaint: unsubscribed and suppressed"
    if kind in (BounceKind.BLOCK, BounceKind.HARD):
        # The sender was refused (IP, PTR, RBL, policy, DMARC...): nothing is wrong with the
        # recipient. It counts against the stream's reputation, and is logged as an alert.
        log.warning(
            "sender-side refusal (%s) reported by the receiving side: %s",
            classification.reason.value,
            detail or "no diagnostic",
        )
        _count(redis_client, f"alert:{classification.reason.value}")
        return "reputation", (
            f"refused for the sender ({classification.reason.value}): counted against the "
            "sending stream's reputation, the recipient is not suppressed"
        )
    return "ignored", classification.explanation or f"{kind.value}: nothing to do"


def apply_classification(
    runtime: Runtime,
    classification: BounceClassification,
    *,
    contact_id: int | None = None,
    provider: str | None = None,
    sending_domain: str | None = None,
    event_id: str | None = None,
    occurred_at: datetime | None = None,
    source: str = "mailbox",
    emit: bool = True,
) -> ProcessingOutcome:
    """Act on one classified report; see the module docs for what each kind does.

    ``event_id`` makes the call idempotent (a fresh id is made when none is given). With
    ``emit`` a ``bounce`` or ``complaint`` event is put on the stream for analytics; the
    compliance consumer recognises it as handled. Events carry the contact id and the
    recipient's domain, never the address.
    """
    event_id = event_id or f"feedback-{uuid.uuid4().hex}"
    redis_client = runtime.redis
    settings = runtime.settings
    kind = classification.kind
    # Reports are counted when they happened: a consumer catching up on a backlog must not
    # see a week of soft bounces as one burst.
    now = min(time.time(), occurred_at.timestamp()) if occurred_at else time.time()
    _count(redis_client, f"received:{kind.value}")
    if redis_client.exists(_DONE + event_id):
        return ProcessingOutcome(
            event_id, kind.value, "duplicate", contact_id, "this report was handled already"
        )
    with runtime.session() as session:
        target = _resolve(session, classification, contact_id)
        status_before = target.contact.status if target.contact is not None else None
        action, reason = _act(
            session,
            redis_client,
            settings,
            classification=classification,
            target=target,
            event_id=event_id,
            now=now,
        )
        found_id = target.contact.id if target.contact is not None else None
        status_after = target.contact.status if target.contact is not None else None
    if found_id is not None and status_after != status_before:
        # CRM connectors and other plugins keep the status in step (a bounced contact is
        # marked so in the CRM too).
        runtime.plugins.hook.postwise_contact_changed(
            contact_id=found_id, changes={"status": str(status_after)}, source="compliance"
        )
    provider = provider or target.provider
    recipient_domain = email_domain(target.address) if target.address else None
    sending_domain = sending_domain or reputation.default_sending_domain(settings)
    paused: list[str] = []
    # Marking the report handled only after the database committed keeps at-least-once: a
    # crash in between repeats idempotent actions, never skips them.
    if redis_client.set(_DONE + event_id, "1", nx=True, ex=_DONE_TTL_SECONDS):
        _count(redis_client, f"action:{action}")
        metric = _REPUTATION_METRIC.get(kind)
        if metric is not None:
            paused = reputation.record(
                runtime,
                metric,
                provider=provider,
                sending_domain=sending_domain,
                recipient_domain=recipient_domain,
                at=now,
            )
        if emit and kind in _EMITTED_KINDS:
            _emit(
                runtime,
                classification,
                event_id=event_id,
                contact_id=found_id,
                provider=provider,
                recipient_domain=recipient_domain,
                sending_domain=sending_domain,
                source=source,
                occurred_at=occurred_at,
            )
    if kind in (BounceKind.UNKNOWN, BounceKind.AUTO_REPLY):
        log.info("report not acted on (%s): %s", kind.value, classification.explanation)
    else:
        log.info("%s report for contact %s: %s", kind.value, found_id, reason)
    return ProcessingOutcome(event_id, kind.value, action, found_id, reason, tuple(paused))


def _count(redis_client: redis.Redis, name: str) -> None:
    redis_client.hincrby(_COUNTERS, name, 1)


def _emit(
    runtime: Runtime,
    classification: BounceClassification,
    *,
    event_id: str,
    contact_id: int | None,
    provider: str | None,
    recipient_domain: str | None,
    sending_domain: str | None,
    source: str,
    occurred_at: datetime | None,
) -> None:
    event = EventEnvelope(
        event_id=event_id,
        type=_EMITTED_KINDS[classification.kind],
        occurred_at=occurred_at or datetime.now(UTC),
        contact_id=contact_id,
        message_id=classification.message_id,
        provider=provider,
        properties={
            "kind": classification.kind.value,
            "reason": classification.reason.value,
            "status": classification.status,
            "smtp_code": classification.smtp_code,
            "diagnostic": scrub_addresses(classification.diagnostic),
            "feedback_type": classification.feedback_type,
            "recipient_domain": recipient_domain,
            "sending_domain": sending_domain,
            "source": source,
        },
    )
    publish(runtime, [event])


def record_provider_feedback(
    runtime: Runtime,
    *,
    provider: str,
    kind: str | None,
    recipient: str | None = None,
    message_id: str | None = None,
    status: str | None = None,
    smtp_code: int | None = None,
    diagnostic: str = "",
    feedback_type: str | None = None,
    event_id: str | None = None,
    occurred_at: datetime | None = None,
) -> ProcessingOutcome:
    """What ESP webhook handlers call for each bounce or spam report they receive.

    ``kind`` is ``hard``, ``soft``, ``block`` or ``complaint`` when the ESP says which; pass
    ``None`` (or ``"bounce"``) to have it classified from ``smtp_code``, ``status`` and
    ``diagnostic`` the same way SMTP replies are. ``message_id`` is postwise's message id when
    the ESP echoes it back (custom args); ``recipient`` the address otherwise. ``event_id``
    should be the ESP's own event id so that webhook retries act once.
    """
    classification = _provider_classification(
        kind,
        recipient=recipient,
        message_id=message_id,
        status=status,
        smtp_code=smtp_code,
        diagnostic=diagnostic,
        feedback_type=feedback_type,
    )
    if event_id is not None:
        event_id = f"{provider}:{event_id}"
    return apply_classification(
        runtime,
        classification,
        provider=provider,
        event_id=event_id,
        occurred_at=occurred_at,
        source=f"webhook:{provider}",
    )


def _provider_classification(
    kind: str | None,
    *,
    recipient: str | None,
    message_id: str | None,
    status: str | None,
    smtp_code: int | None,
    diagnostic: str,
    feedback_type: str | None,
) -> BounceClassification:
    if kind in (None, "bounce"):
        code = smtp_code
        if code is None and status and status[:1] in "45":
            code = 550 if status.startswith("5") else 450
        if code is None:
            return BounceClassification(
                BounceKind.UNKNOWN,
                recipient=recipient,
                status=status,
                diagnostic=diagnostic,
                explanation="the provider gave neither a kind nor an SMTP or status code",
                message_id=message_id,
            )
        text = " ".join(p for p in (status, diagnostic) if p)
        found = classify_smtp_reply(code, text)
        return replace(found, recipient=recipient, message_id=message_id)
    try:
        parsed = BounceKind(kind)
    except ValueError:
        allowed = ", ".join(k.value for k in BounceKind)
        raise ValidationError(
            f"{kind!r} is not a feedback kind; use one of {allowed}", field="kind"
        ) from None
    words = " ".join(p for p in (status, diagnostic) if p)
    quotes_server = smtp_code is not None or bool(
        parse_status(words) or re.match(r"\s*[45]\d\d\b", diagnostic)
    )
    if parsed in {BounceKind.HARD, BounceKind.SOFT, BounceKind.BLOCK} and quotes_server:
        # The remote server's words outrank the ESP's label: a "hard bounce" for an RBL listing
        # or a DMARC failure is the sender's problem, and must not suppress the recipient. An
        # ESP's own wording ("rejected by <ESP>: hard bounce") quotes no server and is its
        # verdict, kept as given.
        permanent = parsed is not BounceKind.SOFT
        code = smtp_code if smtp_code and 400 <= smtp_code < 600 else (550 if permanent else 450)
        found = classify_smtp_reply(code, words)
        if found.reason is not BounceReason.UNDETERMINED:
            return replace(
                found,
                recipient=recipient,
                message_id=message_id,
                diagnostic=diagnostic or found.diagnostic,
                explanation=f"reported by the provider as {parsed.value}; {found.explanation}",
            )
    return BounceClassification(
        parsed,
        _PROVIDER_KIND_REASONS[parsed],
        recipient=recipient,
        status=status,
        diagnostic=diagnostic,
        explanation=f"reported by the provider as {parsed.value}",
        smtp_code=smtp_code,
        message_id=message_id,
        feedback_type=feedback_type,
    )


def classification_from_event(event: EventEnvelope) -> BounceClassification:
    """The classification a ``bounce`` or ``complaint`` event carries.

    Events postwise emitted carry ``kind``; a delivery worker's bounce carries the SMTP reply
    (``code``/``smtp_code``, ``status``, ``reason``/``diagnostic``), classified here. Anything
    else is ``unknown``.
    """
    props: Mapping[str, Any] = event.properties
    if event.type == "complaint":
        return BounceClassification(
            BounceKind.COMPLAINT,
            BounceReason.FEEDBACK,
            status=props.get("status"),
            feedback_type=props.get("feedback_type") or "abuse",
            explanation="complaint event",
            message_id=event.message_id,
        )
    kind = props.get("kind")
    if isinstance(kind, str) and kind in {k.value for k in BounceKind}:
        code = props.get("smtp_code")
        reason = props.get("reason")
        known = {r.value for r in BounceReason}
        return BounceClassification(
            BounceKind(kind),
            BounceReason(reason) if reason in known else _PROVIDER_KIND_REASONS[BounceKind(kind)],
            status=props.get("status"),
            diagnostic=str(props.get("diagnostic") or ""),
            explanation=f"{kind} bounce event",
            smtp_code=code if isinstance(code, int) else None,
            message_id=event.message_id,
            feedback_type=props.get("feedback_type"),
        )
    code = props.get("smtp_code", props.get("code"))
    text = " ".join(
        str(p) for p in (props.get("status"), props.get("diagnostic") or props.get("reason")) if p
    )
    if isinstance(code, int) and 400 <= code < 600:
        return replace(classify_smtp_reply(code, text), message_id=event.message_id)
    return BounceClassification(
        BounceKind.UNKNOWN,
        BounceReason.UNDETERMINED,
        explanation="bounce event without a kind or an SMTP reply code",
        message_id=event.message_id,
    )


class ComplianceConsumer(StreamConsumer):
    """Reads ``postwise:events`` in the consumer group ``compliance``.

    ``bounce`` and ``complaint`` events are acted on (unless already handled when they were
    first reported); ``sent`` and ``delivered`` events feed the reputation volume. Entries are
    acknowledged only after they were processed; entries another consumer left pending for
    longer than ``claim_idle_ms`` are claimed and processed again (idempotently).
    """

    def __init__(
        self,
        runtime: Runtime,
        *,
        name: str | None = None,
        batch_size: int = 500,
        claim_idle_ms: int = 60_000,
    ) -> None:
        super().__init__(
            runtime.redis,
            group=CONSUMER_GROUP,
            consumer=name,
            batch_size=batch_size,
            claim_idle_ms=claim_idle_ms,
        )
        self.runtime = runtime

    @property
    def name(self) -> str:
        """This consumer's name in the group."""
        return self.consumer

    def run_once(self, *, block_ms: int | None = None) -> int:
        """Process one batch (reclaimed entries first); returns how many entries were handled."""
        return self.step(block_ms)

    def handle(self, entries: Sequence[Entry]) -> None:
        """Process stream entries: volume counters in one go, reports one by one."""
        decoded, bad = self.decode(entries)
        for entry_id, _fields in bad:
            log.warning("skipping unreadable stream entry %r", entry_id)
        events = [event for _entry_id, event in decoded]
        volume = [e for e in events if e.type in ("sent", "delivered")]
        if volume:
            self._count_volume(volume)
        for event in events:
            if event.type not in ("bounce", "complaint"):
                continue
            try:
                apply_classification(
                    self.runtime,
                    classification_from_event(event),
                    contact_id=event.contact_id,
                    provider=event.provider,
                    sending_domain=event.properties.get("sending_domain"),
                    event_id=event.event_id,
                    occurred_at=event.occurred_at,
                    source="stream",
                    emit=False,
                )
            except PostwiseError as exc:
                # Bad content in one event must not hold up the stream; infrastructure
                # errors propagate and leave the batch unacknowledged for a retry.
                log.warning("event %s not processed: %s", event.event_id, exc)

    def _count_volume(self, events: list[EventEnvelope]) -> None:
        """Add sent and delivered events to the reputation counters.

        Events that do not carry ``recipient_domain`` get it from their contact: one query for
        the batch, not one per event.
        """
        missing = {
            e.contact_id
            for e in events
            if e.contact_id is not None and not e.properties.get("recipient_domain")
        }
        domains: dict[int, str] = {}
        if missing:
            with self.runtime.session() as session:
                rows = session.exec(
                    select(Contact.id, Contact.email).where(col(Contact.id).in_(missing))
                )
                domains = {cid: email_domain(addr) for cid, addr in rows if cid is not None}
        settings = self.runtime.settings
        default_domain = reputation.default_sending_domain(settings)
        grouped: dict[tuple[str, str | None, str | None, str | None, int], int] = {}
        for event in events:
            recipient_domain = event.properties.get("recipient_domain") or (
                domains.get(event.contact_id) if event.contact_id is not None else None
            )
            key = (
                event.type,
                event.provider,
                event.properties.get("sending_domain") or default_domain,
                recipient_domain,
                int(event.occurred_at.timestamp() // 60) * 60,
            )
            grouped[key] = grouped.get(key, 0) + 1
        for (metric, provider, sending_domain, recipient_domain, at), count in grouped.items():
            reputation.record(
                self.runtime,
                metric,
                provider=provider,
                sending_domain=sending_domain,
                recipient_domain=recipient_domain,
                count=count,
                at=at,
            )


@dataclass(slots=True)
class MailboxRun:
    """What one pass over the bounce mailbox did."""

    read: int = 0
    by_kind: dict[str, int] = field(default_factory=dict)
    by_action: dict[str, int] = field(default_factory=dict)
    unsubscribes: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "by_kind": dict(self.by_kind),
            "by_action": dict(self.by_action),
            "unsubscribes": self.unsubscribes,
        }


def process_raw_report(runtime: Runtime, raw: bytes) -> ProcessingOutcome:
    """Classify and act on one message from the bounce mailbox.

    A DSN, complaint or auto-reply is handled by its classification. A message that is none
    of these but was sent to the unsubscribe address (or says "unsubscribe") is a mailto
    unsubscribe. The event id derives from the message bytes, so reading the same message
    twice (the mailbox was not acknowledged before a crash) acts once.
    """
    event_id = "mailbox:" + hashlib.sha256(raw).hexdigest()[:40]
    classification = classify_message(raw)
    if classification.kind is BounceKind.UNKNOWN:
        headers = BytesParser(policy=email.policy.default).parsebytes(raw, headersonly=True)
        if is_unsubscribe_request(headers, runtime.settings):
            with runtime.session() as session:
                result = process_unsubscribe_mail(session, runtime.settings, raw)
            action = "unsubscribed" if result.changed else "ignored"
            return ProcessingOutcome(
                event_id,
                "unsubscribe",
                action,
                result.contact_id,
                f"mailto unsubscribe ({result.reason})",
            )
    return apply_classification(runtime, classification, event_id=event_id, source="mailbox")


def process_mailbox(
    runtime: Runtime,
    *,
    spec: str | None = None,
    move_to: str | None = None,
    limit: int | None = None,
) -> MailboxRun:
    """Read the unseen messages of the bounce mailbox (``bounce_mailbox`` or ``spec``), act on
    each (:func:`process_raw_report`) and acknowledge it once its outcome is committed.

    A failure (database down) stops the pass with the message unacknowledged, so the next
    pass reads it again; nothing is lost.
    """
    from postwise.compliance.mailbox import open_mailbox

    run = MailboxRun()
    source = open_mailbox(
        spec if spec is not None else runtime.settings.bounce_mailbox, move_to=move_to
    )
    with source:
        for message in source.messages():
            outcome = process_raw_report(runtime, message.raw)
            message.acknowledge()
            run.read += 1
            run.by_kind[outcome.kind] = run.by_kind.get(outcome.kind, 0) + 1
            run.by_action[outcome.action] = run.by_action.get(outcome.action, 0) + 1
            if outcome.kind == "unsubscribe" and outcome.action == "unsubscribed":
                run.unsubscribes += 1
            if limit is not None and run.read >= limit:
                break
    return run
