"""Engagement out to the CRM: score, last open and click, and the unsubscribed flag.

:func:`push_engagement` writes, for every linked contact whose engagement changed since the
last push, in batches of the connector's ``push_batch_size``:

* ``engagement_score``: the score decayed to the time of the push
  (:class:`postwise.analytics.engagement.EngagementModel`), rounded to two decimals;
* ``last_open_at`` / ``last_click_at``: the latest human open and click (machine opens and link
  scanners left out), read from the SQL event store; with another analytics sink they are not
  sent;
* ``unsubscribed``: the contact is unsubscribed or complained.

"Changed" is decided in SQL from what the link remembers of the last push: a contact with
engagement newer than the one pushed, an unsubscribed flag that differs, a first push of a
contact that has engagement or is unsubscribed, and a pushed score that has since decayed by
:data:`REFRESH_DECAY` or more (so scores in the CRM do not go stale while a person is silent).
A candidate whose values equal what was last pushed (same hash) is not sent. A record the CRM
no longer has is unlinked; one the CRM refuses stays pending for the next push.

The database is read before and written after the network calls, never held open across them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from postwise.analytics.engagement import EngagementModel
from postwise.crm.connector import EngagementUpdate
from postwise.crm.sync import MAX_ERRORS, RunLock, connector_for, value_digest
from postwise.db.models import Contact, ContactStatus, CrmLink, Event, as_utc, utcnow

if TYPE_CHECKING:
    from postwise.runtime import Runtime

__all__ = ["REFRESH_DECAY", "PushReport", "pending_count", "push_engagement"]

log = logging.getLogger(__name__)

#: A pushed score is refreshed once it has decayed by this fraction.
REFRESH_DECAY = 0.10
#: Pushed scores smaller than this are zero once rounded; they need no refresh.
_SCORE_FLOOR = 0.005
UNSUBSCRIBED_STATES = (ContactStatus.UNSUBSCRIBED.value, ContactStatus.COMPLAINED.value)


@dataclass(slots=True)
class PushReport:
    """What one push did. Holds no personal data."""

    system: str
    candidates: int = 0
    pushed: int = 0
    #: Candidates whose values were what the CRM already had (nothing sent).
    unchanged: int = 0
    failed: int = 0
    unlinked: int = 0
    batches: int = 0
    errors: list[str] = field(default_factory=list)

    def error(self, message: str) -> None:
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(message)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class _Pending:
    link_id: int
    external_id: str
    properties: dict[str, Any]
    digest: str
    score: float
    unsubscribed: bool
    engagement_at: datetime | None


def _refresh_after(model: EngagementModel) -> timedelta:
    """How long until a score has decayed by :data:`REFRESH_DECAY`."""
    seconds = -math.log(1.0 - REFRESH_DECAY) / model.decay_per_second
    return timedelta(seconds=seconds)


def _pending_clause(model: EngagementModel, now: datetime) -> Any:
    unsubscribed = col(Contact.status).in_(UNSUBSCRIBED_STATES)
    engaged_at = col(Contact.engagement_updated_at)
    pushed_engaged_at = col(CrmLink.pushed_engagement_at)
    pushed_at = col(CrmLink.pushed_at)
    return sa.or_(
        sa.and_(pushed_at.is_(None), sa.or_(engaged_at.is_not(None), unsubscribed)),
        sa.and_(
            pushed_at.is_not(None),
            engaged_at.is_not(None),
            sa.or_(pushed_engaged_at.is_(None), engaged_at != pushed_engaged_at),
        ),
        sa.and_(
            pushed_at.is_not(None),
            unsubscribed != sa.func.coalesce(col(CrmLink.pushed_unsubscribed), sa.false()),
        ),
        sa.and_(
            col(CrmLink.pushed_score) >= _SCORE_FLOOR,
            pushed_at < now - _refresh_after(model),
        ),
    )


def pending_count(runtime: Runtime, system: str) -> int:
    """How many linked contacts of ``system`` the next push would consider."""
    model = EngagementModel.from_settings(runtime.settings)
    with runtime.session() as session:
        query = (
            select(sa.func.count())
            .select_from(CrmLink)
            .join(Contact, col(Contact.id) == col(CrmLink.contact_id))
            .where(CrmLink.system == system, _pending_clause(model, utcnow()))
        )
        return int(session.exec(query).one())


def _last_engagement(
    session: Session, contact_ids: Sequence[int]
) -> dict[tuple[int, str], datetime]:
    """The latest human open and click per contact, from the SQL event store."""
    if not contact_ids:
        return {}
    rows = session.exec(
        select(Event.contact_id, Event.type, sa.func.max(Event.occurred_at))
        .where(
            col(Event.contact_id).in_(contact_ids),
            col(Event.type).in_(("open", "click")),
            col(Event.automated).is_(False),
        )
        .group_by(col(Event.contact_id), col(Event.type))
    ).all()
    found: dict[tuple[int, str], datetime] = {}
    for contact_id, event_type, at in rows:
        aware = as_utc(at)
        if contact_id is not None and aware is not None:
            found[(contact_id, event_type)] = aware
    return found


def _collect(
    runtime: Runtime,
    system: str,
    *,
    model: EngagementModel,
    now: datetime,
    after_id: int,
    limit: int,
) -> tuple[list[_Pending], list[int], int]:
    """The next batch of candidates: (to send, link ids already up to date, last link id)."""
    with_events = runtime.settings.analytics_sink == "sql"
    with runtime.session() as session:
        rows = session.exec(
            select(CrmLink, Contact)
            .join(Contact, col(Contact.id) == col(CrmLink.contact_id))
            .where(
                CrmLink.system == system,
                col(CrmLink.id) > after_id,
                _pending_clause(model, now),
            )
            .order_by(col(CrmLink.id))
            .limit(limit)
        ).all()
        if not rows:
            return [], [], after_id
        last = _last_engagement(session, [c.id for _, c in rows if c.id is not None])
    to_send: list[_Pending] = []
    current: list[int] = []
    for link, contact in rows:
        assert link.id is not None and contact.id is not None
        engaged_at = as_utc(contact.engagement_updated_at)
        score = round(model.current(contact.engagement_score or 0.0, engaged_at, now), 2)
        unsubscribed = contact.status in UNSUBSCRIBED_STATES
        properties: dict[str, Any] = {"engagement_score": score, "unsubscribed": unsubscribed}
        if with_events:
            for event_type in ("open", "click"):
                at = last.get((contact.id, event_type))
                if at is not None:
                    properties[f"last_{event_type}_at"] = at
        digest = value_digest(properties)
        pending = _Pending(
            link.id,
            link.external_id,
            properties,
            digest,
            score,
            unsubscribed,
            contact.engagement_updated_at,
        )
        if digest == link.pushed_hash:
            current.append(link.id)
        else:
            to_send.append(pending)
    return to_send, current, rows[-1][0].id or after_id


def _record(
    runtime: Runtime,
    *,
    sent: Sequence[_Pending],
    failures: dict[str, tuple[str, bool]],
    current: Sequence[int],
    now: datetime,
    report: PushReport,
) -> None:
    with runtime.session() as session:
        for link_id in current:
            link = session.get(CrmLink, link_id)
            if link is not None:
                link.pushed_at = now
                session.add(link)
        for pending in sent:
            link = session.get(CrmLink, pending.link_id)
            if link is None:
                continue  # unlinked or erased meanwhile
            failure = failures.get(pending.external_id)
            if failure is not None:
                reason, missing = failure
                if missing:
                    session.delete(link)
                    report.unlinked += 1
                else:
                    report.failed += 1
                    report.error(f"record {pending.external_id}: {reason}")
                continue
            link.pushed_at = now
            link.pushed_engagement_at = pending.engagement_at
            link.pushed_score = pending.score
            link.pushed_unsubscribed = pending.unsubscribed
            link.pushed_hash = pending.digest
            session.add(link)
            report.pushed += 1


def push_engagement(runtime: Runtime, system: str) -> PushReport:
    """Push changed engagement of every linked contact of ``system``; see the module docs.

    Raises ConflictError when a push of ``system`` is already running and
    :class:`~postwise.crm.connector.CrmUnavailableError` when the CRM cannot be written;
    batches written before that are recorded, the rest stays pending.
    """
    connector = connector_for(runtime, system)
    model = EngagementModel.from_settings(runtime.settings)
    report = PushReport(system)
    now = utcnow()
    batch_size = max(1, connector.push_batch_size)
    after_id = 0
    with RunLock(runtime, system, "push") as lock:
        while True:
            to_send, current, after_id = _collect(
                runtime, system, model=model, now=now, after_id=after_id, limit=batch_size
            )
            if not to_send and not current:
                break
            report.candidates += len(to_send) + len(current)
            report.unchanged += len(current)
            failures: dict[str, tuple[str, bool]] = {}
            if to_send:
                updates = [EngagementUpdate(p.external_id, p.properties) for p in to_send]
                for failure in connector.push_engagement(updates) or ():
                    failures[failure.external_id] = (failure.reason, failure.missing)
                report.batches += 1
            _record(
                runtime,
                sent=to_send,
                failures=failures,
                current=current,
                now=now,
                report=report,
            )
            lock.refresh()
    log.info(
        "crm %s: pushed engagement of %d contacts (%d unchanged, %d failed, %d unlinked)",
        system,
        report.pushed,
        report.unchanged,
        report.failed,
        report.unlinked,
    )
    return report
