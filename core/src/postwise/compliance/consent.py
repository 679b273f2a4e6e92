"""The consent ledger: who agreed to what, when, where, and under which wording.

Each grant or withdrawal is a new :class:`~postwise.db.models.ConsentRecord`; nothing is ever
updated in place, so the ledger is the evidence GDPR asks for. The latest record per contact and
purpose is the one in force.

**The rule the delivery gate applies** (and nothing else may weaken it): a marketing message may
go to a contact that needs consent only if the latest ``marketing`` record of that contact is
``granted`` *and* ``confirmed``. :func:`has_valid_consent` is that rule. Whether a contact needs
consent at all is the gate's call: ``require_consent``, or the contact's country listed in
``consent_regions`` (:mod:`postwise.compliance.gate`). A list (segment) with a
``consent_purpose``, or a send request naming one, adds the same rule for that purpose.

Double opt-in: :func:`grant_consent` with ``double_opt_in=True`` records an unconfirmed grant
and returns a signed confirmation link (token purpose ``confirm-consent``); following it appends
a confirmed grant that keeps the IP and time of the confirmation. A withdrawal link (token
purpose ``withdraw-consent``) withdraws with one click, as easily as granting.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlmodel import Session, col, select

from postwise import tokens
from postwise.compliance.suppression import (
    SuppressionReason,
    SuppressionScope,
    suppress,
    suppressions_for,
)
from postwise.contacts.normalize import check_purpose
from postwise.db.engine import id_in
from postwise.db.models import ConsentRecord, Contact, ContactStatus, as_utc, utcnow
from postwise.errors import ConflictError, NotFoundError, ValidationError
from postwise.settings import Settings

__all__ = [
    "CONFIRMATION_TTL_SECONDS",
    "MARKETING",
    "WITHDRAWAL_TTL_SECONDS",
    "ConsentAction",
    "ConsentGrant",
    "ConsentToken",
    "check_purpose",
    "confirm_consent",
    "confirmation_url",
    "consent_history",
    "consented_pairs",
    "current_consent",
    "grant_consent",
    "has_valid_consent",
    "verify_consent_token",
    "withdraw_by_token",
    "withdraw_consent",
    "withdrawal_url",
]

#: The purpose the delivery gate checks for marketing sends.
MARKETING = "marketing"
#: Confirmation links expire after two weeks: long enough for a holiday, short enough that an
#: old link found in a mailbox years later does not create consent nobody remembers giving.
CONFIRMATION_TTL_SECONDS = 14 * 86400
#: Withdrawal links sit in old mails; they must keep working for as long as mail is kept.
WITHDRAWAL_TTL_SECONDS = 10 * 365 * 86400
WITHDRAW_PURPOSE = "withdraw-consent"

_SOURCE_MAX = 100
_WORDING_MAX = 50


class ConsentAction(enum.StrEnum):
    CONFIRM = "confirm"
    WITHDRAW = "withdraw"


@dataclass(frozen=True, slots=True)
class ConsentGrant:
    """A recorded grant and, for a double opt-in, the link that confirms it."""

    record: ConsentRecord
    confirmation_url: str | None


def _check_ip(ip: str | None) -> str | None:
    if ip is None or ip == "":
        return None
    try:
        return str(ipaddress.ip_address(ip.strip()))
    except ValueError:
        raise ValidationError(f"{ip!r} is not an IPv4 or IPv6 address", field="ip") from None


def _check_text(value: str | None, field: str, limit: int) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if len(value) > limit:
        raise ValidationError(f"must be at most {limit} characters", field=field)
    return value or None


def _contact(session: Session, contact_id: int) -> Contact:
    contact = session.get(Contact, contact_id)
    if contact is None:
        raise NotFoundError(f"contact {contact_id} does not exist")
    return contact


def current_consent(session: Session, contact_id: int, purpose: str) -> ConsentRecord | None:
    """The record in force for ``contact_id`` and ``purpose`` (the latest), or ``None``."""
    return session.exec(
        select(ConsentRecord)
        .where(ConsentRecord.contact_id == contact_id, ConsentRecord.purpose == purpose)
        .order_by(col(ConsentRecord.at).desc(), col(ConsentRecord.id).desc())
        .limit(1)
    ).first()


def consent_history(session: Session, contact_id: int) -> list[ConsentRecord]:
    """Every record of ``contact_id``, oldest first."""
    return list(
        session.exec(
            select(ConsentRecord)
            .where(ConsentRecord.contact_id == contact_id)
            .order_by(col(ConsentRecord.at), col(ConsentRecord.id))
        )
    )


def consented_pairs(
    session: Session, contact_ids: Collection[int], purposes: Collection[str]
) -> set[tuple[int, str]]:
    """The consent rule: the (contact, purpose) pairs whose latest consent record is granted
    and confirmed. One query for any number of contacts and purposes; the send gate applies it
    to a page of recipients, :func:`has_valid_consent` to one."""
    purpose_column = col(ConsentRecord.purpose)
    query = (
        sa.select(
            col(ConsentRecord.contact_id),
            purpose_column,
            col(ConsentRecord.granted),
            col(ConsentRecord.confirmed),
        )
        .where(
            id_in(col(ConsentRecord.contact_id), list(contact_ids), session.connection()),
            purpose_column.in_(sorted(purposes)),
        )
        .order_by(
            col(ConsentRecord.contact_id),
            purpose_column,
            col(ConsentRecord.at),
            col(ConsentRecord.id),
        )
    )
    latest: dict[tuple[int, str], bool] = {}
    for contact_id, purpose, granted, confirmed in session.execute(query):
        latest[(contact_id, purpose)] = bool(granted and confirmed)
    return {pair for pair, ok in latest.items() if ok}


def has_valid_consent(session: Session, contact_id: int, purpose: str = MARKETING) -> bool:
    """The gate's rule for one contact: the latest record for ``purpose`` is granted and
    confirmed (:func:`consented_pairs`)."""
    return (contact_id, purpose) in consented_pairs(session, (contact_id,), (purpose,))


def _append(
    session: Session,
    contact_id: int,
    purpose: str,
    *,
    granted: bool,
    confirmed: bool,
    source: str,
    ip: str | None,
    wording_version: str | None,
    at: datetime | None = None,
) -> ConsentRecord:
    record = ConsentRecord(
        contact_id=contact_id,
        purpose=purpose,
        granted=granted,
        confirmed=confirmed,
        source=source,
        ip=ip,
        wording_version=wording_version,
    )
    if at is not None:
        record.at = at
    previous = current_consent(session, contact_id, purpose)
    if previous is not None and record.at <= as_utc(previous.at):
        # Times must strictly increase per contact and purpose: readers (the gate, segment
        # rules) take the record with the latest time, and a tie would let a withdrawal and
        # a grant both look current.
        record.at = as_utc(previous.at) + timedelta(microseconds=1)
    session.add(record)
    session.flush()
    return record


def grant_consent(
    session: Session,
    settings: Settings,
    contact_id: int,
    purpose: str = MARKETING,
    *,
    source: str,
    ip: str | None = None,
    wording_version: str | None = None,
    double_opt_in: bool = False,
) -> ConsentGrant:
    """Record that ``contact_id`` granted consent for ``purpose``.

    With ``double_opt_in`` the grant is recorded unconfirmed (it does not count yet) and the
    result carries the signed link that confirms it; send that link to the address.
    """
    purpose = check_purpose(purpose)
    source_value = _check_text(source, "source", _SOURCE_MAX) or "api"
    wording = _check_text(wording_version, "wording_version", _WORDING_MAX)
    ip_value = _check_ip(ip)
    _contact(session, contact_id)
    record = _append(
        session,
        contact_id,
        purpose,
        granted=True,
        confirmed=not double_opt_in,
        source=source_value,
        ip=ip_value,
        wording_version=wording,
    )
    url = confirmation_url(settings, record) if double_opt_in else None
    return ConsentGrant(record=record, confirmation_url=url)


def withdraw_consent(
    session: Session,
    contact_id: int,
    purpose: str = MARKETING,
    *,
    source: str,
    ip: str | None = None,
) -> ConsentRecord:
    """Record that ``contact_id`` withdrew consent for ``purpose`` (always allowed).

    A withdrawal is recorded even when no consent was ever given: it is evidence that the
    person said no, and it keeps a later import from assuming otherwise. Withdrawing
    ``marketing`` is an unsubscribe: the contact's status becomes ``unsubscribed`` and the
    address is suppressed for marketing, so it holds whether or not consent is required.
    """
    purpose = check_purpose(purpose)
    source_value = _check_text(source, "source", _SOURCE_MAX) or "api"
    ip_value = _check_ip(ip)
    contact = _contact(session, contact_id)
    previous = current_consent(session, contact_id, purpose)
    record = _append(
        session,
        contact_id,
        purpose,
        granted=False,
        confirmed=True,
        source=source_value,
        ip=ip_value,
        wording_version=previous.wording_version if previous else None,
    )
    if purpose == MARKETING:
        _mark_unsubscribed(session, contact)
    return record


def _mark_unsubscribed(session: Session, contact: Contact) -> None:
    if contact.status == ContactStatus.ACTIVE:
        contact.status = ContactStatus.UNSUBSCRIBED
        contact.updated_at = utcnow()
        session.add(contact)
    suppress(
        session,
        contact.email,
        reason=SuppressionReason.UNSUBSCRIBE,
        scope=SuppressionScope.MARKETING,
    )


def _mark_resubscribed(session: Session, contact: Contact) -> None:
    """Undo an unsubscribe after a confirmed double opt-in (the person proved the mailbox).

    Bounced and complained contacts stay as they are: a bounce is about the mailbox, a
    complaint outranks a sign-up form, and both need an operator to look.
    """
    if contact.status == ContactStatus.UNSUBSCRIBED:
        contact.status = ContactStatus.ACTIVE
        contact.updated_at = utcnow()
        session.add(contact)
    for entry in suppressions_for(session, contact.email):
        if entry.reason == SuppressionReason.UNSUBSCRIBE:
            session.delete(entry)
    session.flush()


def _sign(settings: Settings, purpose: str, payload: dict[str, object], ttl: float) -> str:
    return tokens.sign(purpose, payload, key=settings.signing_keys()[0], ttl=ttl)


def confirmation_url(settings: Settings, record: ConsentRecord) -> str:
    """The public double-opt-in link for the pending grant ``record``."""
    token = _sign(
        settings,
        tokens.Purpose.CONFIRM_CONSENT,
        {"r": record.id, "c": record.contact_id, "p": record.purpose},
        CONFIRMATION_TTL_SECONDS,
    )
    return f"{settings.base_url}/c/{token}"


def withdrawal_url(settings: Settings, contact_id: int, purpose: str = MARKETING) -> str:
    """A public link that withdraws ``purpose`` for ``contact_id`` with one click."""
    token = _sign(
        settings,
        WITHDRAW_PURPOSE,
        {"c": contact_id, "p": check_purpose(purpose)},
        WITHDRAWAL_TTL_SECONDS,
    )
    return f"{settings.base_url}/c/{token}/withdraw"


@dataclass(frozen=True, slots=True)
class ConsentToken:
    """What a verified consent link refers to."""

    action: ConsentAction
    contact_id: int
    purpose: str
    record_id: int | None


def verify_consent_token(settings: Settings, token: str, action: ConsentAction) -> ConsentToken:
    """Check a ``/c/...`` link; raises :class:`postwise.tokens.InvalidToken` when it is bad."""
    purpose = (
        tokens.Purpose.CONFIRM_CONSENT if action is ConsentAction.CONFIRM else WITHDRAW_PURPOSE
    )
    payload = tokens.verify(purpose, token, keys=settings.signing_keys())
    contact_id = payload.get("c")
    consent_purpose = payload.get("p")
    record_id = payload.get("r")
    if not isinstance(contact_id, int) or not isinstance(consent_purpose, str):
        raise tokens.InvalidToken("consent token payload is incomplete")
    if action is ConsentAction.CONFIRM and not isinstance(record_id, int):
        raise tokens.InvalidToken("confirmation token names no pending grant")
    return ConsentToken(
        action=action,
        contact_id=contact_id,
        purpose=consent_purpose,
        record_id=record_id if isinstance(record_id, int) else None,
    )


def confirm_consent(
    session: Session, settings: Settings, token: str, *, ip: str | None = None
) -> ConsentRecord:
    """Confirm the pending grant a confirmation link refers to; returns the record in force.

    Confirming twice is harmless (the second time returns the confirmed record). A link whose
    grant was withdrawn or superseded afterwards confirms nothing: raises ConflictError.
    Raises :class:`postwise.tokens.InvalidToken` for a bad or expired link and NotFoundError
    when the contact no longer exists (erased).
    """
    ref = verify_consent_token(settings, token, ConsentAction.CONFIRM)
    pending = session.get(ConsentRecord, ref.record_id)
    if (
        pending is None
        or pending.contact_id != ref.contact_id
        or pending.purpose != ref.purpose
        or not pending.granted
    ):
        raise NotFoundError("this confirmation link refers to a consent request that is gone")
    latest = current_consent(session, ref.contact_id, ref.purpose)
    if latest is None:
        raise NotFoundError("this confirmation link refers to a consent request that is gone")
    if latest.id == pending.id:
        if pending.confirmed:
            return pending
        confirmed = _append(
            session,
            ref.contact_id,
            ref.purpose,
            granted=True,
            confirmed=True,
            source="double-opt-in",
            ip=_check_ip(ip),
            wording_version=pending.wording_version,
        )
        if ref.purpose == MARKETING:
            _mark_resubscribed(session, _contact(session, ref.contact_id))
        return confirmed
    if _is_confirmation_of(session, pending, latest):
        return latest
    raise ConflictError(
        "consent changed after this link was sent (withdrawn or requested again); "
        "nothing was confirmed"
    )


def _is_confirmation_of(session: Session, pending: ConsentRecord, latest: ConsentRecord) -> bool:
    """Whether ``latest`` is the confirmation of ``pending``, with nothing in between."""
    if not (latest.granted and latest.confirmed and latest.source == "double-opt-in"):
        return False
    if (latest.id or 0) <= (pending.id or 0):
        return False
    between = session.exec(
        select(ConsentRecord.id).where(
            ConsentRecord.contact_id == pending.contact_id,
            ConsentRecord.purpose == pending.purpose,
            col(ConsentRecord.id) > pending.id,
            col(ConsentRecord.id) < latest.id,
        )
    ).first()
    return between is None


def withdraw_by_token(
    session: Session, settings: Settings, token: str, *, ip: str | None = None
) -> ConsentRecord:
    """Withdraw the consent a withdrawal link names; idempotent."""
    ref = verify_consent_token(settings, token, ConsentAction.WITHDRAW)
    if session.get(Contact, ref.contact_id) is None:
        raise NotFoundError("this link refers to a contact that no longer exists")
    latest = current_consent(session, ref.contact_id, ref.purpose)
    if latest is not None and not latest.granted:
        return latest
    return withdraw_consent(session, ref.contact_id, ref.purpose, source="link", ip=ip)
