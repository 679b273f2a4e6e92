"""Delivery's queue seam: putting work on RQ queues, with nothing about running it.

Every delivery module that hands work to the workers enqueues through here: dispatch (a
campaign's batches, a send request), outcomes (retries and deferrals), recovery (rescued rows).
The RQ entry points that run that work live one layer up, in :mod:`postwise.delivery.jobs`,
and are named here only by their dotted path, so nothing below them imports them back.

A job's payload is only ids (JSON-serialised, never pickled): the ledger is the truth about
each message, the queue merely says "look at these". That is what lets a job be re-delivered,
retried or duplicated by the sweeper without any message being sent twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from rq import Queue, Retry
from rq.serializers import JSONSerializer

if TYPE_CHECKING:
    from postwise.runtime import Runtime

__all__ = [
    "DELIVER_FUNC",
    "DISPATCH_FUNC",
    "DISPATCH_QUEUE",
    "QUEUE_PREFIX",
    "chunked",
    "enqueue_at",
    "enqueue_batches",
    "enqueue_dispatch",
    "enqueue_later",
    "queue_name",
    "send_queue",
]

QUEUE_PREFIX = "send."
#: The RQ entry points (:mod:`postwise.delivery.jobs`), by name: queued jobs keep these paths.
DELIVER_FUNC = "postwise.delivery.jobs.deliver_batch"
DISPATCH_FUNC = "postwise.delivery.jobs.dispatch_job"
#: Campaign dispatch jobs run on this queue (workers serve it after the send queues).
DISPATCH_QUEUE = "default"
#: RQ's timeout for a dispatch job. A dispatch that dies is not left to this: its lock lapses
#: within seconds and the sweeper queues it again (:mod:`postwise.delivery.recovery`).
_DISPATCH_TIMEOUT = 6 * 3600

#: RQ re-runs a job that raised (a job whose worker died is rescued by the sweeper).
_RETRY = Retry(max=3, interval=[10, 60, 300])
_RESULT_TTL = 3600
_FAILURE_TTL = 7 * 86400


def queue_name(provider: str) -> str:
    """The RQ queue of ``provider``'s batches."""
    return QUEUE_PREFIX + provider


def send_queue(runtime: Runtime, provider: str) -> Queue:
    """The RQ queue of ``provider`` on the runtime's Redis."""
    return Queue(queue_name(provider), connection=runtime.redis, serializer=JSONSerializer)


def chunked(ids: Sequence[str], size: int) -> list[Sequence[str]]:
    """``ids`` in consecutive batches of at most ``size``."""
    return [ids[i : i + size] for i in range(0, len(ids), size)]


def _job_options(
    runtime: Runtime, count: int, provider: str, *, timeout_key: str = "job_timeout"
) -> dict[str, Any]:
    # prepare_data calls the timeout ``timeout``; enqueue_in and enqueue_at ``job_timeout``.
    return {
        timeout_key: runtime.settings.delivery_lease_seconds,
        "result_ttl": _RESULT_TTL,
        "failure_ttl": _FAILURE_TTL,
        "retry": _RETRY,
        "description": f"deliver {count} messages via {provider}",
    }


def enqueue_batches(runtime: Runtime, provider: str, batches: Iterable[Sequence[str]]) -> list[str]:
    """Enqueue one job per batch of message ids (``enqueue_many``: one round trip); job ids."""
    queue = send_queue(runtime, provider)
    data = [
        Queue.prepare_data(
            DELIVER_FUNC,
            args=(list(batch), provider),
            **_job_options(runtime, len(batch), provider, timeout_key="timeout"),
        )
        for batch in batches
        if batch
    ]
    if not data:
        return []
    return [job.id for job in queue.enqueue_many(data)]


def enqueue_later(
    runtime: Runtime, provider: str, message_ids: Sequence[str], delay: float
) -> list[str]:
    """Enqueue ``message_ids`` to be delivered in ``delay`` seconds (in batches).

    RQ keeps scheduled times in whole seconds, rounded down; the time is rounded up to the next
    whole second here, so a job never runs before its delay is over (a rate-limit deferral that
    came back early would only find the bucket still empty).
    """
    size = runtime.settings.batch_size
    if delay <= 0:
        return enqueue_batches(runtime, provider, chunked(message_ids, size))
    due = datetime.now(UTC) + timedelta(seconds=delay)
    return enqueue_at(runtime, provider, message_ids, _next_whole_second(due))


def _next_whole_second(when: datetime) -> datetime:
    whole = when.replace(microsecond=0)
    return whole if whole == when else whole + timedelta(seconds=1)


def enqueue_at(
    runtime: Runtime, provider: str, message_ids: Sequence[str], when: datetime
) -> list[str]:
    """Enqueue ``message_ids`` to be delivered at ``when`` (timezone-aware)."""
    queue = send_queue(runtime, provider)
    return [
        queue.enqueue_at(
            when, DELIVER_FUNC, list(batch), provider, **_job_options(runtime, len(batch), provider)
        ).id
        for batch in chunked(message_ids, runtime.settings.batch_size)
    ]


def enqueue_dispatch(runtime: Runtime, campaign_id: int) -> str:
    """Enqueue the dispatch of a campaign (for workers); returns the job id."""
    queue = Queue(DISPATCH_QUEUE, connection=runtime.redis, serializer=JSONSerializer)
    job = queue.enqueue(
        DISPATCH_FUNC,
        campaign_id,
        job_timeout=_DISPATCH_TIMEOUT,
        result_ttl=_RESULT_TTL,
        failure_ttl=_FAILURE_TTL,
        retry=_RETRY,
        description=f"dispatch campaign {campaign_id}",
    )
    return job.id
