"""The compliance gate every recipient passes, at dispatch and again right before sending.

Rules, for a page of recipients at a time (one query per rule, never one per contact):

* contact status: ``bounced`` blocks all mail; ``unsubscribed`` and ``complained`` block
  marketing (transactional mail such as receipts still goes out);
* suppressions by address hash: scope ``all`` blocks everything, ``marketing`` blocks marketing;
* consent, for marketing to a contact who needs it (``require_consent``, or the contact's country
  in ``consent_regions``): the latest ``marketing`` consent record must be granted and
  confirmed, the rule :func:`postwise.compliance.consent.has_valid_consent` states.

Reputation pauses are not skips: the compliance monitor writes them to the Redis hash
:data:`PAUSED_KEY` (fields ``provider:<name>``, ``sending_domain:<domain>``,
``recipient_domain:<domain>``, values a JSON reason) and the worker defers what they cover.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import redis
import sqlalchemy as sa
from sqlmodel import Session, col

from postwise.contacts.normalize import email_domain, email_hash
from postwise.db.models import ConsentRecord, ContactStatus, Suppression
from postwise.delivery.ledger import id_in
from postwise.errors import ValidationError
from postwise.settings import Settings

__all__ = ["PAUSED_KEY", "ComplianceGate", "Pauses", "Recipient", "SkipReason"]

#: The Redis hash of reputation pauses the compliance monitor maintains.
PAUSED_KEY = "postwise:reputation:paused"

_MARKETING_PURPOSE = "marketing"


class SkipReason(enum.StrEnum):
    """Why a recipient was not sent to; the keys of a campaign's ``skipped`` counts."""

    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"
    COMPLAINED = "complained"
    SUPPRESSED = "suppressed"
    NO_CONSENT = "no_consent"
    FREQUENCY_CAP = "frequency_cap"
    INVALID_CONTACT = "invalid_contact"
    VETOED = "vetoed"


@dataclass(frozen=True, slots=True)
class Recipient:
    """What the gate needs to know about a contact."""

    contact_id: int
    email: str
    status: str
    country: str | None = None


class ComplianceGate:
    """Decides, per recipient, whether a message may be sent and why not."""

    def __init__(self, settings: Settings) -> None:
        self.require_consent = settings.require_consent
        self.consent_regions = frozenset(c.upper() for c in settings.consent_regions)

    def needs_consent(self, recipient: Recipient) -> bool:
        """Whether marketing to ``recipient`` needs a valid marketing consent."""
        if self.require_consent:
            return True
        country = (recipient.country or "").upper()
        return bool(country) and country in self.consent_regions

    def check(
        self, session: Session, recipients: Sequence[Recipient], *, marketing: bool
    ) -> dict[int, SkipReason]:
        """The recipients that must be skipped, by contact id, with the first rule they fail."""
        skips: dict[int, SkipReason] = {}
        hashes: dict[str, list[int]] = {}
        for recipient in recipients:
            reason = _status_reason(recipient.status, marketing=marketing)
            if reason is not None:
                skips[recipient.contact_id] = reason
                continue
            try:
                hashed = email_hash(recipient.email)
            except ValidationError:
                skips[recipient.contact_id] = SkipReason.INVALID_CONTACT
                continue
            hashes.setdefault(hashed, []).append(recipient.contact_id)
        if hashes:
            scopes = ["all", "marketing"] if marketing else ["all"]
            query = sa.select(col(Suppression.email_hash)).where(
                id_in(col(Suppression.email_hash), list(hashes), session.connection()),
                col(Suppression.scope).in_(scopes),
            )
            for (hashed,) in session.execute(query):
                for contact_id in hashes.get(hashed, ()):
                    skips[contact_id] = SkipReason.SUPPRESSED
        if marketing:
            needing = [
                r.contact_id
                for r in recipients
                if r.contact_id not in skips and self.needs_consent(r)
            ]
            if needing:
                consented = _consented(session, needing)
                for contact_id in needing:
                    if contact_id not in consented:
                        skips[contact_id] = SkipReason.NO_CONSENT
        return skips


_ACTIVE = ContactStatus.ACTIVE.value


def _status_reason(status: str, *, marketing: bool) -> SkipReason | None:
    if status == _ACTIVE:
        return None
    if status == ContactStatus.BOUNCED.value:
        return SkipReason.BOUNCED
    if not marketing:
        return None
    if status == ContactStatus.UNSUBSCRIBED.value:
        return SkipReason.UNSUBSCRIBED
    if status == ContactStatus.COMPLAINED.value:
        return SkipReason.COMPLAINED
    # A status postwise does not know is not a licence to send marketing.
    return SkipReason.INVALID_CONTACT


def _consented(session: Session, contact_ids: Iterable[int]) -> set[int]:
    """The contacts whose latest marketing consent record is granted and confirmed."""
    query = (
        sa.select(
            col(ConsentRecord.contact_id),
            col(ConsentRecord.granted),
            col(ConsentRecord.confirmed),
        )
        .where(
            id_in(col(ConsentRecord.contact_id), list(contact_ids), session.connection()),
            col(ConsentRecord.purpose) == _MARKETING_PURPOSE,
        )
        .order_by(col(ConsentRecord.contact_id), col(ConsentRecord.at), col(ConsentRecord.id))
    )
    latest: dict[int, bool] = {}
    for contact_id, granted, confirmed in session.execute(query):
        latest[contact_id] = bool(granted and confirmed)
    return {contact_id for contact_id, ok in latest.items() if ok}


@dataclass(frozen=True, slots=True)
class Pauses:
    """A snapshot of the reputation pauses: field → reason."""

    fields: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, client: redis.Redis) -> Pauses:
        raw = client.hgetall(PAUSED_KEY)
        if not raw:
            return cls()
        return cls({_text(k): _reason(v) for k, v in raw.items()})

    def __bool__(self) -> bool:
        return bool(self.fields)

    def provider(self, name: str) -> str | None:
        return self.fields.get(f"provider:{name}")

    def sending_domain(self, domain: str) -> str | None:
        return self.fields.get(f"sending_domain:{domain.lower()}")

    def recipient_domain(self, address: str) -> str | None:
        """The pause covering the domain of ``address``, if any."""
        if not self.fields:
            return None
        return self.fields.get(f"recipient_domain:{email_domain(address).lower()}")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _reason(value: bytes | str) -> str:
    text = _text(value)
    try:
        data = json.loads(text)
    except ValueError:
        return text
    if isinstance(data, dict):
        return str(data.get("reason") or data.get("message") or text)
    return str(data)
