"""Unsubscribing: by one-click link (RFC 8058), by mail (``List-Unsubscribe: <mailto:...>``), by
API and by complaint, all through :func:`unsubscribe`.

An unsubscribe takes effect at once: the contact's status becomes ``unsubscribed``, a withdrawal
of ``marketing`` consent is appended to the ledger, the address is suppressed for marketing (by
hash, so it survives a re-import), and the contact's queued marketing messages in the ledger are
marked skipped. The delivery gate checks status and suppressions before every send as well, so a
message already in a worker's batch is not sent either. Transactional mail (receipts, password
resets) still goes out.
"""

from __future__ import annotations

import contextlib
import email.policy
import email.utils
import logging
import re
from dataclasses import dataclass
from email.message import EmailMessage, Message
from email.parser import BytesParser

from sqlmodel import Session, col, select

from postwise import tokens
from postwise.compliance.consent import MARKETING, current_consent, withdraw_consent
from postwise.compliance.suppression import (
    SuppressionReason,
    SuppressionScope,
    is_suppressed,
    suppress,
)
from postwise.contacts.normalize import email_hash, normalize_email
from postwise.db.models import AuditRecord, Contact, ContactStatus, MessageStatus, utcnow
from postwise.db.models import Message as LedgerRow
from postwise.errors import NotFoundError, ValidationError
from postwise.settings import Settings

__all__ = [
    "MailUnsubscribe",
    "is_unsubscribe_request",
    "process_unsubscribe_mail",
    "skip_queued_messages",
    "unsubscribe",
    "unsubscribe_email",
]

log = logging.getLogger(__name__)

#: Ledger states in which a message has not reached a provider yet.
PENDING_STATES = (MessageStatus.QUEUED.value, MessageStatus.RETRYING.value)

_TOKEN_RE = re.compile(r"[A-Za-z0-9_-]{24,}")
_UNSUBSCRIBE_WORD_RE = re.compile(r"\b(unsubscribe|opt[ -]?out|remove me)\b", re.I)


def skip_queued_messages(
    session: Session, contact_id: int, *, reason: str, include_transactional: bool = False
) -> int:
    """Mark the contact's not-yet-sent ledger rows skipped with ``reason``; returns how many.

    Workers look the ledger row up before sending (that is what makes sending exactly-once), so
    a skipped row is never sent even when its job is already queued.
    """
    query = select(LedgerRow).where(
        LedgerRow.contact_id == contact_id, col(LedgerRow.status).in_(PENDING_STATES)
    )
    if not include_transactional:
        query = query.where(col(LedgerRow.transactional).is_(False))
    count = 0
    now = utcnow()
    for row in session.exec(query):
        row.status = MessageStatus.SKIPPED
        row.last_error = reason
        row.updated_at = now
        session.add(row)
        count += 1
    session.flush()
    return count


def unsubscribe(
    session: Session, contact_id: int, *, source: str, message_id: str | None = None
) -> bool:
    """Unsubscribe ``contact_id`` from marketing mail; returns whether anything changed.

    Idempotent: a second call returns ``False`` and records nothing more. ``source`` says how
    the request came (``one-click``, ``link``, ``mailto``, ``api``, ``complaint``...);
    ``message_id`` is the ledger id of the message it came from, kept in the audit record.
    Raises NotFoundError for an unknown contact.
    """
    contact = session.get(Contact, contact_id)
    if contact is None:
        raise NotFoundError(f"contact {contact_id} does not exist")
    consent = current_consent(session, contact_id, MARKETING)
    already = (
        contact.status != ContactStatus.ACTIVE
        and consent is not None
        and not consent.granted
        and is_suppressed(session, contact.email)
    )
    if already:
        return False
    withdraw_consent(session, contact_id, MARKETING, source=source)
    skipped = skip_queued_messages(session, contact_id, reason="unsubscribed")
    session.add(
        AuditRecord(
            action="unsubscribe",
            subject_hash=email_hash(contact.email),
            actor=source[:100],
            details={"message_id": message_id, "skipped_queued": skipped},
        )
    )
    session.flush()
    log.info("contact %s unsubscribed (source %s)", contact_id, source)
    return True


def unsubscribe_email(session: Session, email: str, *, source: str) -> bool:
    """Unsubscribe the contact with address ``email``; an unknown address is suppressed
    for marketing all the same, so a later import cannot mail it. Returns whether anything
    changed."""
    address = normalize_email(email)
    contact = session.exec(select(Contact).where(Contact.email == address)).first()
    if contact is not None and contact.id is not None:
        return unsubscribe(session, contact.id, source=source)
    if is_suppressed(session, address):
        return False
    suppress(
        session, address, reason=SuppressionReason.UNSUBSCRIBE, scope=SuppressionScope.MARKETING
    )
    return True


@dataclass(frozen=True, slots=True)
class MailUnsubscribe:
    """What an unsubscribe mail asked for and what was done."""

    #: ``token`` when a signed unsubscribe token in the mail identified the contact,
    #: ``sender`` when the From address did, ``none`` when neither did.
    matched_by: str
    contact_id: int | None
    changed: bool
    reason: str


def is_unsubscribe_request(message: Message, settings: Settings) -> bool:
    """Whether ``message`` was sent to the unsubscribe address, or says "unsubscribe".

    Reports (bounces, complaints, auto-replies) must be told apart first; this looks only at
    the addressing and the subject.
    """
    mailto = settings.unsubscribe_mailto.removeprefix("mailto:").partition("?")[0].lower()
    recipients = [
        addr.lower()
        for _, addr in email.utils.getaddresses(
            [str(v) for v in message.get_all("To", []) + message.get_all("Delivered-To", [])]
        )
    ]
    if mailto and mailto in recipients:
        return True
    if mailto and "@" in mailto:
        local, _, domain = mailto.partition("@")
        # Plus-addressing: unsubscribe+TOKEN@example.com reaches the same mailbox.
        if any(r.startswith(local + "+") and r.endswith("@" + domain) for r in recipients):
            return True
    return bool(_UNSUBSCRIBE_WORD_RE.search(str(message.get("Subject", ""))))


def _candidate_tokens(message: Message) -> list[str]:
    texts = [str(message.get("Subject", ""))]
    texts.extend(str(v) for v in message.get_all("To", []))
    body = message.get_body(("plain",)) if isinstance(message, EmailMessage) else None
    if body is not None:
        # An undecodable body simply offers no token.
        with contextlib.suppress(LookupError, ValueError):
            texts.append(body.get_content()[:4000])
    found: list[str] = []
    for text in texts:
        found.extend(_TOKEN_RE.findall(text))
    return found


def _contact_from_token(session: Session, settings: Settings, message: Message) -> int | None:
    keys = settings.signing_keys()
    for candidate in _candidate_tokens(message):
        try:
            payload = tokens.verify(tokens.Purpose.UNSUBSCRIBE, candidate, keys=keys)
        except tokens.InvalidToken:
            continue
        contact_id = payload.get("c")
        if isinstance(contact_id, int):
            return contact_id
        message_id = payload.get("m")
        if isinstance(message_id, str):
            row = session.get(LedgerRow, message_id)
            if row is not None and row.contact_id is not None:
                return row.contact_id
    return None


def process_unsubscribe_mail(session: Session, settings: Settings, raw: bytes) -> MailUnsubscribe:
    """Act on one mail sent to the ``List-Unsubscribe`` mailto address.

    The contact is found by a signed unsubscribe token anywhere in the subject, the recipient
    address or the text (the strongest proof), else by the From address (what RFC 2369 mailto
    unsubscribes rely on; forging it can only unsubscribe someone, never subscribe). A mail
    that names nobody known changes nothing.
    """
    try:
        message = BytesParser(policy=email.policy.default).parsebytes(raw)
    except Exception as exc:  # the parser is lenient; anything it still raises is bad input
        return MailUnsubscribe("none", None, False, f"unreadable mail: {type(exc).__name__}")
    contact_id = _contact_from_token(session, settings, message)
    if contact_id is not None and session.get(Contact, contact_id) is not None:
        changed = unsubscribe(session, contact_id, source="mailto")
        return MailUnsubscribe("token", contact_id, changed, "signed unsubscribe token")
    senders = email.utils.getaddresses([str(v) for v in message.get_all("From", [])])
    for _name, address in senders:
        try:
            normalised = normalize_email(address)
        except ValidationError:
            continue
        contact = session.exec(select(Contact).where(Contact.email == normalised)).first()
        if contact is not None and contact.id is not None:
            changed = unsubscribe(session, contact.id, source="mailto")
            return MailUnsubscribe("sender", contact.id, changed, "From address")
    return MailUnsubscribe("none", None, False, "no signed token and no known sender")
