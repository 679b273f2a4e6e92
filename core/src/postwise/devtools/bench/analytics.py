"""``postwise bench ingest`` and ``postwise bench metrics``: the event pipeline's figures.

* ``bench ingest``: a real server process (uvicorn) takes batches of 1,000 events over HTTP
  from a load client and publishes them to the Redis stream (``events_per_second``); then the
  batch writer moves them into PostgreSQL (``stored_per_second``). It needs real Redis and
  PostgreSQL (``POSTWISE_REDIS_URL``, ``POSTWISE_DATABASE_URL``) and cleans up after itself.
* ``bench metrics``: generates ``--events`` synthetic events inside the database
  (``generate_series`` on PostgreSQL, ``numbers()`` on ClickHouse) in a database of its own
  (``postwise_bench``, kept for the next run), then times each metric query.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import click
import sqlalchemy as sa

from postwise.analytics.collector import Collector, CollectorConfig, ensure_group, open_sink
from postwise.analytics.ingest import DEDUPE_PREFIX
from postwise.analytics.metrics import (
    AttributionModel,
    HealthKey,
    MetricsBackend,
    Scope,
    VariantKey,
)
from postwise.analytics.sql_metrics import SqlMetrics
from postwise.analytics.sql_sink import SqlSink
from postwise.apikeys import create_api_key
from postwise.cli.common import emit_json, get_runtime
from postwise.db.engine import create_db_engine
from postwise.db.models import Event, Segment
from postwise.errors import ConfigurationError
from postwise.events import EVENT_STREAM
from postwise.runtime import Runtime
from postwise.settings import load_settings

__all__ = ["bench_ingest", "bench_metrics"]

_KINDS = ("page_view", "open", "click", "purchase")


def _require_servers(runtime: Runtime) -> None:
    if runtime.settings.redis_url.startswith("fakeredis"):
        raise ConfigurationError(
            "bench ingest needs a real Redis: set POSTWISE_REDIS_URL=redis://127.0.0.1:6379/0"
        )
    if not runtime.settings.resolved_database_url.startswith("postgresql"):
        raise ConfigurationError(
            "bench ingest needs PostgreSQL: set POSTWISE_DATABASE_URL="
            "postgresql://postgres@127.0.0.1:5432/<database>"
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _bodies(run: str, total: int, batch: int, contacts: list[int]) -> list[bytes]:
    now = datetime.now(UTC) - timedelta(minutes=1)
    bodies = []
    for start in range(0, total, batch):
        events = []
        for i in range(start, min(total, start + batch)):
            kind = _KINDS[i % len(_KINDS)]
            event: dict[str, Any] = {
                "event_id": f"{run}-{i}",
                "type": kind,
                "occurred_at": (now - timedelta(seconds=i % 86400)).isoformat(),
                "contact_id": contacts[i % len(contacts)],
            }
            if kind in ("open", "click"):
                event["message_id"] = f"{run}-m{i // 3}"
                event["campaign_id"] = 1 + i % 20
            if kind == "click":
                event["properties"] = {"url": f"https://shop.example.com/p/{i % 500}"}
            elif kind == "purchase":
                event["properties"] = {"value": round(5 + (i % 97) * 1.5, 2), "sku": f"s{i % 300}"}
            events.append(event)
        bodies.append(json.dumps(events, separators=(",", ":")).encode())
    return bodies


async def _load(url: str, key: str, bodies: list[bytes], connections: int) -> float:
    import httpx

    queue: asyncio.Queue[bytes] = asyncio.Queue()
    for body in bodies:
        queue.put_nowait(body)
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)

    async def worker(client: httpx.AsyncClient) -> None:
        while not queue.empty():
            body = queue.get_nowait()
            response = await client.post(url, content=body, headers=headers)
            if response.status_code != 202:
                raise RuntimeError(f"ingest answered {response.status_code}: {response.text}")

    async with httpx.AsyncClient(limits=limits, timeout=60) as client:
        started = time.perf_counter()
        await asyncio.gather(*(worker(client) for _ in range(connections)))
        return time.perf_counter() - started


def _start_server(port: int, workers: int) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "uvicorn", "--factory", "postwise.server.app:create_app",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
        "--no-access-log", "--workers", str(workers),
    ]  # fmt: skip
    return subprocess.Popen(command, env=os.environ.copy())  # noqa: S603 - our own interpreter


def _wait_healthy(port: int, server: subprocess.Popen[bytes]) -> None:
    import httpx

    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise ConfigurationError(f"the server exited with status {server.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health/live", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise ConfigurationError("the server did not answer /health/live within 60 s")


@click.command(name="ingest")
@click.option("--events", "total", default=200_000, show_default=True)
@click.option("--batch", default=1000, show_default=True, help="Events per HTTP request.")
@click.option("--connections", default=4, show_default=True, help="Concurrent client requests.")
@click.option("--workers", default=1, show_default=True, help="uvicorn worker processes.")
@click.option(
    "--writers", default=2, show_default=True, help="Collectors (consumers) writing in parallel."
)
@click.option("--contacts", "contact_count", default=10_000, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def bench_ingest(
    ctx: click.Context,
    *,
    total: int,
    batch: int,
    connections: int,
    workers: int,
    writers: int,
    contact_count: int,
    as_json: bool,
) -> None:
    """HTTP batches → Redis stream (events/s), then stream → PostgreSQL (stored/s)."""

    runtime = get_runtime(ctx)
    _require_servers(runtime)
    runtime.migrate()
    run = f"bench-{uuid.uuid4().hex[:8]}"
    group = f"{run}-writer"
    redis = runtime.redis
    # The bench reads with a group of its own from here on: older entries are not its concern.
    redis.xgroup_create(EVENT_STREAM, group, id="$", mkstream=True)
    ensure_group(redis)
    with runtime.engine.begin() as connection:
        rows = [{"email": f"{run}-{i}@bench.invalid"} for i in range(contact_count)]
        contact_table = sa.table(
            "contact", sa.column("id"), sa.column("email"), sa.column("timezone"),
            sa.column("status"), sa.column("attributes"), sa.column("engagement_score"),
            sa.column("created_at"), sa.column("updated_at"),
        )  # fmt: skip
        now = datetime.now(UTC)
        connection.execute(
            contact_table.insert(),
            [
                {**r, "timezone": "UTC", "status": "active", "attributes": "{}",
                 "engagement_score": 0.0, "created_at": now, "updated_at": now}
                for r in rows
            ],
        )  # fmt: skip
        contacts = [
            row[0]
            for row in connection.execute(
                sa.text("SELECT id FROM contact WHERE email LIKE :p ORDER BY id"),
                {"p": f"{run}-%"},
            )
        ]
    with runtime.session() as session:
        key = create_api_key(session, run).key
    bodies = _bodies(run, total, batch, contacts)
    port = _free_port()
    server = _start_server(port, workers)
    result: dict[str, Any] = {"events": total, "batch": batch, "connections": connections}
    try:
        _wait_healthy(port, server)
        # One warm-up request so the first timed one does not pay for imports and pools.
        warm = _bodies(f"{run}-warm", batch, batch, contacts)
        asyncio.run(_load(f"http://127.0.0.1:{port}/v1/events", key, warm, 1))
        elapsed = asyncio.run(_load(f"http://127.0.0.1:{port}/v1/events", key, bodies, connections))
        result["ingest_seconds"] = round(elapsed, 3)
        result["events_per_second"] = round(total / elapsed)
    finally:
        server.terminate()
        server.wait(30)
    # Each writer is one consumer of the group, as separate `postwise events collect`
    # processes would be; threads suffice because the work waits on PostgreSQL and Redis.
    sink = SqlSink(runtime.engine)
    expected = total + batch  # the warm-up batch went through the stream too
    collectors = [
        Collector(
            runtime, sink, config=CollectorConfig(batch_size=1000, flush_interval=0.5), group=group
        )
        for _ in range(writers)
    ]
    stop = threading.Event()
    started = time.perf_counter()
    threads = [threading.Thread(target=c.run, args=(stop,)) for c in collectors]
    for thread in threads:
        thread.start()
    while sum(c.stats.stored for c in collectors) < expected and any(t.is_alive() for t in threads):
        time.sleep(0.005)
    elapsed = time.perf_counter() - started
    stop.set()
    for thread in threads:
        thread.join()
    stored = sum(c.stats.stored for c in collectors)
    result["writers"] = writers
    result["stored"] = stored
    result["store_seconds"] = round(elapsed, 3)
    result["stored_per_second"] = round(stored / elapsed)
    result["writer_batches"] = sum(c.stats.batches for c in collectors)
    # Time inside sink transactions (insert, engagement, commit), summed over the writers.
    result["sink_seconds"] = round(sum(c.stats.seconds_writing for c in collectors), 3)
    # Clean up: the bench's events, contacts, key, group and idempotency markers.
    with runtime.engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM event WHERE event_id LIKE :p"), {"p": f"{run}-%"})
        connection.execute(sa.text("DELETE FROM contact WHERE email LIKE :p"), {"p": f"{run}-%"})
        connection.execute(sa.text("DELETE FROM api_key WHERE name = :n"), {"n": run})
    redis.xgroup_destroy(EVENT_STREAM, group)
    for cursor_keys in _scan(redis, f"{DEDUPE_PREFIX}{run}-*"):
        redis.delete(*cursor_keys)
    if as_json:
        emit_json(result)
    else:
        click.echo(
            f"ingest: {result['events_per_second']:,} events/s over HTTP into the stream; "
            f"writer: {result['stored_per_second']:,} events/s into PostgreSQL"
        )


def _scan(redis: Any, pattern: str) -> Any:
    batch: list[bytes] = []
    for key in redis.scan_iter(match=pattern, count=5000):
        batch.append(key)
        if len(batch) == 5000:
            yield batch
            batch = []
    if batch:
        yield batch


# -- metrics -------------------------------------------------------------------------------

BENCH_DATABASE = "postwise_bench"
_CAMPAIGNS = 50
_CONTACTS = 200_000


def _pg_state(engine: sa.Engine) -> None:
    """The contacts and the segment (every tenth contact) the metric queries refer to."""
    with engine.begin() as connection:
        present = connection.execute(sa.text("SELECT count(*) FROM contact")).scalar_one()
        if present == _CONTACTS:
            _advance_sequences(connection)
            return
        connection.execute(sa.text("TRUNCATE segment_member, segment, contact CASCADE"))
        connection.execute(
            sa.text(
                "INSERT INTO contact (id, email, timezone, status, attributes, engagement_score,"
                " created_at, updated_at) SELECT g, 'c' || g || '@bench.invalid', 'UTC', "
                "'active', '{}', 0, now(), now() FROM generate_series(1, :n) g"
            ),
            {"n": _CONTACTS},
        )
        connection.execute(
            sa.text(
                "INSERT INTO segment (id, name, kind, rules, created_at) "
                "VALUES (1, 'tenth', 'static', '{}', now())"
            )
        )
        connection.execute(
            sa.text("INSERT INTO segment_member SELECT 1, g FROM generate_series(1, :n, 10) g"),
            {"n": _CONTACTS},
        )
        _advance_sequences(connection)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(sa.text("VACUUM ANALYZE contact"))
        connection.execute(sa.text("VACUUM ANALYZE segment_member"))


def _advance_sequences(connection: sa.Connection) -> None:
    """Rows inserted with explicit ids leave the id sequences behind: move them past the
    rows, so that later inserts (``bench ingest`` on this database) get free ids."""
    for table in ("contact", "segment"):
        connection.execute(
            sa.text(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), "  # noqa: S608 - constant
                f"(SELECT coalesce(max(id), 0) + 1 FROM {table}), false)"
            )
        )


def _pg_generate(engine: sa.Engine, total: int) -> None:
    """``total`` events: one ``sent`` per message, then opens, clicks, conversions, bounces,
    complaints, failures and product events, spread over 90 days; the model's indexes are
    built after the load (faster than maintaining them row by row)."""

    messages = max(1, total * 3 // 10)
    table = Event.__table__  # type: ignore[attr-defined]
    with engine.begin() as connection:
        connection.execute(sa.text("TRUNCATE event"))
        for index in table.indexes:
            index.drop(connection)
    # Two sessions share the load so both cores work.
    halves = [(1, total // 2), (total // 2 + 1, total)]

    def load(bounds: tuple[int, int]) -> None:
        with engine.begin() as connection:
            connection.execute(sa.text(_PG_GENERATE), {
                "lo": bounds[0], "hi": bounds[1], "messages": messages,
                "contacts": _CONTACTS, "campaigns": _CAMPAIGNS,
            })  # fmt: skip

    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(2) as pool:
        list(pool.map(load, halves))
    with engine.begin() as connection:
        connection.execute(sa.text("SET maintenance_work_mem = '512MB'"))
        for index in table.indexes:
            index.create(connection)
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as connection:
        connection.execute(sa.text("VACUUM ANALYZE event"))


# Row i: the first `messages` rows are the messages' `sent` events; the others pick a message
# by hash and a type by another slice of the hash. Times run over the last 90 days.
_PG_GENERATE = """
INSERT INTO event (event_id, type, occurred_at, received_at, contact_id, message_id, campaign_id,
                   experiment_id, variant, provider, properties, automated, recipient_domain)
SELECT 'b' || i, t.type,
       least(now(), now() - interval '90 days'
             + make_interval(secs => (m::float8 / :messages) * 7776000
                             + CASE WHEN t.type = 'sent' THEN 0 ELSE h % 259200 END)),
       now(),
       CASE WHEN t.type = 'conversion' OR t.type = 'page_view' THEN (h % :contacts) + 1
            ELSE (m % :contacts) + 1 END,
       CASE WHEN t.type IN ('conversion', 'page_view') THEN NULL ELSE 'm' || m END,
       CASE WHEN t.type IN ('conversion', 'page_view') THEN NULL ELSE (m % :campaigns) + 1 END,
       CASE WHEN t.type NOT IN ('conversion', 'page_view') AND m % :campaigns < 5
            THEN (m % :campaigns) + 1 END,
       CASE WHEN t.type NOT IN ('conversion', 'page_view') AND m % :campaigns < 5
            THEN chr(97 + ((m / :campaigns) % 2)::int) END,
       CASE WHEN m % 3 = 0 THEN 'sendgrid' ELSE 'smtp' END,
       CASE WHEN t.type = 'conversion' THEN json_build_object('value', h % 100)
            ELSE '{}'::json END,
       (t.type = 'open' AND h % 10 < 3) OR (t.type = 'click' AND h % 10 < 1),
       CASE WHEN t.type IN ('sent', 'bounce') THEN
            (ARRAY['gmail.com', 'yahoo.com', 'outlook.com', 'example.org'])[(m % 4) + 1] END
FROM generate_series(:lo, :hi) AS i,
     LATERAL (SELECT (i::bigint * 2654435761) % 4294967291 AS h) AS x,
     LATERAL (SELECT CASE WHEN i <= :messages THEN i ELSE (x.h / 7) % :messages + 1 END AS m) y,
     LATERAL (SELECT CASE WHEN i <= :messages THEN 'sent'
                          WHEN x.h % 100 < 45 THEN 'open'
                          WHEN x.h % 100 < 57 THEN 'click'
                          WHEN x.h % 100 < 60 THEN 'conversion'
                          WHEN x.h % 100 < 62 THEN 'bounce'
                          WHEN x.h % 1000 < 623 THEN 'complaint'
                          WHEN x.h % 1000 < 628 THEN 'dead_letter'
                          ELSE 'page_view' END AS type) AS t
"""


def _ch_generate(sink: Any, total: int) -> None:
    messages = max(1, total * 3 // 10)
    sink.recreate()
    # Integers formatted in: the query has no parameters, so its % operators stay as they are.
    sink.execute(_CH_GENERATE.format(
        table=sink.table, total=total, messages=messages, contacts=_CONTACTS,
        campaigns=_CAMPAIGNS,
    ))  # fmt: skip
    sink.execute(f"OPTIMIZE TABLE {sink.table} FINAL")


_CH_GENERATE = """
INSERT INTO {table}
SELECT concat('b', toString(i)) AS event_id, type,
       least(now(), toDateTime(now() - 7776000 + toUInt32(m / {messages} * 7776000)
             + if(type = 'sent', 0, h % 259200))) AS occurred_at,
       now() AS received_at,
       toUInt32(if(type IN ('conversion', 'page_view'), h % {contacts}, m % {contacts}) + 1),
       if(type IN ('conversion', 'page_view'), '', concat('m', toString(m))),
       toUInt32(if(type IN ('conversion', 'page_view'), 0, m % {campaigns} + 1)),
       toUInt32(if(type NOT IN ('conversion', 'page_view') AND m % {campaigns} < 5,
                   m % {campaigns} + 1, 0)),
       if(type NOT IN ('conversion', 'page_view') AND m % {campaigns} < 5,
          if(intDiv(m, {campaigns}) % 2 = 0, 'a', 'b'), ''),
       if(m % 3 = 0, 'sendgrid', 'smtp'),
       if(type IN ('sent', 'bounce'),
          arrayElement(['gmail.com', 'yahoo.com', 'outlook.com', 'example.org'], m % 4 + 1), ''),
       toUInt8((type = 'open' AND h % 10 < 3) OR (type = 'click' AND h % 10 < 1)),
       toFloat64(if(type = 'conversion', h % 100, 0)),
       if(type = 'conversion', concat('{{"value":', toString(h % 100), '}}'), '{{}}')
FROM (
    SELECT i, h, m,
           multiIf(i <= {messages}, 'sent', h % 100 < 45, 'open', h % 100 < 57, 'click',
                   h % 100 < 60, 'conversion', h % 100 < 62, 'bounce',
                   h % 1000 < 623, 'complaint', h % 1000 < 628, 'dead_letter',
                   'page_view') AS type
    FROM (
        SELECT number + 1 AS i, (i * 2654435761) % 4294967291 AS h,
               if(i <= {messages}, i, intDiv(h, 7) % {messages} + 1) AS m
        FROM numbers({total})
    )
)
"""


def _time(query: Callable[[], Any], repeat: int) -> tuple[float, float, Any]:
    """(first run, median of the warm runs) in seconds, and the last result."""
    timings = []
    result = None
    for _ in range(repeat + 1):
        started = time.perf_counter()
        result = query()
        timings.append(time.perf_counter() - started)
    return timings[0], statistics.median(timings[1:]), result


@click.command(name="metrics")
@click.option("--events", "total", default=10_000_000, show_default=True)
@click.option("--sink", "sink_name", type=click.Choice(["sql", "clickhouse"]), default="sql")
@click.option("--repeat", default=3, show_default=True, help="Warm runs per query.")
@click.option("--regenerate", is_flag=True, help="Generate the data even if it is there.")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def bench_metrics(
    ctx: click.Context, *, total: int, sink_name: str, repeat: int, regenerate: bool, as_json: bool
) -> None:
    """Time the metric queries over --events synthetic events (PostgreSQL or ClickHouse)."""

    runtime = get_runtime(ctx)
    base = runtime.settings.resolved_database_url
    if not base.startswith("postgresql"):
        raise ConfigurationError("bench metrics needs PostgreSQL: set POSTWISE_DATABASE_URL")
    admin = create_db_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        exists = connection.execute(
            sa.text("SELECT 1 FROM pg_database WHERE datname = :n"), {"n": BENCH_DATABASE}
        ).first()
        if not exists:
            connection.execute(sa.text(f'CREATE DATABASE "{BENCH_DATABASE}"'))
    admin.dispose()
    url = base.rsplit("/", 1)[0] + "/" + BENCH_DATABASE
    bench_runtime = Runtime(load_settings(
        database_url=url, redis_url=runtime.settings.redis_url,
        secret_key=runtime.settings.secret_key.get_secret_value() or "bench-" + "x" * 24,
        analytics_sink=sink_name, provider_options=runtime.settings.provider_options,
    ))  # fmt: skip
    bench_runtime.migrate()
    generated_in = None
    backend: MetricsBackend
    _pg_state(bench_runtime.engine)
    if sink_name == "sql":
        engine = bench_runtime.engine
        with engine.connect() as connection:
            present = connection.execute(sa.text("SELECT count(*) FROM event")).scalar_one()
        if regenerate or present != total:
            started = time.perf_counter()
            _pg_generate(engine, total)
            generated_in = round(time.perf_counter() - started, 1)
        backend = SqlMetrics(engine)
        sink = None
    else:
        sink = open_sink(bench_runtime, "clickhouse")
        table = sink.table  # type: ignore[attr-defined]
        [(present,)] = sink.execute(f"SELECT count() FROM {table}")  # type: ignore[attr-defined]  # noqa: S608
        if regenerate or present != total:
            started = time.perf_counter()
            _ch_generate(sink, total)
            generated_in = round(time.perf_counter() - started, 1)
        metrics = sink.metrics()
        assert metrics is not None
        backend = metrics
    now = datetime.now(UTC)
    month = Scope(since=now - timedelta(days=30))
    week = timedelta(days=7)
    results: list[dict[str, Any]] = []
    with bench_runtime.session() as session:
        segment = session.get(Segment, 1)
        assert segment is not None
        queries: list[tuple[str, Callable[[], Any]]] = [
            ("open rate by segment, one campaign",
             lambda: backend.open_rates(session, [segment], Scope(campaign_id=7))),
            ("open rate by segment, last 30 days",
             lambda: backend.open_rates(session, [segment], month)),
            ("CTR per campaign, all 50, all time",
             lambda: backend.click_through(VariantKey.CAMPAIGN, Scope())),
            ("CTR per variant, one experiment, all time",
             lambda: backend.click_through(VariantKey.VARIANT, Scope(experiment_id=3))),
            ("attribution last click (7 d), conversions of 30 days",
             lambda: backend.attribution(AttributionModel.LAST_CLICK, week, month)),
            ("attribution first touch (7 d), conversions of 30 days",
             lambda: backend.attribution(AttributionModel.FIRST_TOUCH, week, month)),
            ("delivery health per provider, last 30 days",
             lambda: backend.delivery_health(HealthKey.PROVIDER, month)),
            ("delivery health per domain, last 30 days",
             lambda: backend.delivery_health(HealthKey.DOMAIN, month)),
        ]  # fmt: skip
        for name, query in queries:
            first, warm, _ = _time(query, repeat)
            results.append({"query": name, "first_s": round(first, 3), "warm_s": round(warm, 3)})
    if sink is not None:
        sink.close()
    bench_runtime.close()
    report = {
        "sink": sink_name,
        "events": total,
        "generated_in_s": generated_in,
        "queries": results,
        "slowest_warm_s": max(r["warm_s"] for r in results),
        "slowest_first_s": max(r["first_s"] for r in results),
    }
    if as_json:
        emit_json(report)
        return
    for row in results:
        click.echo(f"{row['warm_s']:8.3f} s (first {row['first_s']:.3f} s)  {row['query']}")
