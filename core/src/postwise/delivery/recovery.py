"""Recovering from crashed attempts and lost jobs: the ledger is the truth, the queue a hint.

Two situations leave messages that no job will deliver:

* a worker died mid-batch (killed, out of memory, machine lost): its rows stay ``sending``
  under a claim that expires after ``delivery_lease_seconds``. :func:`recover_stale` settles
  them from the attempt's journal (see :mod:`postwise.delivery.journal`) and re-enqueues the
  ones never handed to the provider;
* a process died between writing ledger rows and enqueueing their job, or a scheduled job was
  lost: waiting rows whose due-by time has passed are re-enqueued by :func:`requeue_overdue`.

Both are idempotent and safe to run from every worker at once (each ledger write is conditional
on the claim it settles); :func:`sweep` runs both under a Redis lock so usually only one
process does the work. Workers sweep when they start and then periodically.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import sqlalchemy as sa

from postwise.db.models import utcnow
from postwise.delivery.jobs import enqueue_batches
from postwise.delivery.journal import KEY_PREFIX as JOURNAL_PREFIX
from postwise.delivery.journal import read_journal
from postwise.delivery.ledger import overdue_rows, postpone, stale_claims
from postwise.delivery.outcomes import Settlement

if TYPE_CHECKING:
    from postwise.runtime import Runtime

__all__ = ["SweepReport", "recover_stale", "requeue_overdue", "resend_dead", "sweep"]

log = logging.getLogger(__name__)

_LOCK_KEY = "postwise:delivery:sweep-lock"


@dataclass(frozen=True, slots=True)
class SweepReport:
    """What a sweep did."""

    recovered: int = 0
    in_doubt: int = 0
    requeued: int = 0


def recover_stale(
    runtime: Runtime,
    *,
    message_ids: Sequence[str] | None = None,
    now: datetime | None = None,
) -> SweepReport:
    """Settle rows whose attempt died (claim expired), from that attempt's journal."""
    now = now or utcnow()
    with runtime.engine.connect() as connection:
        grouped = stale_claims(connection, now=now, message_ids=message_ids)
    recovered = in_doubt = 0
    for token, rows in grouped.items():
        journal = read_journal(runtime.redis, token) if token else {}
        settlement = Settlement(runtime, token=token, now=now)
        doubtful = 0
        for row in rows:
            entry = journal.get(row.id)
            if entry is None:
                settlement.deferred(row, 0.0, "recovered after its worker stopped")
            elif entry.result is None:
                settlement.in_doubt(row)
                doubtful += 1
            else:
                settlement.result(row, entry.result)
        settlement.commit()
        if token:
            runtime.redis.delete(JOURNAL_PREFIX + token)
        recovered += len(rows)
        in_doubt += doubtful
        log.warning(
            "recovered %d messages of a stopped delivery attempt (%d in doubt, dead-lettered)",
            len(rows),
            doubtful,
        )
    return SweepReport(recovered=recovered, in_doubt=in_doubt)


def requeue_overdue(runtime: Runtime, *, now: datetime | None = None) -> int:
    """Enqueue again waiting rows whose job should have picked them up by now."""
    now = now or utcnow()
    with runtime.engine.connect() as connection:
        rows = overdue_rows(connection, now=now)
    if not rows:
        return 0
    by_provider: dict[str, list[str]] = {}
    for message_id, provider in rows:
        by_provider.setdefault(provider, []).append(message_id)
    size = runtime.settings.batch_size
    lease = timedelta(seconds=runtime.settings.delivery_lease_seconds)
    for provider, ids in by_provider.items():
        enqueue_batches(runtime, provider, [ids[i : i + size] for i in range(0, len(ids), size)])
        with runtime.engine.begin() as connection:
            # Once per lease at most: a job that is merely late must not be duplicated forever.
            postpone(connection, ids, due_by=now + lease, now=now)
    log.warning("re-enqueued %d messages whose job was overdue", len(rows))
    return len(rows)


def sweep(runtime: Runtime, *, now: datetime | None = None) -> SweepReport:
    """Recover stale claims and overdue rows, unless another process is sweeping right now."""
    lease = runtime.settings.delivery_lease_seconds
    lock = runtime.redis.set(_LOCK_KEY, "1", nx=True, ex=max(5, lease // 2))
    if not lock:
        return SweepReport()
    try:
        report = recover_stale(runtime, now=now)
        requeued = requeue_overdue(runtime, now=now)
    finally:
        runtime.redis.delete(_LOCK_KEY)
    return SweepReport(report.recovered, report.in_doubt, requeued)


def resend_dead(
    runtime: Runtime, *, campaign_id: int | None = None, in_doubt_only: bool = False
) -> int:
    """Give dead-lettered messages a fresh set of attempts; returns how many.

    An operator's decision, never automatic: a message dead-lettered *in doubt* may already have
    been accepted, so sending it again may deliver it twice. Use it once the cause is fixed
    (a relay that was down for longer than the retries lasted). ``in_doubt_only`` limits it to
    the messages in doubt, whether their worker stopped while the provider had them or the
    provider's answer was lost (their reason begins with
    :data:`~postwise.delivery.outcomes.IN_DOUBT_PREFIX`).
    """
    from postwise.db.models import MessageStatus
    from postwise.delivery.ledger import MESSAGE
    from postwise.delivery.outcomes import IN_DOUBT_PREFIX

    now = utcnow()
    query = sa.select(MESSAGE.c.id, MESSAGE.c.provider).where(
        MESSAGE.c.status == MessageStatus.DEAD.value
    )
    if campaign_id is not None:
        query = query.where(MESSAGE.c.campaign_id == campaign_id)
    if in_doubt_only:
        query = query.where(MESSAGE.c.last_error.startswith(IN_DOUBT_PREFIX, autoescape=True))
    with runtime.engine.begin() as connection:
        rows = connection.execute(query).all()
        ids = [row[0] for row in rows]
        lease = timedelta(seconds=runtime.settings.delivery_lease_seconds)
        for start in range(0, len(ids), 1000):
            connection.execute(
                MESSAGE.update()
                .where(
                    MESSAGE.c.id.in_(ids[start : start + 1000]),
                    MESSAGE.c.status == MessageStatus.DEAD.value,
                )
                .values(
                    status=MessageStatus.QUEUED.value,
                    attempts=0,
                    deferred_since=None,  # a fresh start: the deferral limit too
                    last_error="sent again by an operator after dead-lettering",
                    claimed_until=now + lease,
                    updated_at=now,
                )
            )
    by_provider: dict[str, list[str]] = {}
    for message_id, provider in rows:
        by_provider.setdefault(provider, []).append(message_id)
    size = runtime.settings.batch_size
    for provider, group in by_provider.items():
        enqueue_batches(
            runtime, provider, [group[i : i + size] for i in range(0, len(group), size)]
        )
    if ids:
        log.warning("%d dead-lettered messages are being sent again", len(ids))
    return len(ids)
