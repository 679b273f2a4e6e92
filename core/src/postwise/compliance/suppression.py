"""The suppression list: addresses postwise must not mail, remembered only by their hash.

An entry is keyed by ``(email_hash, scope)``. Scope ``all`` blocks every message (hard bounces,
complaints, erasure); scope ``marketing`` blocks marketing but lets transactional mail through
(unsubscribes). Because only the SHA-256 of the normalised address is kept, an erased person
leaves no address behind, yet importing the same address again finds it suppressed.

The delivery gate checks :func:`is_suppressed` before every send.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence

from sqlmodel import Session, col, select

from postwise.contacts.normalize import email_hash
from postwise.db.models import Suppression
from postwise.errors import ConflictError, NotFoundError, ValidationError

__all__ = [
    "PERMANENT_REASONS",
    "SuppressionReason",
    "SuppressionScope",
    "is_hash_suppressed",
    "is_suppressed",
    "lift_suppression",
    "list_suppressions",
    "scrub_addresses",
    "suppress",
    "suppress_hash",
    "suppressions_for",
]


class SuppressionScope(enum.StrEnum):
    ALL = "all"
    MARKETING = "marketing"


class SuppressionReason(enum.StrEnum):
    HARD_BOUNCE = "hard_bounce"
    SOFT_BOUNCE = "soft_bounce"
    COMPLAINT = "complaint"
    UNSUBSCRIBE = "unsubscribe"
    ERASURE = "erasure"
    MANUAL = "manual"


#: Reasons an operator may not lift: the person asked to be forgotten. Mailing them again
#: would need a fresh sign-up, which creates a new contact and consent anyway.
PERMANENT_REASONS = frozenset({SuppressionReason.ERASURE})

_HASH_RE = re.compile(r"^[0-9a-f]{64}$")
_ADDRESS_RE = re.compile(r"[^\s<>\"'(),;:@]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,63}")
_DETAIL_MAX = 500


def scrub_addresses(text: str | None) -> str | None:
    """``text`` with every email address replaced by ``<address>``.

    Remote servers quote the recipient in their replies ("550 5.1.1 <bob@example.com>: no such
    user"); suppression details and events must not keep it, or erasure would have to find it.
    """
    if text is None:
        return None
    return _ADDRESS_RE.sub("<address>", text)


def _check_scope(scope: str) -> SuppressionScope:
    try:
        return SuppressionScope(scope)
    except ValueError:
        raise ValidationError(
            f"{scope!r} is not a suppression scope; use 'all' or 'marketing'", field="scope"
        ) from None


def _check_reason(reason: str) -> SuppressionReason:
    try:
        return SuppressionReason(reason)
    except ValueError:
        allowed = ", ".join(r.value for r in SuppressionReason)
        raise ValidationError(
            f"{reason!r} is not a suppression reason; use one of {allowed}", field="reason"
        ) from None


def suppress_hash(
    session: Session,
    hashed: str,
    *,
    reason: str,
    scope: str = SuppressionScope.ALL,
    detail: str | None = None,
) -> Suppression:
    """Suppress the address whose :func:`~postwise.contacts.normalize.email_hash` is ``hashed``.

    Idempotent: an existing entry for the same hash and scope is returned unchanged, so the
    first reason (usually the most informative) is kept. Addresses in ``detail`` are scrubbed.
    """
    if not _HASH_RE.match(hashed):
        raise ValidationError("must be a lower-case SHA-256 hex digest", field="email_hash")
    scope_value = _check_scope(scope)
    reason_value = _check_reason(reason)
    existing = session.exec(
        select(Suppression).where(
            Suppression.email_hash == hashed, Suppression.scope == scope_value.value
        )
    ).first()
    if existing is not None:
        if reason_value is SuppressionReason.ERASURE and existing.reason != reason_value.value:
            # Erasure outranks every other reason: it makes the entry permanent.
            existing.reason = reason_value.value
            existing.detail = None
            session.add(existing)
            session.flush()
        return existing
    cleaned = scrub_addresses(detail)
    entry = Suppression(
        email_hash=hashed,
        scope=scope_value.value,
        reason=reason_value.value,
        detail=cleaned[:_DETAIL_MAX] if cleaned else None,
    )
    session.add(entry)
    session.flush()
    return entry


def suppress(
    session: Session,
    email: str,
    *,
    reason: str,
    scope: str = SuppressionScope.ALL,
    detail: str | None = None,
) -> Suppression:
    """Suppress ``email`` (normalised, then hashed) for ``scope``; see :func:`suppress_hash`."""
    return suppress_hash(session, email_hash(email), reason=reason, scope=scope, detail=detail)


def is_hash_suppressed(session: Session, hashed: str, *, transactional: bool = False) -> bool:
    """Whether a message to the address hashed as ``hashed`` must not be sent.

    Transactional messages are blocked only by ``all`` entries; marketing by either scope.
    """
    scopes = [SuppressionScope.ALL.value]
    if not transactional:
        scopes.append(SuppressionScope.MARKETING.value)
    found = session.exec(
        select(Suppression.id).where(
            Suppression.email_hash == hashed, col(Suppression.scope).in_(scopes)
        )
    ).first()
    return found is not None


def is_suppressed(session: Session, email: str, *, transactional: bool = False) -> bool:
    """Whether a message to ``email`` must not be sent; see :func:`is_hash_suppressed`."""
    return is_hash_suppressed(session, email_hash(email), transactional=transactional)


def suppressions_for(session: Session, email: str) -> list[Suppression]:
    """Every suppression entry of ``email`` (both scopes)."""
    return list(
        session.exec(select(Suppression).where(Suppression.email_hash == email_hash(email)))
    )


def list_suppressions(
    session: Session,
    *,
    reason: str | None = None,
    after_id: int = 0,
    limit: int = 100,
) -> Sequence[Suppression]:
    """Suppressions in id order, ``limit`` at a time after ``after_id`` (keyset pagination)."""
    if not 1 <= limit <= 1000:
        raise ValidationError("must be between 1 and 1000", field="limit")
    query = select(Suppression).where(col(Suppression.id) > after_id)
    if reason is not None:
        query = query.where(Suppression.reason == _check_reason(reason).value)
    return session.exec(query.order_by(col(Suppression.id)).limit(limit)).all()


def lift_suppression(session: Session, suppression_id: int) -> Suppression:
    """Remove one suppression entry; entries kept because of an erasure cannot be lifted."""
    entry = session.get(Suppression, suppression_id)
    if entry is None:
        raise NotFoundError(f"suppression {suppression_id} does not exist")
    if entry.reason in PERMANENT_REASONS:
        raise ConflictError(
            f"suppression {suppression_id} records an erasure request and is permanent; "
            "the person must sign up again to be mailed"
        )
    session.delete(entry)
    session.flush()
    return entry
