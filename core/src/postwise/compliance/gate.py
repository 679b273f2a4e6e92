"""The compliance gate every recipient passes, at dispatch and again right before sending.

Rules, for a page of recipients at a time (one query per rule, never one per contact):

* contact status: ``bounced`` blocks all mail; ``unsubscribed`` and ``complained`` block
  marketing (transactional mail such as receipts still goes out);
* suppressions by address hash: scope ``all`` blocks everything, ``marketing`` blocks marketing;
* consent, for marketing to a contact who needs it (``require_consent``, or the contact's country
  in ``consent_regions``): the latest ``marketing`` consent record must be granted and
  confirmed: the one rule of :func:`postwise.compliance.consent.consented_pairs`, which
  :func:`~postwise.compliance.consent.has_valid_consent` applies to one contact;
* list consent, for marketing that names a consent purpose (a campaign to a list with a
  ``consent_purpose``, recorded on the ledger row as ``message.consent_purpose``, or a send
  request's ``consent_purpose``): the same rule for that purpose, for every contact, in addition
  to the rule above. One query answers every purpose of the page, so a page that mixes purposes
  (the worker's) costs no more than one that has a single purpose.

Reputation pauses are not skips: the compliance monitor writes them to the Redis hash
:data:`PAUSED_KEY` (fields ``provider:<name>``, ``sending_domain:<domain>``,
``recipient_domain:<domain>``, values a JSON reason) and the worker defers what they cover.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import redis
import sqlalchemy as sa
from sqlmodel import Session, col

from postwise.compliance.consent import MARKETING, consented_pairs
from postwise.compliance.reputation import PAUSED_KEY
from postwise.contacts.normalize import email_domain, email_hash
from postwise.db.engine import id_in
from postwise.db.models import ContactStatus, Suppression
from postwise.errors import ValidationError
from postwise.redis_client import as_text
from postwise.settings import Settings

__all__ = ["PAUSED_KEY", "ComplianceGate", "Pauses", "Recipient", "SkipReason"]


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
    """What the gate needs to know about a contact, and the consent purpose its send needs."""

    contact_id: int
    email: str
    status: str
    country: str | None = None
    #: The purpose this send needs consent for besides the global and regional rules.
    consent_purpose: str | None = None


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
        self,
        session: Session,
        recipients: Sequence[Recipient],
        *,
        marketing: bool,
        consent_purpose: str | None = None,
    ) -> dict[int, SkipReason]:
        """The recipients that must be skipped, by contact id, with the first rule they fail.

        ``consent_purpose`` is a purpose every recipient's marketing needs consent for (the
        list's); each recipient's own ``consent_purpose`` applies to that recipient. A contact
        listed more than once is skipped when any of its entries is: use :meth:`check_each`
        when one contact's entries may need different purposes.
        """
        skips: dict[int, SkipReason] = {}
        reasons = self.check_each(
            session, recipients, marketing=marketing, consent_purpose=consent_purpose
        )
        for recipient, reason in zip(recipients, reasons, strict=True):
            if reason is not None:
                skips.setdefault(recipient.contact_id, reason)
        return skips

    def check_each(
        self,
        session: Session,
        recipients: Sequence[Recipient],
        *,
        marketing: bool,
        consent_purpose: str | None = None,
    ) -> list[SkipReason | None]:
        """Why each recipient must be skipped (None: it may be sent to), in order.

        Like :meth:`check`, with one query per rule for the whole sequence; the verdicts are per
        entry, so a contact queued twice with different consent purposes is judged per send.
        """
        reasons: list[SkipReason | None] = [None] * len(recipients)
        hashes: dict[str, list[int]] = {}
        for index, recipient in enumerate(recipients):
            reason = _status_reason(recipient.status, marketing=marketing)
            if reason is not None:
                reasons[index] = reason
                continue
            try:
                hashed = email_hash(recipient.email)
            except ValidationError:
                reasons[index] = SkipReason.INVALID_CONTACT
                continue
            hashes.setdefault(hashed, []).append(index)
        if hashes:
            scopes = ["all", "marketing"] if marketing else ["all"]
            query = sa.select(col(Suppression.email_hash)).where(
                id_in(col(Suppression.email_hash), list(hashes), session.connection()),
                col(Suppression.scope).in_(scopes),
            )
            for (hashed,) in session.execute(query):
                for index in hashes.get(hashed, ()):
                    reasons[index] = SkipReason.SUPPRESSED
        if marketing:
            self._check_consent(session, recipients, reasons, consent_purpose)
        return reasons

    def _check_consent(
        self,
        session: Session,
        recipients: Sequence[Recipient],
        reasons: list[SkipReason | None],
        consent_purpose: str | None,
    ) -> None:
        """Mark ``no_consent`` on the recipients still sendable that lack a purpose they need."""
        needing: list[tuple[int, tuple[str, ...]]] = []
        every: tuple[str, ...] = (consent_purpose,) if consent_purpose else ()
        for index, recipient in enumerate(recipients):
            if reasons[index] is not None:
                continue
            purposes = every
            if self.needs_consent(recipient):
                purposes = (MARKETING, *purposes)
            if recipient.consent_purpose:
                purposes = (*purposes, recipient.consent_purpose)
            if purposes:
                needing.append((index, purposes))
        if not needing:
            return
        consented = consented_pairs(
            session,
            {recipients[index].contact_id for index, _ in needing},
            {purpose for _, purposes in needing for purpose in purposes},
        )
        for index, purposes in needing:
            contact_id = recipients[index].contact_id
            if any((contact_id, purpose) not in consented for purpose in purposes):
                reasons[index] = SkipReason.NO_CONSENT


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


@dataclass(frozen=True, slots=True)
class Pauses:
    """A snapshot of the reputation pauses: field → reason."""

    fields: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, client: redis.Redis) -> Pauses:
        raw = client.hgetall(PAUSED_KEY)
        if not raw:
            return cls()
        return cls({as_text(k): _reason(v) for k, v in raw.items()})

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


def _reason(value: bytes | str) -> str:
    text = as_text(value)
    try:
        data = json.loads(text)
    except ValueError:
        return text
    if isinstance(data, dict):
        return str(data.get("reason") or data.get("message") or text)
    return str(data)
