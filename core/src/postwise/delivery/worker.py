"""Running delivery workers: RQ ``SimpleWorker`` processes that also sweep and schedule.

A worker executes jobs in its own process (``SimpleWorker``, about 500 jobs/s here, where the
forking ``Worker`` manages 75) so its template cache, DKIM key and SMTP connections live as long
as the process. Each job is a whole batch, so one worker process keeps one core busy.

Against real Redis the worker runs RQ's scheduler (jobs enqueued with ``enqueue_at``/
``enqueue_in``: retries, deferrals, ``not_before``) and a sweeper thread
(:func:`postwise.delivery.recovery.sweep`). The embedded stand-in has no Lua, which RQ's
scheduler needs, so :func:`drain` runs everything in-process instead: it works the queues in
burst mode, moves due scheduled jobs onto their queues itself and sweeps, until nothing is left
(``postwise demo`` and tests use it).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime

from rq import Queue, SimpleWorker
from rq.job import Job
from rq.serializers import JSONSerializer

from postwise.delivery.atomic import supports_lua
from postwise.delivery.jobs import DISPATCH_QUEUE, bind_runtime, queue_name
from postwise.delivery.recovery import sweep
from postwise.runtime import Runtime

__all__ = [
    "DEFAULT_QUEUE",
    "default_queues",
    "drain",
    "promote_scheduled",
    "run_worker",
    "sweep_interval",
]

log = logging.getLogger(__name__)

#: The queue of everything that is not a send batch (campaign dispatch jobs).
DEFAULT_QUEUE = DISPATCH_QUEUE


def default_queues(runtime: Runtime) -> list[str]:
    """The send queue of every installed provider, then ``default``."""
    names = [queue_name(name) for name in runtime.plugins.registry("providers").names()]
    return [*names, DEFAULT_QUEUE]


def _worker(runtime: Runtime, queues: Sequence[str], name: str | None) -> SimpleWorker:
    connection = runtime.redis
    return SimpleWorker(
        [Queue(q, connection=connection, serializer=JSONSerializer) for q in queues],
        connection=connection,
        serializer=JSONSerializer,
        name=name,
    )


def sweep_interval(runtime: Runtime) -> float:
    """How often a worker sweeps: often enough that a recovery waits little past the lease."""
    return float(min(60, max(1, runtime.settings.delivery_lease_seconds // 4)))


def run_worker(
    runtime: Runtime,
    queues: Sequence[str] | None = None,
    burst: bool = False,
    name: str | None = None,
) -> bool:
    """Work ``queues`` (default: every send queue, then ``default``); True if any job ran.

    With ``burst`` the worker stops when the queues are empty. It sweeps once before it starts,
    so a restarted worker picks up the batch its predecessor was killed in.
    """
    bind_runtime(runtime)
    names = list(queues or default_queues(runtime))
    if not supports_lua(runtime.redis):
        return drain(runtime, queues=names, wait_for_scheduled=not burst)
    report = sweep(runtime)
    if report.recovered or report.requeued:
        log.info("sweep on start: %s", report)
    stop = threading.Event()
    sweeper = threading.Thread(
        target=_sweep_loop, args=(runtime, stop), name="postwise-sweeper", daemon=True
    )
    sweeper.start()
    try:
        return _worker(runtime, names, name).work(
            burst=burst, with_scheduler=True, logging_level=runtime.settings.log_level
        )
    finally:
        stop.set()


def _sweep_loop(runtime: Runtime, stop: threading.Event) -> None:
    interval = sweep_interval(runtime)
    while not stop.wait(interval):
        try:
            report = sweep(runtime)
            if report.recovered or report.requeued:
                log.info("sweep: %s", report)
        except Exception:
            # A sweep that fails (database briefly away) is simply tried again next interval.
            log.exception("delivery sweep failed")


def promote_scheduled(runtime: Runtime, queues: Sequence[str]) -> tuple[int, float | None]:
    """Move due scheduled jobs onto their queues (what RQ's scheduler does).

    Returns how many were moved and the time (Unix seconds) of the next one still waiting.
    """
    connection = runtime.redis
    moved = 0
    upcoming: list[float] = []
    now = time.time()
    for name in queues:
        queue = Queue(name, connection=connection, serializer=JSONSerializer)
        registry = queue.scheduled_job_registry
        for job_id in registry.get_jobs_to_schedule(int(now)):
            job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
            registry.remove(job)
            queue.enqueue_job(job)
            moved += 1
        next_ids = connection.zrange(registry.key, 0, 0, withscores=True)
        if next_ids:
            upcoming.append(float(next_ids[0][1]))
    return moved, min(upcoming) if upcoming else None


def drain(
    runtime: Runtime,
    queues: Sequence[str] | None = None,
    *,
    wait_for_scheduled: bool = True,
    max_wait: float = 120.0,
    on_idle: Callable[[], None] | None = None,
) -> bool:
    """Work ``queues`` in this process until they are empty and nothing scheduled is due.

    Scheduled jobs (retries, deferrals) due within ``max_wait`` seconds are waited for when
    ``wait_for_scheduled``; later ones stay scheduled. Returns whether any job ran.
    """
    bind_runtime(runtime)
    names = list(queues or default_queues(runtime))
    worker = _worker(runtime, names, None)
    deadline = time.monotonic() + max_wait
    worked = False
    while True:
        sweep(runtime)
        promote_scheduled(runtime, names)
        worked = worker.work(burst=True, logging_level="WARNING") or worked
        if on_idle is not None:
            on_idle()
        moved, upcoming = promote_scheduled(runtime, names)
        if moved:
            continue
        if not wait_for_scheduled or upcoming is None:
            return worked
        wait = upcoming - time.time()
        if time.monotonic() + wait > deadline:
            log.warning(
                "scheduled deliveries remain (next at %s); they run when a worker is started",
                datetime.fromtimestamp(upcoming, UTC).isoformat(timespec="seconds"),
            )
            return worked
        time.sleep(max(0.05, min(wait, 1.0)))
