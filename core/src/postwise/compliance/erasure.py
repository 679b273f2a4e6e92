"""The right to erasure and the right of access (GDPR articles 17 and 15).

:func:`erase_contact` removes a person's data from every store postwise keeps:

* database rows: the contact, its tags, static segment memberships, CRM links and consent
  records are deleted; ledger rows (``message``) stay for the send statistics but lose the
  contact id, their merge context and any address or name in their last error, and those not
  sent yet are marked ``skipped`` so a queued job finds them skipped and sends nothing (RQ jobs
  carry ledger ids, never addresses);
* events, through :func:`postwise.analytics.erasure.erase_contact_events`: those in flight in
  the collector are dropped, the entries naming the contact are deleted from the event and
  dead-letter streams, and the configured sink (SQL or ClickHouse) erases the stored ones;
* postwise's own per-address Redis keys (soft-bounce counters);
* every plugin is told through ``postwise_contact_changed(changes={"erased": True})`` so that
  connectors and plugins drop what they hold (CRM sync state, caches).

What remains is a suppression entry holding only the SHA-256 of the address (reason
``erasure``, scope ``all``) so the address is never mailed again, and an audit record with the
same hash, the time, the actor and per-store counts: no address, no name.

:func:`export_contact` returns everything held about a person as one JSON-ready dict.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from postwise.analytics.collector import open_sink
from postwise.analytics.erasure import erase_contact_events
from postwise.compliance.consent import consent_history
from postwise.compliance.processing import bounce_keys
from postwise.compliance.suppression import SuppressionReason, suppress_hash
from postwise.compliance.unsubscribe import PENDING_STATES
from postwise.contacts.normalize import email_hash, normalize_email
from postwise.contacts.service import contact_dict
from postwise.db.models import (
    AuditRecord,
    Contact,
    ContactTag,
    CrmLink,
    JourneyRun,
    MessageStatus,
    Segment,
    SegmentMember,
    Suppression,
    iso,
    utcnow,
)
from postwise.db.models import ConsentRecord as ConsentRow
from postwise.db.models import Message as LedgerRow
from postwise.errors import NotFoundError

if TYPE_CHECKING:
    from postwise.runtime import Runtime

__all__ = ["ErasureReport", "erase_contact", "erase_email", "export_contact", "find_contact"]

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ErasureReport:
    """What one erasure removed, per store. Holds no personal data."""

    contact_id: int | None
    email_hash: str
    counts: dict[str, int] = field(default_factory=dict)
    #: Stores that could not be erased and why; empty when erasure is complete.
    incomplete: dict[str, str] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.incomplete

    def to_dict(self) -> dict[str, Any]:
        return {
            "contact_id": self.contact_id,
            "email_hash": self.email_hash,
            "complete": self.complete,
            "counts": dict(self.counts),
            "incomplete": dict(self.incomplete),
        }


def find_contact(
    session: Session, *, contact_id: int | None = None, email: str | None = None
) -> Contact:
    """The contact with ``contact_id`` or ``email``; NotFoundError when there is none."""
    if contact_id is not None:
        contact = session.get(Contact, contact_id)
        if contact is None:
            raise NotFoundError(f"contact {contact_id} does not exist")
        return contact
    if email is None:
        raise NotFoundError("name a contact by id or by email address")
    address = normalize_email(email)
    found = session.exec(select(Contact).where(Contact.email == address)).first()
    if found is None:
        raise NotFoundError("no contact has that email address")
    return found


def _scrub(text: str | None, secrets: Iterable[str]) -> str | None:
    if not text:
        return text
    for secret in secrets:
        if secret:
            text = re.sub(re.escape(secret), "[erased]", text, flags=re.I)
    return re.sub(r"[^\s<>\"'(),;:@]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,63}", "[erased]", text)


def _erase_rows(session: Session, contact: Contact) -> dict[str, int]:
    assert contact.id is not None
    cid = contact.id
    counts: dict[str, int] = {}
    secrets = [
        contact.email,
        *(n for n in (contact.first_name, contact.last_name) if n and len(n) >= 2),
    ]
    now = utcnow()
    ledger = 0
    skipped = 0
    for row in session.exec(select(LedgerRow).where(LedgerRow.contact_id == cid)):
        if row.status in PENDING_STATES:
            row.status = MessageStatus.SKIPPED
            row.last_error = "erased"
            skipped += 1
        else:
            row.last_error = _scrub(row.last_error, secrets)
        row.contact_id = None
        row.context = None
        row.updated_at = now
        session.add(row)
        ledger += 1
    counts["ledger_rows_detached"] = ledger
    counts["ledger_rows_skipped"] = skipped
    for name, model, column in (
        ("tags", ContactTag, ContactTag.contact_id),
        ("segment_memberships", SegmentMember, SegmentMember.contact_id),
        ("crm_links", CrmLink, CrmLink.contact_id),
        ("consent_records", ConsentRow, ConsentRow.contact_id),
        # Inside a journey: removed at once, so nothing more is sent or called for them.
        ("journey_runs", JourneyRun, JourneyRun.contact_id),
    ):
        result = session.execute(sa.delete(model).where(col(column) == cid))
        counts[name] = int(getattr(result, "rowcount", 0) or 0)
    session.delete(contact)
    counts["contacts"] = 1
    session.flush()
    return counts


def _erase_events(runtime: Runtime, contact_id: int, report: ErasureReport) -> None:
    """Stored events, the stream and events in flight, through the analytics subsystem."""

    try:
        counts = erase_contact_events(runtime, contact_id)
    except Exception as exc:  # any store failing must be reported, not end the erasure
        report.incomplete["events"] = f"{type(exc).__name__}: {exc}"
        return
    report.counts.update(counts)


def erase_contact(
    runtime: Runtime,
    *,
    contact_id: int | None = None,
    email: str | None = None,
    actor: str = "api",
) -> ErasureReport:
    """Erase a contact named by id or address from every store; see the module docs.

    The database part runs in one transaction first, so from then on the contact cannot be
    found, mailed or re-created by an event. Stores that fail afterwards are listed in
    ``report.incomplete`` (and logged); running the erasure again by the same id finishes them.
    """
    with runtime.session() as session:
        contact = session.get(Contact, contact_id) if contact_id is not None else None
        if contact is None and email is not None:
            contact = session.exec(
                select(Contact).where(Contact.email == normalize_email(email))
            ).first()
        if contact is None and email is None:
            if contact_id is None:
                raise NotFoundError("name a contact by id or by email address")
            # A repeated erasure by id: the rows are gone, the other stores may not be.
            report = ErasureReport(contact_id=contact_id, email_hash="")
            _erase_elsewhere(runtime, contact_id, None, report)
            if not any(report.counts.values()):
                raise NotFoundError(f"contact {contact_id} does not exist")
            return report
        address = contact.email if contact is not None else normalize_email(email or "")
        hashed = email_hash(address)
        cid = contact.id if contact is not None else None
        report = ErasureReport(contact_id=cid, email_hash=hashed)
        if contact is not None:
            report.counts.update(_erase_rows(session, contact))
        suppress_hash(session, hashed, reason=SuppressionReason.ERASURE)
        audit = AuditRecord(action="erase", subject_hash=hashed, actor=actor[:100], details={})
        session.add(audit)
        session.flush()
        audit_id = audit.id
    _erase_elsewhere(runtime, cid, hashed, report)
    with runtime.session() as session:
        stored = session.get(AuditRecord, audit_id)
        if stored is not None:
            stored.details = {"counts": report.counts, "incomplete": report.incomplete}
            session.add(stored)
    if cid is not None:
        runtime.plugins.hook.postwise_contact_changed(
            contact_id=cid, changes={"erased": True}, source="compliance"
        )
    if report.incomplete:
        log.error("erasure of contact %s incomplete: %s", cid, report.incomplete)
    return report


def _erase_elsewhere(
    runtime: Runtime, contact_id: int | None, hashed: str | None, report: ErasureReport
) -> None:
    if contact_id is not None:
        _erase_events(runtime, contact_id, report)
    if hashed:
        report.counts["redis_keys"] = int(runtime.redis.delete(*bounce_keys(hashed)))


def erase_email(runtime: Runtime, email: str, *, actor: str = "api") -> ErasureReport:
    """Erase by address; an address with no contact is still suppressed for good."""
    return erase_contact(runtime, email=email, actor=actor)


def _iso(value: Any) -> Any:
    return iso(value) if isinstance(value, datetime) else value


def export_contact(
    runtime: Runtime, *, contact_id: int | None = None, email: str | None = None
) -> dict[str, Any]:
    """Everything postwise holds about one contact, as a JSON-ready dict."""

    with runtime.session() as session:
        contact = find_contact(session, contact_id=contact_id, email=email)
        assert contact.id is not None
        cid = contact.id
        tags = sorted(session.exec(select(ContactTag.tag).where(ContactTag.contact_id == cid)))
        segments = sorted(
            session.exec(
                select(Segment.name)
                .join(SegmentMember, col(SegmentMember.segment_id) == col(Segment.id))
                .where(SegmentMember.contact_id == cid)
            )
        )
        hashed = email_hash(contact.email)
        data: dict[str, Any] = {
            "contact": contact_dict(contact, tags),
            "segments": segments,
            "consent": [
                {
                    "purpose": r.purpose,
                    "granted": r.granted,
                    "confirmed": r.confirmed,
                    "at": _iso(r.at),
                    "source": r.source,
                    "ip": r.ip,
                    "wording_version": r.wording_version,
                }
                for r in consent_history(session, cid)
            ],
            "crm_links": [
                {
                    "system": link.system,
                    "external_id": link.external_id,
                    "remote_updated_at": _iso(link.remote_updated_at),
                    "synced_at": _iso(link.synced_at),
                }
                for link in session.exec(select(CrmLink).where(CrmLink.contact_id == cid))
            ],
            "suppressions": [
                {"scope": s.scope, "reason": s.reason, "created_at": _iso(s.created_at)}
                for s in session.exec(select(Suppression).where(Suppression.email_hash == hashed))
            ],
            "messages": [
                {
                    "id": m.id,
                    "campaign_id": m.campaign_id,
                    "trigger_id": m.trigger_id,
                    "template_id": m.template_id,
                    "variant": m.variant,
                    "provider": m.provider,
                    "status": m.status,
                    "transactional": m.transactional,
                    "context": m.context,
                    "created_at": _iso(m.created_at),
                    "sent_at": _iso(m.sent_at),
                }
                for m in session.exec(
                    select(LedgerRow)
                    .where(LedgerRow.contact_id == cid)
                    .order_by(col(LedgerRow.created_at))
                )
            ],
            "events": [],
            "audit": [
                {"action": a.action, "at": _iso(a.at), "actor": a.actor}
                for a in session.exec(select(AuditRecord).where(AuditRecord.subject_hash == hashed))
            ],
        }
    _export_events(runtime, cid, data)
    data["exported_at"] = utcnow().isoformat()
    return data


def _export_events(runtime: Runtime, contact_id: int, data: dict[str, Any]) -> None:
    """The contact's stored events, read from the configured sink (SQL or ClickHouse).

    A sink that is down or cannot read events back leaves ``incomplete.events`` saying so:
    an access request must never get a silently partial answer.
    """

    try:
        sink = open_sink(runtime)
        try:
            events = sink.events_of_contact(contact_id)
        finally:
            sink.close()
    except Exception as exc:  # reported in the export, like a failing store in an erasure
        data.setdefault("incomplete", {})["events"] = f"{type(exc).__name__}: {exc}"
        return
    if events is None:
        data.setdefault("incomplete", {})["events"] = (
            f"the {runtime.settings.analytics_sink!r} sink cannot read a contact's events back"
        )
        return
    data["events"] = [
        {
            "event_id": e.event_id,
            "type": e.type,
            "occurred_at": _iso(e.occurred_at),
            "message_id": e.message_id,
            "campaign_id": e.campaign_id,
            "experiment_id": e.experiment_id,
            "variant": e.variant,
            "provider": e.provider,
            "properties": dict(e.properties),
        }
        for e in events
    ]
