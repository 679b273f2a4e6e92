"""Which delivery processes are alive, and whether this one is stopping.

A worker process keeps a heartbeat key in Redis (:class:`Heartbeat`): set when it starts,
renewed every :data:`HEARTBEAT_SECONDS`, gone :data:`ALIVE_SECONDS` after the process died
(SIGKILL, out of memory, machine lost). Every delivery attempt records its owner in its journal
(:mod:`postwise.delivery.journal`), so the sweeper can tell, seconds after a worker died, that
its batch will never settle, instead of waiting out the batch's lease (ten minutes by
default); the same goes for the RQ jobs the dead worker had started (a batch it had dequeued
but not claimed yet, a campaign's dispatch).

A heartbeat that lapses while its process lives on (Redis unreachable for longer than
:data:`ALIVE_SECONDS`, the process frozen) is not a problem for correctness: the sweeper
*fences* an attempt's journal before it recovers its rows, and an attempt never hands a message
over without first writing to its journal, which fails once fenced. The attempt stops; its
rows are the sweeper's.

:func:`request_stop` marks this process as stopping (a worker asked to shut down): delivery
attempts then hand no further message over, finish the one being transmitted, and give the
rest back to the queue, so the worker exits within seconds with nothing in doubt.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable

import redis

__all__ = [
    "ALIVE_PREFIX",
    "ALIVE_SECONDS",
    "HEARTBEAT_SECONDS",
    "REGISTERED_PREFIX",
    "Heartbeat",
    "can_judge",
    "current_owner",
    "dead",
    "request_stop",
    "reset_stop",
    "stop_requested",
]

log = logging.getLogger(__name__)

ALIVE_PREFIX = "postwise:delivery:alive:"
#: A name kept a heartbeat here (so a missing heartbeat means it died); kept a week.
REGISTERED_PREFIX = "postwise:delivery:registered:"
_REGISTERED_SECONDS = 7 * 86400
#: How often a heartbeat is renewed.
HEARTBEAT_SECONDS = 2.0
#: How long a heartbeat outlives its last renewal: a dead worker is known dead after this.
ALIVE_SECONDS = 10

_stopping = threading.Event()
_current: dict[str, Heartbeat] = {}
_current_lock = threading.Lock()


def request_stop() -> None:
    """This process is shutting down: attempts hand no further message over."""
    _stopping.set()


def reset_stop() -> None:
    """Forget a stop request (a worker started again in the same process, as tests do)."""
    _stopping.clear()


def stop_requested() -> bool:
    """Whether this process was asked to stop."""
    return _stopping.is_set()


def current_owner() -> str | None:
    """The name this process's heartbeat is kept under, if it keeps one (workers do)."""
    with _current_lock:
        beat = _current.get("heartbeat")
        return beat.name if beat is not None else None


def can_judge() -> bool:
    """Whether this process may declare others dead from their heartbeats right now.

    Not while its own view of Redis is fresh from a gap: after Redis was unreachable (or
    restarted), every heartbeat may have lapsed at once, and live workers need a beat or two to
    renew theirs. A process that keeps no heartbeat judges at once.
    """
    with _current_lock:
        beat = _current.get("heartbeat")
    return beat is None or beat.steady()


def dead(client: redis.Redis, names: Iterable[str]) -> set[str]:
    """The names among ``names`` known dead: registered by a heartbeat that has lapsed.

    A name that never kept a heartbeat here (a plain ``rq worker``, a process that delivers
    in-line) is never reported dead: only the lease of what it holds says when it is gone.
    """
    wanted = [name for name in dict.fromkeys(names) if name]
    if not wanted:
        return set()
    pipe = client.pipeline(transaction=False)
    for name in wanted:
        pipe.exists(ALIVE_PREFIX + name)
        pipe.exists(REGISTERED_PREFIX + name)
    found = pipe.execute()
    return {
        name
        for name, beating, registered in zip(wanted, found[0::2], found[1::2], strict=True)
        if registered and not beating
    }


class Heartbeat:
    """This process's heartbeat under ``name`` (a worker's name), renewed by a daemon thread."""

    def __init__(self, client: redis.Redis, name: str) -> None:
        self.client = client
        self.name = name
        self.key = ALIVE_PREFIX + name
        self._registered = REGISTERED_PREFIX + name
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._unreachable = False
        #: When this process last found its heartbeat lapsed or Redis unreachable (never yet).
        self._troubled_at = -float("inf")

    def start(self) -> None:
        """Set the key (before the process takes any work) and keep renewing it."""
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.key, "1", ex=ALIVE_SECONDS)
        pipe.set(self._registered, "1", ex=_REGISTERED_SECONDS)
        pipe.execute()
        self._thread = threading.Thread(target=self._run, name="postwise-heartbeat", daemon=True)
        self._thread.start()
        with _current_lock:
            _current["heartbeat"] = self

    def stop(self) -> None:
        """Stop renewing and remove the key (the process is leaving cleanly)."""
        self._stop.set()
        with _current_lock:
            if _current.get("heartbeat") is self:
                del _current["heartbeat"]
        if self._thread is not None:
            self._thread.join(timeout=HEARTBEAT_SECONDS + 1)
        with contextlib.suppress(redis.RedisError):  # else it lapses by itself
            self.client.delete(self.key, self._registered)

    def steady(self) -> bool:
        """Whether the heartbeat has been renewed without trouble for a while (see
        :func:`can_judge`)."""
        return time.monotonic() - self._troubled_at > ALIVE_SECONDS + 2 * HEARTBEAT_SECONDS

    def beat(self) -> None:
        """Renew the key once; say so in the log when it had lapsed or Redis was away."""
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.set(self.key, "1", ex=ALIVE_SECONDS, xx=True)
            pipe.expire(self._registered, _REGISTERED_SECONDS)
            renewed = pipe.execute()[0]
            if not renewed:
                self._troubled_at = time.monotonic()
                # Lapsed: the sweeper may have fenced and taken over this process's attempts
                # (they stop at their next message). The process itself carries on.
                log.warning(
                    "worker %s: heartbeat had lapsed (Redis unreachable or the process stalled "
                    "for over %ds); batches in progress may have been taken over by the sweeper",
                    self.name,
                    ALIVE_SECONDS,
                )
                self.client.set(self.key, "1", ex=ALIVE_SECONDS)
            if self._unreachable:
                log.warning("worker %s: Redis is reachable again; carrying on", self.name)
                self._unreachable = False
        except redis.RedisError as exc:
            self._troubled_at = time.monotonic()
            if not self._unreachable:
                log.error(
                    "worker %s: Redis unreachable (%s); waiting for it, nothing is sent meanwhile",
                    self.name,
                    exc,
                )
                self._unreachable = True

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            self.beat()
