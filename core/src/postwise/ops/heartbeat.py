"""Process heartbeats in Redis: which long-running processes are alive, and since when.

Each long-running process (``serve``, ``worker``, ``events collect``, ``triggers run``,
``reputation run``, ``crm run``) beats every few seconds into one sorted set (member = process,
score = time of its last beat) with its details in a hash beside it. A process that stops cleanly
removes itself; one that dies stops beating and is counted dead once its last beat is older than
three intervals. ``/health`` and ``postwise run`` read them.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from typing import Any, Final, cast

import redis

__all__ = [
    "INTERVAL_SECONDS",
    "PROCESS_KINDS",
    "Heartbeat",
    "ProcessInfo",
    "live_processes",
]

log = logging.getLogger(__name__)

PROCESSES_KEY: Final = "postwise:processes"
PROCESS_INFO_KEY: Final = "postwise:process-info"
#: Seconds between two beats; a process is dead after three missed beats.
INTERVAL_SECONDS: Final = 5.0
#: Entries of processes dead for longer than this are removed when someone reads the set.
_FORGET_AFTER: Final = 3600.0

#: The kinds of long-running process, by the command that runs them.
PROCESS_KINDS: Final = {
    "server": "postwise serve",
    "worker": "postwise worker",
    "collector": "postwise events collect",
    "triggers": "postwise triggers run",
    "journeys": "postwise journeys run",
    "compliance": "postwise reputation run",
    "crm": "postwise crm run",
}


@dataclass(frozen=True, slots=True)
class ProcessInfo:
    """One process as its heartbeat describes it."""

    member: str
    kind: str
    host: str
    pid: int
    started_at: float
    beat_at: float

    @property
    def age(self) -> float:
        """Seconds since the last beat."""
        return max(0.0, time.time() - self.beat_at)

    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "host": self.host,
            "pid": self.pid,
            "started_at": self.started_at,
            "last_beat_seconds_ago": round(self.age, 1),
        }


class Heartbeat:
    """Beats for one process from a daemon thread while the ``with`` block runs."""

    def __init__(
        self, client: redis.Redis, kind: str, *, interval: float = INTERVAL_SECONDS
    ) -> None:
        if kind not in PROCESS_KINDS:
            raise ValueError(f"unknown process kind {kind!r}; one of {sorted(PROCESS_KINDS)}")
        self.client = client
        self.kind = kind
        self.interval = interval
        self.member = f"{kind}:{socket.gethostname()}:{os.getpid()}"
        self._started = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False

    def beat(self) -> None:
        now = time.time()
        info = {
            "kind": self.kind,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "started_at": self._started,
        }
        with self.client.pipeline(transaction=False) as pipe:
            pipe.zadd(PROCESSES_KEY, {self.member: now})
            pipe.hset(PROCESS_INFO_KEY, self.member, json.dumps(info))
            pipe.execute()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
                if self._failing:
                    log.info("heartbeat of %s restored", self.kind)
                self._failing = False
            except redis.RedisError as exc:
                # Redis away: the process goes on; /health will say it is not beating.
                if not self._failing:
                    log.warning("heartbeat of %s cannot reach Redis: %s", self.kind, exc)
                self._failing = True

    def __enter__(self) -> Heartbeat:
        self.beat()
        self._thread = threading.Thread(
            target=self._run, name=f"postwise-heartbeat-{self.kind}", daemon=True
        )
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        try:
            with self.client.pipeline(transaction=False) as pipe:
                pipe.zrem(PROCESSES_KEY, self.member)
                pipe.hdel(PROCESS_INFO_KEY, self.member)
                pipe.execute()
        except redis.RedisError:
            log.warning("heartbeat of %s could not be removed; it will go stale", self.kind)


def live_processes(
    client: redis.Redis, *, stale_after: float = 3 * INTERVAL_SECONDS
) -> list[ProcessInfo]:
    """Processes whose last beat is at most ``stale_after`` seconds old."""
    now = time.time()
    forgotten = client.zrangebyscore(PROCESSES_KEY, "-inf", now - _FORGET_AFTER)
    if forgotten:
        with client.pipeline(transaction=False) as pipe:
            pipe.zrem(PROCESSES_KEY, *forgotten)
            pipe.hdel(PROCESS_INFO_KEY, *forgotten)
            pipe.execute()
    beats = cast(
        "list[tuple[bytes, float]]",
        client.zrangebyscore(PROCESSES_KEY, now - stale_after, "+inf", withscores=True),
    )
    if not beats:
        return []
    details = client.hmget(PROCESS_INFO_KEY, [member for member, _ in beats])
    processes = []
    for (member, beat_at), raw in zip(beats, details, strict=True):
        if raw is None:
            continue
        info = json.loads(raw)
        processes.append(
            ProcessInfo(
                member=member.decode() if isinstance(member, bytes) else str(member),
                kind=info["kind"],
                host=info["host"],
                pid=int(info["pid"]),
                started_at=float(info["started_at"]),
                beat_at=float(beat_at),
            )
        )
    return processes
