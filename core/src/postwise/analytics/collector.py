"""The batch writer: the ``analytics`` consumer group moves events from the stream to the sink.

Each collector process is one consumer of the group. It reads up to ``batch_size`` entries, or
what arrived within ``flush_interval`` seconds of the first one, writes them to the configured
sink in one transaction and acknowledges them (``XACK``) only after that commit. Delivery is
therefore at least once; the sink's de-duplication by ``event_id`` makes storage exactly once,
and the engagement update rides in the same transaction (SQL sink) or follows what the sink
reports as new.

* **Sink down** (PostgreSQL restarting, network): the batch stays unacknowledged in this
  consumer's pending list and is retried with backoff; meanwhile new events wait in the stream.
* **Collector killed**: its pending entries stay in the group. Any collector claims entries
  idle for ``claim_idle`` seconds (``XAUTOCLAIM``) and writes them; the events already stored
  are dropped by the sink's conflict handling.
* **Bad entries**: an entry that cannot be decoded, or an event the sink rejects as data, is
  copied to the dead-letter stream ``postwise:events:dead`` with the reason and acknowledged,
  so one poison event never blocks the pipeline (a rejected batch is bisected to find it).
* **Erased contacts**: events of contacts erased while they were in flight are dropped
  (see :mod:`postwise.analytics.erasure`).
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from postwise.analytics.engagement import EngagementModel, apply_engagement
from postwise.analytics.sinks import AnalyticsSink, StoredEvent
from postwise.errors import ValidationError
from postwise.events import decode_event
from postwise.plugins import ANALYTICS_SINKS
from postwise.streams.consumer import Entry, StreamConsumer

if TYPE_CHECKING:
    import redis

    from postwise.runtime import Runtime

__all__ = [
    "DEAD_LETTER_STREAM",
    "GROUP",
    "Collector",
    "CollectorConfig",
    "CollectorStats",
    "ensure_group",
    "open_sink",
]

log = logging.getLogger(__name__)

GROUP = "analytics"
DEAD_LETTER_STREAM = "postwise:events:dead"
#: Contacts erased recently (member: contact id, score: when); see postwise.analytics.erasure.
ERASED_CONTACTS_KEY = "postwise:erased-contacts"
_DEAD_LETTER_MAXLEN = 100_000


@dataclass(frozen=True, slots=True)
class CollectorConfig:
    """How a collector batches and recovers."""

    batch_size: int = 1000
    #: A partial batch is written at most this many seconds after its first entry arrived.
    flush_interval: float = 1.0
    #: Pending entries idle this long belong to a dead consumer and are claimed.
    claim_idle: float = 60.0
    retry_initial: float = 0.5
    retry_max: float = 30.0

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= 10_000:
            raise ValidationError("must be between 1 and 10000", field="batch_size")
        if self.flush_interval <= 0 or self.claim_idle <= 0:
            raise ValidationError("flush_interval and claim_idle must be positive")


@dataclass(slots=True)
class CollectorStats:
    """What a collector has done since it started."""

    read: int = 0
    stored: int = 0
    duplicates: int = 0
    dead_lettered: int = 0
    dropped_erased: int = 0
    claimed: int = 0
    batches: int = 0
    retries: int = 0
    seconds_writing: float = 0.0
    errors: list[str] = field(default_factory=list)

    @classmethod
    def combined(cls, all_stats: Iterable[CollectorStats]) -> CollectorStats:
        """The counts of several collectors added up (``postwise events collect --writers``)."""
        total = cls()
        for stats in all_stats:
            for name in ("read", "stored", "duplicates", "dead_lettered", "dropped_erased",
                         "claimed", "batches", "retries"):  # fmt: skip
                setattr(total, name, getattr(total, name) + getattr(stats, name))
            total.seconds_writing += stats.seconds_writing
            total.errors.extend(stats.errors)
        return total

    def to_dict(self) -> dict[str, Any]:
        return {
            "read": self.read,
            "stored": self.stored,
            "duplicates": self.duplicates,
            "dead_lettered": self.dead_lettered,
            "dropped_erased": self.dropped_erased,
            "claimed": self.claimed,
            "batches": self.batches,
            "retries": self.retries,
            "seconds_writing": round(self.seconds_writing, 3),
            "last_errors": self.errors[-5:],
        }


def open_sink(runtime: Runtime, name: str | None = None) -> AnalyticsSink:
    """Build the configured analytics sink (``settings.analytics_sink``, or ``name``).

    Its options come from ``provider_options.<name>`` like every named component's.
    """
    name = name or runtime.settings.analytics_sink
    factory = runtime.component(ANALYTICS_SINKS, name)
    sink: AnalyticsSink = factory(runtime.settings, runtime.settings.provider_options.get(name, {}))
    return sink


def ensure_group(client: redis.Redis, group: str = GROUP) -> None:
    """Create the consumer group (reading from the start of the stream) if it is missing."""
    StreamConsumer(client, group=group).ensure_group()


def _is_data_error(exc: BaseException) -> bool:
    """Whether ``exc`` says the events are bad (dead-letter them) rather than the sink is down.

    DB-API drivers all name these classes the same (PEP 249), so the check needs no driver.
    """
    import sqlalchemy.exc

    if isinstance(exc, sqlalchemy.exc.StatementError) and exc.orig is not None:
        exc = exc.orig
    names = {cls.__name__ for cls in type(exc).__mro__}
    if names & {"DataError", "IntegrityError"}:
        return True
    return isinstance(exc, ValueError | TypeError | ValidationError)


@dataclass(slots=True)
class _Batch:
    """Entries read from the stream and what they decode to."""

    entries: list[Entry]
    events: list[StoredEvent] = field(default_factory=list)
    ids: list[bytes] = field(default_factory=list)
    dead: list[tuple[bytes, dict[bytes, bytes], str]] = field(default_factory=list)


class Collector(StreamConsumer):
    """One consumer of the ``analytics`` group writing batches to ``sink``."""

    def __init__(
        self,
        runtime: Runtime,
        sink: AnalyticsSink,
        *,
        config: CollectorConfig | None = None,
        consumer: str | None = None,
        group: str = GROUP,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.config = config or CollectorConfig()
        super().__init__(
            runtime.redis,
            group=group,
            consumer=consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}",
            batch_size=self.config.batch_size,
            claim_idle_ms=int(self.config.claim_idle * 1000),
        )
        self.runtime = runtime
        self.sink = sink
        self.stats = CollectorStats()
        self.engagement = EngagementModel.from_settings(runtime.settings)
        self._sleep = sleep
        self._next_claim = 0.0
        self._checked_own_pending = False
        self._filling = False
        self.ensure_group()

    # -- reading ---------------------------------------------------------------------------

    def _claim(self) -> list[Entry]:
        """Entries a dead consumer left pending; deleted ones are acknowledged."""
        entries = self.claim_stale()
        self.stats.claimed += len(entries)
        return entries

    def next_batch(self) -> list[Entry]:
        """Up to ``batch_size`` entries: this consumer's own pending ones first, then entries
        claimed from dead consumers, then new ones (waiting at most ``flush_interval``)."""
        if not self._checked_own_pending:
            # Only a restarted consumer of the same name has entries of its own pending: a
            # running one retries a failed batch until it is written.
            pending = self.read_own_pending()
            if pending:
                return pending
            self._checked_own_pending = True
        now = time.monotonic()
        if now >= self._next_claim:
            self._next_claim = now + self.config.claim_idle / 2
            claimed = self._claim()
            if claimed:
                return claimed
        batch: list[Entry] = []
        deadline = time.monotonic() + self.config.flush_interval
        while len(batch) < self.config.batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            batch.extend(self.read_new(self.config.batch_size - len(batch), int(remaining * 1000)))
            if not batch:
                # Nothing at all yet: the interval starts with the first entry.
                return batch
            # Entries in hand while the batch fills: run() must not stop for idleness now.
            self._filling = True
        return batch

    # -- writing ---------------------------------------------------------------------------

    def process(self, entries: Sequence[Entry], stop: threading.Event | None = None) -> int:
        """Write ``entries`` to the sink and acknowledge them; retries until the sink takes
        them (or ``stop`` is set, leaving them pending). Returns how many were new."""
        return self.commit(self.prepare(entries), stop)

    def prepare(self, entries: Sequence[Entry]) -> _Batch:
        """Decode ``entries`` and drop the events of erased contacts (no writing yet)."""
        batch = _Batch(list(entries))
        self.stats.read += len(entries)
        for entry_id, fields in entries:
            if not fields:
                # Deleted from the stream while pending (erasure): nothing to store.
                continue
            try:
                batch.events.append(decode_event(fields))
                batch.ids.append(entry_id)
            except (ValueError, KeyError, TypeError) as exc:
                batch.dead.append((entry_id, fields, f"undecodable: {type(exc).__name__}: {exc}"))
        batch.events, batch.ids = self._drop_erased(batch.events, batch.ids)
        return batch

    def commit(self, batch: _Batch, stop: threading.Event | None = None) -> int:
        """Write a prepared batch and acknowledge its entries once the sink has committed."""
        if not batch.entries:
            return 0
        delay = self.config.retry_initial
        while True:
            try:
                new = self._write(batch.events, batch.ids, batch.dead, dict(batch.entries))
                break
            except Exception as exc:
                self.stats.retries += 1
                self.stats.errors.append(f"{type(exc).__name__}: {exc}"[:300])
                log.warning(
                    "writing %d events failed (%s: %s); retrying in %.1f s",
                    len(batch.events),
                    type(exc).__name__,
                    exc,
                    delay,
                )
                if stop is not None and stop.is_set():
                    return 0
                self._sleep(delay)
                delay = min(delay * 2, self.config.retry_max)
        self.ack(batch.entries)
        self.stats.batches += 1
        self.stats.stored += new
        self.stats.duplicates += len(batch.events) - new
        return new

    def _write(
        self,
        events: list[StoredEvent],
        ids: list[bytes],
        dead: list[tuple[bytes, dict[bytes, bytes], str]],
        originals: dict[bytes, dict[bytes, bytes]],
    ) -> int:
        started = time.perf_counter()
        new = 0
        # Bisect a batch the sink rejects as data until the bad events are isolated.
        pending: list[tuple[list[StoredEvent], list[bytes]]] = [(events, ids)]
        rejected: list[tuple[bytes, dict[bytes, bytes], str]] = []
        while pending:
            chunk, chunk_ids = pending.pop()
            if not chunk:
                continue
            try:
                new += self._store(chunk)
            except Exception as exc:
                if not _is_data_error(exc):
                    raise
                if len(chunk) == 1:
                    entry_id = chunk_ids[0]
                    reason = f"rejected by the sink: {exc}"[:500]
                    rejected.append((entry_id, originals[entry_id], reason))
                    continue
                half = len(chunk) // 2
                pending.append((chunk[half:], chunk_ids[half:]))
                pending.append((chunk[:half], chunk_ids[:half]))
        self._dead_letter(dead + rejected)
        self.stats.seconds_writing += time.perf_counter() - started
        return new

    def _store(self, events: list[StoredEvent]) -> int:
        if self.sink.maintains_engagement:
            return self.sink.write_batch(events)
        new = self.sink.write_new(events)
        if new:
            with self.runtime.engine.begin() as connection:
                apply_engagement(connection, self.engagement, new)
        return len(new)

    def _dead_letter(self, dead: Sequence[tuple[bytes, dict[bytes, bytes], str]]) -> None:
        if not dead:
            return
        pipe = self.redis.pipeline(transaction=False)
        for entry_id, fields, reason in dead:
            record = {**fields, b"source_id": entry_id, b"reason": reason.encode()}
            pipe.xadd(DEAD_LETTER_STREAM, record, maxlen=_DEAD_LETTER_MAXLEN, approximate=True)  # type: ignore[arg-type]
        pipe.execute()
        self.stats.dead_lettered += len(dead)
        log.error("moved %d bad events to %s", len(dead), DEAD_LETTER_STREAM)

    def _drop_erased(
        self, events: list[StoredEvent], ids: list[bytes]
    ) -> tuple[list[StoredEvent], list[bytes]]:
        contacts = sorted({e.contact_id for e in events if e.contact_id is not None})
        if not contacts or not self.redis.exists(ERASED_CONTACTS_KEY):
            return events, ids
        scores = self.redis.zmscore(ERASED_CONTACTS_KEY, [str(c) for c in contacts])
        erased = {c for c, score in zip(contacts, scores, strict=True) if score is not None}
        if not erased:
            return events, ids
        kept = [(e, i) for e, i in zip(events, ids, strict=True) if e.contact_id not in erased]
        self.stats.dropped_erased += len(events) - len(kept)
        return [e for e, _ in kept], [i for _, i in kept]

    # -- running ---------------------------------------------------------------------------

    def run(
        self,
        stop: threading.Event | None = None,
        *,
        max_events: int | None = None,
        exit_when_idle: float | None = None,
    ) -> CollectorStats:
        """Collect until ``stop`` is set, ``max_events`` were stored, or the stream has been
        empty for ``exit_when_idle`` seconds.

        A reader thread fetches and decodes the next batch while this one is written: the
        write mostly waits on the database, so the two overlap. At most one batch is read
        ahead; if the collector stops with it unwritten, it stays pending and is claimed.
        """
        stop = stop or self.stopping
        done = threading.Event()
        ready: queue.Queue[_Batch | BaseException | None] = queue.Queue(maxsize=1)
        # One element per batch the reader holds or has queued (list ops are atomic under the GIL).
        unwritten: list[int] = []

        def read_ahead() -> None:
            try:
                while not (stop.is_set() or done.is_set()):
                    entries = self.next_batch()
                    if entries:
                        # Read but not yet written: the idle check must not stop before them.
                        unwritten.append(1)
                    self._filling = False
                    item = self.prepare(entries) if entries else None
                    while not (stop.is_set() or done.is_set()):
                        try:
                            ready.put(item, timeout=0.1)
                            break
                        except queue.Full:
                            continue

            except Exception as exc:  # handed to the writer, which raises it
                ready.put(exc)

        reader = threading.Thread(target=read_ahead, name=f"{self.consumer}-reader", daemon=True)
        reader.start()
        idle_since = time.monotonic()
        try:
            while not stop.is_set():
                try:
                    item = ready.get(timeout=0.1)
                except queue.Empty:
                    item = None
                if isinstance(item, BaseException):
                    raise item
                if item is not None:
                    self.commit(item, stop)
                    unwritten.pop()
                    idle_since = time.monotonic()
                elif (
                    exit_when_idle is not None
                    and not unwritten
                    and not self._filling
                    and time.monotonic() - idle_since >= exit_when_idle
                ):
                    break
                if max_events is not None and self.stats.stored >= max_events:
                    break
        finally:
            done.set()
            reader.join(timeout=self.config.flush_interval + 5)
        self.leave()
        return self.stats
