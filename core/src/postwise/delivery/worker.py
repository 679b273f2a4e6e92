"""Running delivery workers: RQ ``SimpleWorker`` processes that also sweep and schedule.

A worker executes jobs in its own process (``SimpleWorker``, about 500 jobs/s here, where the
forking ``Worker`` manages 75) so its template cache, DKIM key and SMTP connections live as long
as the process. Each job is a whole batch, so one worker process keeps one core busy.

Against real Redis every worker also runs a maintenance thread, so that nothing waits for one
particular process:

* every second it moves due scheduled jobs (retries, deferrals, ``not_before``) onto their
  queues, each job by exactly one worker (an atomic ``ZREM`` decides which). RQ's own
  scheduler is not used: it runs in the one worker holding its lock, and a lock that outlives
  a killed holder left every retry and deferral waiting up to ten minutes;
* every :func:`sweep_interval` seconds it sweeps (:func:`postwise.delivery.recovery.sweep`:
  batches of dead workers, overdue rows, stalled dispatches) and rescues the RQ jobs a dead
  worker had started (:func:`rescue_orphaned_jobs`).

Each worker keeps a heartbeat (:mod:`postwise.delivery.liveness`), which is how the others know
within seconds that it died. SIGTERM (or Ctrl+C) stops it warmly: the batch in progress hands
no further message over, gives the rest back to the queue and settles, and the worker exits
within seconds with nothing in doubt; a second signal stops it at once.

The embedded stand-in has no Lua, which RQ's queues need for some operations, so :func:`drain`
runs everything in-process instead: it works the queues in burst mode, moves due scheduled jobs
onto their queues itself and sweeps, until nothing is left (``postwise demo`` and tests use it).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from types import FrameType
from typing import Any

from rq import Queue, SimpleWorker
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.serializers import JSONSerializer
from rq.utils import parse_composite_key

from postwise.delivery.atomic import supports_lua
from postwise.delivery.jobs import bind_runtime
from postwise.delivery.liveness import (
    Heartbeat,
    can_judge,
    current_owner,
    dead,
    request_stop,
    reset_stop,
)
from postwise.delivery.queue import (
    DELIVER_FUNC,
    DISPATCH_FUNC,
    DISPATCH_QUEUE,
    enqueue_batches,
    enqueue_dispatch,
    queue_name,
)
from postwise.delivery.recovery import sweep
from postwise.plugins import PROVIDERS
from postwise.runtime import Runtime

__all__ = [
    "DEFAULT_QUEUE",
    "default_queues",
    "drain",
    "promote_scheduled",
    "rescue_orphaned_jobs",
    "run_worker",
    "sweep_interval",
]

log = logging.getLogger(__name__)

#: The queue of everything that is not a send batch (campaign dispatch jobs).
DEFAULT_QUEUE = DISPATCH_QUEUE


def default_queues(runtime: Runtime) -> list[str]:
    """The send queue of every installed provider, then ``default``."""
    names = [queue_name(name) for name in runtime.plugins.registry(PROVIDERS).names()]
    return [*names, DEFAULT_QUEUE]


#: How long the pub/sub thread of RQ's worker waits for a command before it looks whether
#: it should stop. RQ asks for 60 s; redis-py 8's ``PubSubWorkerThread.stop()`` joins the thread
#: without a bound, so a worker whose pub/sub thread had just read the UNSUBSCRIBE reply (and
#: gone back to wait) before the stop flag was cleared took those 60 s to exit after SIGTERM.
PUBSUB_POLL_SECONDS = 1.0

#: How often the maintenance thread moves due scheduled jobs onto their queues.
PROMOTE_SECONDS = 1.0


class _PostwiseWorker(SimpleWorker):
    """RQ's ``SimpleWorker``, stopping promptly and telling delivery attempts to stop."""

    #: RQ backs off to a minute between attempts to reach Redis; after an outage the worker
    #: would then idle up to a minute longer than it needs to.
    max_connection_wait_time = 5.0

    def subscribe(self) -> None:
        self.log.info("Worker %s: subscribing to channel %s", self.name, self.pubsub_channel_name)
        self.pubsub = self.connection.pubsub()
        self.pubsub.subscribe(**{self.pubsub_channel_name: self.handle_payload})
        self.pubsub_thread = self.pubsub.run_in_thread(  # type: ignore[assignment]
            sleep_time=PUBSUB_POLL_SECONDS,
            daemon=True,
            exception_handler=self._pubsub_exception_handler,
        )

    def request_stop(self, signum: int, frame: FrameType | None) -> None:
        # First, so that the batch in progress stops handing messages over right away.
        request_stop()
        log.warning(
            "worker %s: stopping; the batch in progress (if any) hands nothing more over and "
            "gives the rest back to the queue",
            self.name,
        )
        super().request_stop(signum, frame)


def _worker(runtime: Runtime, queues: Sequence[str], name: str | None) -> SimpleWorker:
    connection = runtime.redis
    return _PostwiseWorker(
        [Queue(q, connection=connection, serializer=JSONSerializer) for q in queues],
        connection=connection,
        serializer=JSONSerializer,
        name=name,
    )


def sweep_interval(runtime: Runtime) -> float:
    """How often a worker sweeps: every few seconds (each sweep is a few indexed queries)."""
    return float(min(5, max(1, runtime.settings.delivery_lease_seconds // 4)))


def worker_name() -> str:
    """A name for a new worker process: unique, and saying where it runs."""
    return f"{socket.gethostname()}.{os.getpid()}.{uuid.uuid4().hex[:6]}"


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
    reset_stop()
    name = name or worker_name()
    heartbeat = Heartbeat(runtime.redis, name)
    heartbeat.start()
    stop = threading.Event()
    try:
        _maintain(runtime, names, first=True)
        maintenance = threading.Thread(
            target=_maintenance_loop,
            args=(runtime, names, stop),
            name="postwise-maintenance",
            daemon=True,
        )
        maintenance.start()
        return _worker(runtime, names, name).work(
            burst=burst, with_scheduler=False, logging_level=runtime.settings.log_level
        )
    finally:
        stop.set()
        heartbeat.stop()


def _maintain(runtime: Runtime, queues: Sequence[str], *, first: bool = False) -> None:
    report = sweep(runtime)
    if report.recovered or report.requeued or report.dispatches:
        log.info("sweep%s: %s", " on start" if first else "", report)
    rescue_orphaned_jobs(runtime, queues)


def _maintenance_loop(runtime: Runtime, queues: Sequence[str], stop: threading.Event) -> None:
    interval = sweep_interval(runtime)
    next_sweep = time.monotonic() + interval
    failing = False
    while not stop.wait(PROMOTE_SECONDS):
        try:
            promote_scheduled(runtime, queues)
            if time.monotonic() >= next_sweep:
                next_sweep = time.monotonic() + interval
                _maintain(runtime, queues)
            if failing:
                log.warning("delivery maintenance works again (scheduling, sweeping)")
                failing = False
        except Exception as exc:
            # Redis or PostgreSQL briefly away: said once, tried again every second.
            if not failing:
                log.error(
                    "delivery maintenance failed (%s: %s); retrying every %gs",
                    type(exc).__name__,
                    exc,
                    PROMOTE_SECONDS,
                )
                failing = True


def rescue_orphaned_jobs(runtime: Runtime, queues: Sequence[str]) -> int:
    """Queue again the delivery jobs a dead worker had started (dequeued), and return how many.

    RQ itself considers such a job abandoned only when its timeout has passed (the lease, ten
    minutes, for a batch; hours for a dispatch). A batch the worker had claimed is recovered by
    the sweep; this catches what it had not claimed yet, and a campaign's dispatch. A job is
    rescued by one worker only (whichever removes it from the registry first).
    """
    connection = runtime.redis
    rescued = 0
    for name in queues:
        queue = Queue(name, connection=connection, serializer=JSONSerializer)
        key = queue.started_job_registry.key
        entries = [_text(e) for e in connection.zrange(key, 0, -1)]
        if not entries:
            continue
        parsed = [(entry, *parse_composite_key(entry)) for entry in entries]
        pipe = connection.pipeline(transaction=False)
        for _, job_id, execution_id in parsed:
            pipe.hget(f"rq:execution:{job_id}:{execution_id}", "worker_name")
        owners = [w.decode() if w else "" for w in pipe.execute()]
        me = current_owner()
        gone = dead(connection, (o for o in owners if o != me)) if can_judge() else set()
        for (entry, job_id, _), owner in zip(parsed, owners, strict=True):
            if owner not in gone:
                continue
            try:
                job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
            except NoSuchJobError:
                continue
            if job.func_name not in (DELIVER_FUNC, DISPATCH_FUNC):
                continue  # not delivery's: RQ's own cleanup sees to it
            if not connection.zrem(key, entry):
                continue  # another worker rescued it
            _requeue(runtime, job)
            rescued += 1
            log.warning("rescued job %s of dead worker %s: queued again", job_id, owner)
    return rescued


def _requeue(runtime: Runtime, job: Job) -> None:
    args: Any = job.args
    if job.func_name == DELIVER_FUNC:
        provider = args[1] if len(args) > 1 and args[1] else runtime.settings.provider
        enqueue_batches(runtime, provider, [list(args[0])])
    else:
        enqueue_dispatch(runtime, int(args[0]))
    # The dead worker's copy is finished with: it expires instead of staying "started".
    job.cleanup(ttl=3600)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def promote_scheduled(runtime: Runtime, queues: Sequence[str]) -> tuple[int, float | None]:
    """Move due scheduled jobs onto their queues (what RQ's scheduler does).

    Safe in every process at once: a job is moved by whichever removes it from the schedule
    first. Returns how many this call moved and the time (Unix seconds) of the next one still
    waiting.
    """
    connection = runtime.redis
    moved = 0
    upcoming: list[float] = []
    now = time.time()
    for name in queues:
        queue = Queue(name, connection=connection, serializer=JSONSerializer)
        registry = queue.scheduled_job_registry
        for job_id in registry.get_jobs_to_schedule(int(now)):
            if not connection.zrem(registry.key, job_id):
                continue  # another process moved it
            try:
                job = Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
            except NoSuchJobError:
                continue
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
