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

from postwise.db.models import Campaign, CampaignStatus, MessageStatus, as_utc, utcnow
from postwise.delivery.dispatch import dispatch_lock_key
from postwise.delivery.journal import KEY_PREFIX as JOURNAL_PREFIX
from postwise.delivery.journal import fence_journal, journal_owners
from postwise.delivery.ledger import (
    MESSAGE,
    PENDING_STATES,
    claims_held,
    claims_of,
    overdue_rows,
    postpone,
    stale_claims,
)
from postwise.delivery.liveness import can_judge, current_owner, dead
from postwise.delivery.outcomes import Settlement
from postwise.delivery.queue import enqueue_batches, enqueue_dispatch

if TYPE_CHECKING:
    from postwise.runtime import Runtime

__all__ = [
    "DISPATCH_RESCUE_SECONDS",
    "SweepReport",
    "recover_stale",
    "requeue_overdue",
    "resend_dead",
    "resume_dispatches",
    "stalled_dispatches",
    "stalls",
    "sweep",
]

log = logging.getLogger(__name__)

_LOCK_KEY = "postwise:delivery:sweep-lock"
_RESCUE_PREFIX = "postwise:delivery:dispatch-rescue:"
#: A stalled campaign's dispatch is queued again at most this often.
DISPATCH_RESCUE_SECONDS = 30


@dataclass(frozen=True, slots=True)
class SweepReport:
    """What a sweep did."""

    recovered: int = 0
    in_doubt: int = 0
    requeued: int = 0
    #: Campaigns whose stopped dispatch was queued again.
    dispatches: int = 0


def recover_stale(
    runtime: Runtime,
    *,
    message_ids: Sequence[str] | None = None,
    now: datetime | None = None,
) -> SweepReport:
    """Settle rows whose attempt died, from that attempt's journal.

    An attempt is known dead when its claim expired, or, much sooner, when the worker that owns
    it (its journal says which) no longer keeps its heartbeat
    (:mod:`postwise.delivery.liveness`). The journal is fenced before it is read, so an attempt
    that was only cut off (its worker lost Redis for a while) hands nothing more over.
    """
    now = now or utcnow()
    with runtime.engine.connect() as connection:
        grouped = stale_claims(connection, now=now, message_ids=message_ids)
        held = claims_held(connection, now=now, message_ids=message_ids) if can_judge() else []
        if held:
            owners = journal_owners(runtime.redis, held)
            me = current_owner()
            gone = dead(runtime.redis, (o for o in owners.values() if o and o != me))
            orphans = [token for token, owner in owners.items() if owner in gone]
            if orphans:
                grouped.update(claims_of(connection, orphans))
    recovered = in_doubt = 0
    for token, rows in grouped.items():
        journal = fence_journal(runtime.redis, token) if token else {}
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
            # Kept a while, fenced, for an attempt still running that looks at it.
            runtime.redis.expire(JOURNAL_PREFIX + token, 600)
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


def stalled_dispatches(runtime: Runtime) -> list[int]:
    """Campaigns being sent whose dispatch is unfinished and that no live process dispatches.

    A dispatch holds its lock (:func:`~postwise.delivery.dispatch.dispatch_lock_key`) and keeps
    it alive while it runs; a dispatch whose process died lets it lapse within
    :data:`~postwise.delivery.dispatch.DISPATCH_LOCK_SECONDS`.
    """
    with runtime.session() as session:
        rows = session.execute(
            sa.select(Campaign.id, Campaign.counts).where(  # type: ignore[call-overload]
                Campaign.status == CampaignStatus.SENDING.value
            )
        ).all()
    unfinished = [int(cid) for cid, counts in rows if not (counts or {}).get("dispatched")]
    if not unfinished:
        return []
    pipe = runtime.redis.pipeline(transaction=False)
    for campaign_id in unfinished:
        pipe.exists(dispatch_lock_key(campaign_id))
    held = pipe.execute()
    return [cid for cid, locked in zip(unfinished, held, strict=True) if not locked]


def resume_dispatches(runtime: Runtime) -> list[int]:
    """Queue the dispatch of every stalled campaign again (see :func:`stalled_dispatches`).

    A campaign is queued at most once per :data:`DISPATCH_RESCUE_SECONDS`, so a dispatch job
    that merely waits its turn behind send batches is not queued over and over; a duplicate
    dispatch job finds the campaign locked or done and returns.
    """
    resumed: list[int] = []
    for campaign_id in stalled_dispatches(runtime):
        key = f"{_RESCUE_PREFIX}{campaign_id}"
        if runtime.redis.set(key, "1", nx=True, ex=DISPATCH_RESCUE_SECONDS):
            enqueue_dispatch(runtime, campaign_id)
            resumed.append(campaign_id)
    if resumed:
        log.warning(
            "dispatch of campaign(s) %s had stopped (its process died); queued again to resume",
            ", ".join(map(str, resumed)),
        )
    return resumed


#: Rows waiting longer than this past their due-by time are reported as stalled.
STALL_GRACE_SECONDS = 60


def stalls(runtime: Runtime, *, campaign_id: int | None = None) -> list[str]:
    """What is stuck in delivery right now, and why, in words an operator can act on.

    Empty while workers keep up: every item here is something a live worker's sweep would have
    resolved within seconds, so it says which process is missing. ``campaign_id`` limits it to
    one campaign's messages and dispatch.
    """
    now = utcnow()
    found: list[str] = []
    where = [] if campaign_id is None else [MESSAGE.c.campaign_id == campaign_id]
    with runtime.engine.connect() as connection:
        expired = connection.execute(
            sa.select(sa.func.count()).where(
                MESSAGE.c.status == MessageStatus.SENDING.value,
                MESSAGE.c.claimed_until < now,
                *where,
            )
        ).scalar_one()
        held = connection.execute(
            sa.select(MESSAGE.c.claim_token, sa.func.count())
            .where(
                MESSAGE.c.status == MessageStatus.SENDING.value,
                MESSAGE.c.claimed_until >= now,
                MESSAGE.c.claim_token.is_not(None),
                *where,
            )
            .group_by(MESSAGE.c.claim_token)
        ).all()
        overdue = connection.execute(
            sa.select(sa.func.count(), sa.func.min(MESSAGE.c.claimed_until)).where(
                MESSAGE.c.status.in_(PENDING_STATES),
                MESSAGE.c.claimed_until < now - timedelta(seconds=STALL_GRACE_SECONDS),
                *where,
            )
        ).one()
    if expired:
        found.append(
            f"{expired:,} messages are held by delivery attempts whose lease ran out (their "
            "worker stopped); a running `postwise worker` recovers them within seconds"
        )
    if held:
        owners = journal_owners(runtime.redis, [token for token, _ in held])
        gone = dead(runtime.redis, (o for o in owners.values() if o))
        orphaned = sum(n for token, n in held if owners.get(token) in gone)
        if orphaned:
            names = ", ".join(sorted({o for o in owners.values() if o in gone}))
            found.append(
                f"{orphaned:,} messages are held by worker(s) {names} that stopped beating; a "
                "running `postwise worker` recovers them within seconds"
            )
    count, since = overdue
    if count:
        found.append(
            f"{count:,} messages have waited past their due time (since "
            f"{as_utc(since).isoformat(timespec='seconds') if since else '?'}): no worker is "
            "taking them; run `postwise worker`"
        )
    for stalled in stalled_dispatches(runtime):
        if campaign_id is None or stalled == campaign_id:
            found.append(
                f"the dispatch of campaign {stalled} stopped before its whole audience was "
                "queued (its process died); a running `postwise worker` resumes it, or run "
                f"`postwise campaigns send {stalled}`"
            )
    return found


def sweep(runtime: Runtime, *, now: datetime | None = None) -> SweepReport:
    """Recover stale claims, overdue rows and stalled dispatches, unless another process is
    sweeping right now."""
    lease = runtime.settings.delivery_lease_seconds
    lock = runtime.redis.set(_LOCK_KEY, "1", nx=True, ex=max(5, lease // 2))
    if not lock:
        return SweepReport()
    try:
        report = recover_stale(runtime, now=now)
        requeued = requeue_overdue(runtime, now=now)
        resumed = resume_dispatches(runtime)
    finally:
        runtime.redis.delete(_LOCK_KEY)
    return SweepReport(report.recovered, report.in_doubt, requeued, len(resumed))


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
