"""The one consumer-group reader that every reader of the event stream is built on.

A :class:`StreamConsumer` is one consumer of one Redis consumer group. It provides what every
reader needs and nothing about what it does with the events:

* :meth:`ensure_group` creates the group (and the stream) once;
* :meth:`read_own_pending` returns what this consumer read before but never acknowledged (a
  restarted process of the same name), :meth:`read_new` what has arrived since;
* :meth:`claim_stale` takes over entries another consumer left pending longer than
  ``claim_idle_ms`` (``XAUTOCLAIM``, resuming where the last call stopped); entries deleted from
  the stream while pending (erasure, trimming) are acknowledged, never handed out;
* :meth:`ack` acknowledges entries — after the subclass committed what they caused, never
  before, so delivery is at least once and handlers must be idempotent by event id;
* :meth:`decode` turns entries into :class:`~postwise.events.EventEnvelope` s and reports the
  undecodable ones;
* :meth:`stop` asks :meth:`consume` to return after the current batch, and :meth:`leave` removes
  the consumer from the group when it holds nothing.

Subclasses implement :meth:`handle` and may override :meth:`step`, or run the primitives in a
loop of their own: the analytics collector (:mod:`postwise.analytics.collector`), the trigger
engine (:mod:`postwise.triggers.engine`) and the compliance consumer
(:mod:`postwise.compliance.processing`).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import redis as redis_module

from postwise.events import EVENT_STREAM, EventEnvelope, decode_event
from postwise.redis_client import as_text

if TYPE_CHECKING:
    import redis

__all__ = ["Entry", "StreamConsumer", "default_consumer_name"]

log = logging.getLogger(__name__)

#: One stream entry as redis-py returns it: its id and its fields (empty once deleted).
Entry = tuple[Any, Any]
#: Consumers with nothing pending that have been idle this long are removed from the group.
CONSUMER_RETENTION_MS = 3_600_000
#: Failures that mean "try the batch again later": the entries stay pending.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    redis_module.exceptions.ConnectionError,
    redis_module.exceptions.TimeoutError,
)


def default_consumer_name() -> str:
    """``<host>-<pid>``: unique per process, recognisable in XINFO CONSUMERS."""
    return f"{socket.gethostname()}-{os.getpid()}"


class StreamConsumer:
    """One consumer of ``group`` on ``stream``; see the module docs."""

    #: Where a new group starts: ``"0"`` replays what the stream holds, ``"$"`` only new events.
    start_id: str = "0"

    def __init__(
        self,
        client: redis.Redis,
        *,
        group: str,
        consumer: str | None = None,
        stream: str = EVENT_STREAM,
        batch_size: int = 500,
        claim_idle_ms: int = 60_000,
    ) -> None:
        self.redis = client
        self.group = group
        self.consumer = consumer or default_consumer_name()
        self.stream = stream
        self.batch_size = batch_size
        self.claim_idle_ms = claim_idle_ms
        self.stopping = threading.Event()
        self._group_ready = False
        self._claim_cursor: bytes | str = "0-0"

    # -- the group ------------------------------------------------------------------------------

    def ensure_group(self, start_id: str | None = None) -> None:
        """Create the consumer group (and the stream) unless it exists."""
        if self._group_ready:
            return
        try:
            self.redis.xgroup_create(
                self.stream, self.group, id=start_id or self.start_id, mkstream=True
            )
        except redis_module.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        self._group_ready = True

    def leave(self) -> None:
        """Remove this consumer from the group if it holds nothing, and prune long-idle ones."""
        try:
            consumers: Any = self.redis.xinfo_consumers(self.stream, self.group)
            for consumer in consumers:
                name = consumer["name"]
                name = as_text(name)
                idle = int(consumer.get("idle", 0))
                if consumer["pending"] == 0 and (
                    name == self.consumer or idle > CONSUMER_RETENTION_MS
                ):
                    self.redis.xgroup_delconsumer(self.stream, self.group, name)
        except Exception as exc:  # tidying up must never turn a clean stop into a failure
            log.warning("could not tidy the consumer group: %s", exc)

    # -- reading --------------------------------------------------------------------------------

    def _read(
        self, start: str, *, block: int | None = None, count: int | None = None
    ) -> list[Entry]:
        reply: Any = self.redis.xreadgroup(
            self.group,
            self.consumer,
            {self.stream: start},
            count=count or self.batch_size,
            block=block,
        )
        return list(reply[0][1]) if reply else []

    def read_own_pending(self, count: int | None = None) -> list[Entry]:
        """Entries this consumer read earlier and has not acknowledged."""
        return self._read("0", count=count)

    def read_new(self, count: int | None = None, block_ms: int | None = None) -> list[Entry]:
        """Entries no consumer of the group has read, waiting up to ``block_ms`` for some."""
        return self._read(">", block=None if block_ms is None else max(1, block_ms), count=count)

    def claim_stale(self, count: int | None = None) -> list[Entry]:
        """Up to ``count`` entries idle longer than ``claim_idle_ms`` in other consumers' hands.

        Resumes the scan where the previous call stopped and ends at the end of the pending
        list; entries deleted from the stream meanwhile are acknowledged and left out.
        """
        wanted = count or self.batch_size
        entries: list[Entry] = []
        while len(entries) < wanted:
            reply: Any = self.redis.xautoclaim(
                self.stream,
                self.group,
                self.consumer,
                min_idle_time=self.claim_idle_ms,
                start_id=self._claim_cursor,
                count=wanted - len(entries),
            )
            cursor, claimed, *rest = reply
            self._claim_cursor = cursor
            deleted = list(rest[0]) if rest and rest[0] else []
            deleted.extend(entry_id for entry_id, fields in claimed if not fields)
            if deleted:
                self.redis.xack(self.stream, self.group, *deleted)
            entries.extend((entry_id, fields) for entry_id, fields in claimed if fields)
            if cursor in (b"0-0", "0-0"):
                break
        if entries:
            log.info(
                "%s: claimed %d entries idle in dead or stuck consumers", self.group, len(entries)
            )
        return entries

    @staticmethod
    def decode(entries: Sequence[Entry]) -> tuple[list[tuple[Any, EventEnvelope]], list[Entry]]:
        """The events of ``entries`` with their ids, and the entries that do not decode.

        Entries without fields (deleted from the stream while pending) are in neither list.
        """
        events: list[tuple[Any, EventEnvelope]] = []
        bad: list[Entry] = []
        for entry_id, fields in entries:
            if not fields:
                continue
            try:
                events.append((entry_id, decode_event(fields)))
            except (ValueError, KeyError, TypeError):
                bad.append((entry_id, fields))
        return events, bad

    # -- acknowledging --------------------------------------------------------------------------

    def ack(self, entries: Sequence[Entry], pipe: Any = None) -> None:
        """Acknowledge ``entries`` (on ``pipe``, to commit it with other writes, when given)."""
        if not entries:
            return
        (pipe if pipe is not None else self.redis).xack(
            self.stream, self.group, *[entry_id for entry_id, _ in entries]
        )

    # -- running --------------------------------------------------------------------------------

    def handle(self, entries: Sequence[Entry]) -> None:
        """Act on a batch of entries; :meth:`step` acknowledges them when this returns."""
        raise NotImplementedError

    def step(self, block_ms: int | None = None) -> int:
        """One batch: stale entries first, else new ones; handled, then acknowledged."""
        self.ensure_group()
        entries = self.claim_stale() or self.read_new(block_ms=block_ms)
        if not entries:
            return 0
        self.handle(entries)
        self.ack(entries)
        return len(entries)

    def stop(self) -> None:
        """Ask :meth:`consume` to return once the batch in hand is handled."""
        self.stopping.set()

    def consume(
        self,
        *,
        stop: threading.Event | None = None,
        idle_exit: float | None = None,
        block_ms: int = 1000,
    ) -> int:
        """Handle batches until stopped (or ``idle_exit`` seconds without entries).

        A Redis outage leaves the batch pending and is retried with backoff. Returns how many
        entries were handled.
        """
        stop = stop or self.stopping
        total = 0
        failures = 0
        idle_since = time.monotonic()
        while not (stop.is_set() or self.stopping.is_set()):
            try:
                handled = self.step(block_ms)
                failures = 0
            except self.transient_errors() as exc:
                failures += 1
                delay = min(30.0, 0.5 * 2**failures)
                log.warning("%s consumer: %s; retrying in %.1f s", self.group, exc, delay)
                self.after_failure()
                stop.wait(delay)
                continue
            total += handled
            if handled:
                idle_since = time.monotonic()
            elif idle_exit is not None and time.monotonic() - idle_since > idle_exit:
                break
        return total

    def transient_errors(self) -> tuple[type[BaseException], ...]:
        """Exceptions after which :meth:`consume` waits and tries the batch again."""
        return TRANSIENT_ERRORS

    def after_failure(self) -> None:
        """Called by :meth:`consume` after a transient failure (the batch is still pending)."""
