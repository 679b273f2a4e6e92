"""Readiness: the database and Redis answer, every required process is alive, nothing lags.

``/health`` answers 200 only when all of that holds and 503 otherwise, with the details a person
needs to act: which process kind has no live instance (and the command that runs it), which
consumer group is how many seconds and events behind, which queue has waited how long, and how
many scheduled jobs (retries, deferrals, delayed sends) are overdue because no worker is
scheduling them, and what is stuck in delivery (batches of dead workers, messages past their
due time, a campaign dispatch that stopped: :func:`postwise.delivery.recovery.stalls`, which
delivery contributes through ``postwise_register_health_checks`` like any subsystem's check).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Final

import redis
import sqlalchemy as sa
from rq import Queue
from rq.registry import ScheduledJobRegistry

from postwise.events import EVENT_STREAM
from postwise.ops.heartbeat import PROCESS_KINDS, live_processes
from postwise.plugins import HEALTH_CHECKS
from postwise.runtime import Runtime

__all__ = ["Readiness", "readiness"]

#: Which process kind reads each consumer group of the event stream.
GROUP_KINDS: Final = {
    "analytics": "collector",
    "triggers": "triggers",
    "journeys": "journeys",
    "compliance": "compliance",
}


@dataclass
class Readiness:
    """What ``/health`` reports."""

    checks: dict[str, str] = field(default_factory=dict)
    processes: dict[str, dict[str, Any]] = field(default_factory=dict)
    backlog: dict[str, dict[str, Any]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ready(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.ready else "degraded",
            "checks": self.checks,
            "processes": self.processes,
            "backlog": self.backlog,
            "problems": self.problems,
        }


def readiness(runtime: Runtime) -> Readiness:
    """Check everything ``/health`` reports; never raises for a server that is down."""
    result = Readiness()
    try:
        with runtime.engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
        result.checks["database"] = "ok"
    except Exception as exc:  # any driver error means the same: not ready
        result.checks["database"] = f"error: {type(exc).__name__}"
        result.problems.append("the database does not answer")
    try:
        runtime.redis.ping()
        result.checks["redis"] = "ok"
    except redis.RedisError as exc:
        result.checks["redis"] = f"error: {type(exc).__name__}"
        result.problems.append("Redis does not answer")
        return result
    settings = runtime.settings
    if settings.redis_url.startswith("fakeredis://"):
        # Embedded: the stand-in lives in this process, so no other process can share it.
        return result
    _processes(runtime.redis, list(settings.required_processes), result)
    _streams(runtime.redis, settings.health_max_lag_seconds, result)
    _queues(runtime.redis, settings.health_max_lag_seconds, result)
    _contributed(runtime, result)
    return result


def _contributed(runtime: Runtime, result: Readiness) -> None:
    """The subsystems' own checks (``postwise_register_health_checks``): delivery's stalls..."""
    for entry in runtime.plugins.registry(HEALTH_CHECKS):
        try:
            found = entry.component(runtime)
        except Exception as exc:  # reported, never raised: /health must answer
            result.checks[entry.name] = f"error: {type(exc).__name__}"
            continue
        result.checks[entry.name] = "stalled" if found else "ok"
        result.problems.extend(found)


def _processes(client: redis.Redis, required: list[str], result: Readiness) -> None:
    live = live_processes(client)
    for kind, command in PROCESS_KINDS.items():
        instances = [p.to_dict() for p in live if p.kind == kind]
        result.processes[kind] = {
            "live": len(instances),
            "required": kind in required,
            "instances": instances,
        }
        if kind in required and not instances:
            result.problems.append(f"no live {kind} process: run `{command}`")


def _streams(client: redis.Redis, max_lag: float, result: Readiness) -> None:
    try:
        groups = client.xinfo_groups(EVENT_STREAM)
    except redis.ResponseError:
        return  # no stream yet: nothing was ever published, nothing lags
    last = client.xinfo_stream(EVENT_STREAM).get("last-generated-id")
    last_ms = _id_ms(last)
    for group in groups:
        name = _text(group["name"])
        lag = group.get("lag")
        delivered_ms = _id_ms(group.get("last-delivered-id"))
        behind = 0.0
        if lag and last_ms is not None and delivered_ms is not None:
            behind = max(0.0, (last_ms - delivered_ms) / 1000)
        result.backlog[f"stream:{name}"] = {
            "waiting": lag if lag is not None else None,
            "pending": group.get("pending", 0),
            "behind_seconds": round(behind, 1),
        }
        if behind > max_lag:
            kind = GROUP_KINDS.get(name, name)
            result.problems.append(
                f"consumer group {name!r} is {behind:.0f} s behind ({lag:,} events waiting): "
                f"add or restart `{PROCESS_KINDS.get(kind, kind)}` processes"
            )


def _queues(client: redis.Redis, max_lag: float, result: Readiness) -> None:
    now = time.time()
    for queue in Queue.all(connection=client):
        depth = queue.count
        oldest = 0.0
        first = queue.get_job_ids(0, 0)
        if first:
            job = queue.fetch_job(first[0])
            if job is not None and job.enqueued_at is not None:
                oldest = max(0.0, now - job.enqueued_at.timestamp())
        overdue = ScheduledJobRegistry(queue=queue).get_jobs_to_schedule(int(now - max_lag))
        result.backlog[f"queue:{queue.name}"] = {
            "depth": depth,
            "oldest_seconds": round(oldest, 1),
            "scheduled_overdue": len(overdue),
        }
        if oldest > max_lag:
            result.problems.append(
                f"queue {queue.name!r} has waited {oldest:.0f} s ({depth:,} jobs): add or "
                "restart `postwise worker` processes"
            )
        if overdue:
            result.problems.append(
                f"{len(overdue):,} scheduled jobs of queue {queue.name!r} are more than "
                f"{max_lag:.0f} s overdue: no worker is scheduling them"
            )


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _id_ms(entry_id: Any) -> int | None:
    if not entry_id:
        return None
    head = _text(entry_id).partition("-")[0]
    return int(head) if head.isdigit() else None
