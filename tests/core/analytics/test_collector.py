"""The batch writer: stream → sink in batches, acknowledged after the commit, nothing lost or
stored twice, through crashes and database outages."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from analytics_helpers import add_contacts, stored_events, stream_entries

from postwise.analytics.collector import (
    DEAD_LETTER_STREAM,
    GROUP,
    Collector,
    CollectorConfig,
    open_sink,
)
from postwise.analytics.engagement import EngagementModel
from postwise.analytics.erasure import erase_contact_events
from postwise.analytics.ingest import ingest
from postwise.analytics.sinks import StoredEvent
from postwise.analytics.sql_sink import SqlSink
from postwise.db.engine import create_db_engine
from postwise.events import EVENT_STREAM, EventEnvelope, encode_event
from postwise.runtime import Runtime

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=20)


def _events(
    count: int, *, prefix: str = "ev", contacts: Sequence[int] = ()
) -> list[dict[str, Any]]:
    kinds = ["open", "click", "conversion", "page_view"]
    return [
        {
            "event_id": f"{prefix}-{i}",
            "type": kinds[i % len(kinds)],
            "occurred_at": (T0 + timedelta(seconds=30 * i)).isoformat(),
            "contact_id": contacts[i % len(contacts)] if contacts else None,
        }
        for i in range(count)
    ]


def _publish(runtime: Runtime, events: list[dict[str, Any]]) -> None:
    for start in range(0, len(events), 1000):
        ingest(runtime, events[start : start + 1000])


def _expected_scores(events: list[dict[str, Any]]) -> dict[int, float]:
    """Engagement by definition, as of each contact's latest engagement event."""
    model = EngagementModel()
    stored = [
        StoredEvent(
            e["event_id"],
            e["type"],
            datetime.fromisoformat(e["occurred_at"]),
            contact_id=e["contact_id"],
        )
        for e in events
    ]
    return {cid: score for cid, (score, _) in model.fold(stored).items()}


def _scores(engine: sa.Engine) -> dict[int, float]:
    with engine.connect() as connection:
        rows = connection.execute(
            sa.text("SELECT id, engagement_score FROM contact WHERE engagement_score > 0")
        )
        return {row[0]: row[1] for row in rows}


def _count(engine: sa.Engine) -> tuple[int, int]:
    """Stored events, and distinct event ids among them."""
    with engine.connect() as connection:
        total, distinct = connection.execute(
            sa.text("SELECT count(*), count(DISTINCT event_id) FROM event")
        ).one()
    return int(total), int(distinct)


def _pending(runtime: Runtime) -> int:
    return int(runtime.redis.xpending(EVENT_STREAM, GROUP)["pending"])


def test_events_flow_from_the_stream_to_the_sink(
    runtime: Runtime, collect: Callable[..., Any]
) -> None:
    contacts = add_contacts(runtime, "a@example.com", "b@example.com")
    events = _events(2500, contacts=contacts)
    _publish(runtime, events)
    stats = collect(batch_size=1000)
    assert stats.stored == 2500
    assert stats.batches == 3
    stored = stored_events(runtime)
    assert [e.event_id for e in stored] == [e["event_id"] for e in events]
    assert _pending(runtime) == 0
    scores = _scores(runtime.engine)
    for contact_id, expected in _expected_scores(events).items():
        assert scores[contact_id] == pytest.approx(expected, rel=1e-9)


def test_a_partial_batch_is_written_after_the_flush_interval(runtime: Runtime) -> None:
    _publish(runtime, _events(3))
    sink = open_sink(runtime)
    collector = Collector(runtime, sink, config=CollectorConfig(flush_interval=0.2))
    started = time.monotonic()
    batch = collector.next_batch()
    waited = time.monotonic() - started
    sink.close()
    assert len(batch) == 3
    assert waited < 1.0


class _Broken(SqlSink):
    """A sink whose database is gone for the first ``failures`` writes."""

    def __init__(self, engine: sa.Engine, failures: int) -> None:
        super().__init__(engine)
        self.failures = failures

    def write_batch(self, events: Sequence[StoredEvent]) -> int:
        if self.failures:
            self.failures -= 1
            raise sa.exc.OperationalError("INSERT", {}, ConnectionError("server closed"))
        return super().write_batch(events)


def test_nothing_is_acknowledged_until_the_sink_commits(runtime: Runtime) -> None:
    _publish(runtime, _events(10))
    sink = _Broken(runtime.engine, failures=3)
    seen_pending: list[int] = []
    collector = Collector(
        runtime,
        sink,
        config=CollectorConfig(flush_interval=0.05, retry_initial=0.01),
        sleep=lambda _s: seen_pending.append(_pending(runtime)),
    )
    stats = collector.run(exit_when_idle=0.2)
    assert seen_pending == [10, 10, 10]
    assert stats.retries == 3
    assert stats.stored == 10
    assert _pending(runtime) == 0


class _Crash(BaseException):
    """The process dying: not an error the collector may handle."""


class _CrashAfterCommit(SqlSink):
    def write_batch(self, events: Sequence[StoredEvent]) -> int:
        super().write_batch(events)
        raise _Crash


def test_a_batch_committed_but_not_acknowledged_is_reclaimed_and_not_counted_twice(
    runtime: Runtime,
) -> None:
    contacts = add_contacts(runtime, "c@example.com")
    events = _events(40, contacts=contacts)
    _publish(runtime, events)
    dying = Collector(
        runtime,
        _CrashAfterCommit(runtime.engine),
        config=CollectorConfig(batch_size=25, flush_interval=0.05),
        consumer="dying",
    )
    with pytest.raises(_Crash):
        dying.run()
    assert _count(runtime.engine) == (25, 25)
    # Committed, never acknowledged (plus the next batch, if it was already read ahead).
    assert _pending(runtime) >= 25
    time.sleep(0.15)
    survivor = Collector(
        runtime,
        SqlSink(runtime.engine),
        config=CollectorConfig(flush_interval=0.05, claim_idle=0.1),
        consumer="survivor",
    )
    stats = survivor.run(exit_when_idle=0.3)
    assert stats.claimed >= 25
    assert stats.duplicates == 25
    assert stats.stored == 15
    assert _count(runtime.engine) == (40, 40)
    assert _pending(runtime) == 0
    expected = _expected_scores(events)
    assert _scores(runtime.engine)[contacts[0]] == pytest.approx(expected[contacts[0]], rel=1e-9)


def test_an_undecodable_entry_is_dead_lettered_and_does_not_block(
    runtime: Runtime, collect: Callable[..., Any]
) -> None:
    _publish(runtime, _events(2, prefix="before"))
    runtime.redis.xadd(EVENT_STREAM, {"e": b"{not json"})
    runtime.redis.xadd(EVENT_STREAM, {"other": b"field"})
    _publish(runtime, _events(2, prefix="after"))
    stats = collect()
    assert stats.stored == 4
    assert stats.dead_lettered == 2
    dead = stream_entries(runtime, DEAD_LETTER_STREAM)
    assert [fields.get(b"e") for _, fields in dead] == [b"{not json", None]
    assert all(b"undecodable" in fields[b"reason"] for _, fields in dead)
    assert _pending(runtime) == 0


def test_events_of_a_contact_erased_in_flight_are_dropped(
    runtime: Runtime, collect: Callable[..., Any]
) -> None:
    kept, erased = add_contacts(runtime, "k@example.com", "gone@example.com")
    _publish(runtime, _events(6, contacts=[kept, erased]))
    # Read by a collector that then stalls: the erasure happens while events are in flight.
    sink = open_sink(runtime)
    collector = Collector(runtime, sink, config=CollectorConfig(flush_interval=0.05))
    in_flight = collector.next_batch()
    counts = erase_contact_events(runtime, erased)
    assert counts["stream_entries"] == 3
    collector.process(in_flight)
    sink.close()
    assert {e.contact_id for e in stored_events(runtime)} == {kept}
    assert collector.stats.dropped_erased == 3


@pytest.fixture
def servers(make_settings: Any, pg_url: str, real_redis_url: str) -> Iterator[Runtime]:
    """A runtime on real PostgreSQL and real Redis."""
    runtime = Runtime(make_settings(database_url=pg_url, redis_url=real_redis_url))
    yield runtime
    runtime.close()


def test_an_event_postgresql_rejects_is_isolated_and_dead_lettered(servers: Runtime) -> None:
    runtime = servers
    _publish(runtime, _events(9))
    poison = EventEnvelope("poison", "open", T0, variant="v" * 300)  # too long for the column
    runtime.redis.xadd(EVENT_STREAM, encode_event(poison))  # type: ignore[arg-type]
    _publish(runtime, _events(9, prefix="late"))
    sink = open_sink(runtime)
    stats = Collector(runtime, sink, config=CollectorConfig(flush_interval=0.05)).run(
        exit_when_idle=0.3
    )
    sink.close()
    assert stats.stored == 18
    assert stats.dead_lettered == 1
    [(_, fields)] = stream_entries(runtime, DEAD_LETTER_STREAM)
    assert b'"poison"' in fields[b"e"]
    assert b"rejected by the sink" in fields[b"reason"]


def _set_connections(pg_url: str, allowed: bool) -> None:
    name = pg_url.rsplit("/", 1)[1]
    admin = create_db_engine(pg_url.rsplit("/", 1)[0] + "/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(
            sa.text(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS {"true" if allowed else "false"}')
        )
        if not allowed:
            connection.execute(
                sa.text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = :name AND pid <> pg_backend_pid()"
                ),
                {"name": name},
            )
    admin.dispose()


@pytest.mark.slow
def test_events_wait_in_the_stream_while_postgresql_is_unavailable(
    servers: Runtime, pg_url: str
) -> None:
    runtime = servers
    contacts = add_contacts(runtime, "w@example.com")
    first = _events(300, prefix="first", contacts=contacts)
    _publish(runtime, first)
    sink = open_sink(runtime)
    stop = threading.Event()
    collector = Collector(
        runtime,
        sink,
        config=CollectorConfig(flush_interval=0.05, retry_initial=0.1, retry_max=0.5),
    )
    worker = threading.Thread(target=collector.run, args=(stop,), daemon=True)
    _set_connections(pg_url, allowed=False)
    try:
        worker.start()
        second = _events(300, prefix="second", contacts=contacts)
        _publish(runtime, second)
        deadline = time.monotonic() + 10
        while collector.stats.retries < 3 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert collector.stats.retries >= 3
        assert collector.stats.stored == 0
        # Read and waiting in this consumer's pending list, or not read yet: all in Redis.
        info = runtime.redis.xinfo_groups(EVENT_STREAM)[0]
        assert info["pending"] + info["lag"] == 600
    finally:
        _set_connections(pg_url, allowed=True)
    deadline = time.monotonic() + 20
    while collector.stats.stored < 600 and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    worker.join(10)
    sink.close()
    assert _count(runtime.engine) == (600, 600)
    assert _pending(runtime) == 0
    expected = _expected_scores(first + second)
    assert _scores(runtime.engine)[contacts[0]] == pytest.approx(expected[contacts[0]], rel=1e-9)


def _collector_process(settings_env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from postwise.cli import main; main()",
            "events",
            "collect",
            "--json",
            *args,
        ],
        env={**os.environ, **settings_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.slow
def test_a_writer_killed_mid_batch_loses_nothing_and_stores_nothing_twice(
    servers: Runtime, pg_url: str, real_redis_url: str, tmp_path: Any
) -> None:
    runtime = servers
    contacts = add_contacts(runtime, *(f"k{i}@example.com" for i in range(50)))
    events = _events(12_000, prefix="kill", contacts=contacts)
    _publish(runtime, events)
    env = {
        "POSTWISE_DATABASE_URL": pg_url,
        "POSTWISE_REDIS_URL": real_redis_url,
        "POSTWISE_SECRET_KEY": "test-secret-key-not-for-production",
        "POSTWISE_DATA_DIR": str(tmp_path / "data"),
        "POSTWISE_LOG_LEVEL": "WARNING",
    }
    first = _collector_process(env, "--batch-size", "500", "--flush-interval", "0.2")
    try:
        # Kill it while it holds a batch it has not acknowledged, part-way through the stream.
        deadline = time.monotonic() + 60
        killed_at = None
        while time.monotonic() < deadline:
            stored = _count(runtime.engine)[0]
            if stored >= 2000 and _pending(runtime) > 0:
                first.send_signal(signal.SIGKILL)
                killed_at = stored
                break
            time.sleep(0.01)
    finally:
        first.kill()
        first.communicate()
    assert killed_at is not None, "the writer finished before it could be killed"
    assert _count(runtime.engine)[0] < 12_000
    assert _pending(runtime) > 0
    second = _collector_process(
        env, "--claim-idle", "1", "--flush-interval", "0.2", "--exit-when-idle", "3"
    )
    out, err = second.communicate(timeout=120)
    assert second.returncode == 0, err
    stats = json.loads(out)
    assert stats["claimed"] > 0
    assert _count(runtime.engine) == (12_000, 12_000)
    assert _pending(runtime) == 0
    # Scores prove no event was counted twice, even one committed just before the kill.
    scores = _scores(runtime.engine)
    for contact_id, expected in _expected_scores(events).items():
        assert math.isclose(scores[contact_id], expected, rel_tol=1e-9), contact_id
