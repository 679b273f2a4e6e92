"""``postwise bench triggers``: end-to-end trigger throughput and event-to-enqueue latency.

The benchmark builds a scratch database (a temporary SQLite file unless ``--database-url`` is
given) with contacts, a segment, purchase history and ten triggers on one event type using every
built-in condition type, nested. It then measures, on the configured Redis
(``POSTWISE_REDIS_URL``; use a real server for meaningful figures):

* **throughput**: ``--events`` events are put on a stream of their own, and ``--consumers``
  engine consumers (one by default; more run as processes of their own) drain it end to end —
  decode, conditions, cooldown claims, ``submit_send`` (compliance gate, frequency cap, ledger
  row, RQ enqueue), counters and acknowledgement;
* **latency**: a separate producer process publishes events at ``--rate`` per second for
  ``--latency-seconds`` while one consumer handles them; for each queued send, the time from
  publication to its enqueue.

It works in its own stream and key namespace and removes what it wrote to Redis when it is done
(streams, claims, counters, the queued jobs and the frequency-cap entries of its contacts), so it
can share a Redis with a development server, but do not point it at production.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import statistics
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import click

from postwise.cli.common import emit_json
from postwise.db.models import (
    Contact,
    ContactTag,
    Event,
    Message,
    Segment,
    Template,
    TemplateVersion,
)
from postwise.delivery.dispatch import submit_send
from postwise.delivery.frequency import KEY_PREFIX
from postwise.delivery.queue import queue_name
from postwise.delivery.requests import SendRequest, SubmitResult, SubmitStatus
from postwise.errors import PostwiseError
from postwise.events import EventEnvelope, encode_event
from postwise.redis_client import connect_redis
from postwise.runtime import Runtime
from postwise.settings import Settings, load_settings
from postwise.triggers.cooldown import TriggerKeys
from postwise.triggers.engine import Submitter, TriggerEngine
from postwise.triggers.stats import COUNTERS, read_stats
from postwise.triggers.store import TriggerStore

__all__ = ["BENCH_TRIGGERS", "bench_triggers", "delete_scratch_jobs", "run_benchmark"]

EVENT_TYPE = "page_view"
CATEGORIES = ("shoes", "bags", "hats", "coats", "socks")
COUNTRIES = ("FR", "DE", "US", "GB", "JP", "BR")
ZONES = ("Europe/Paris", "Europe/Berlin", "America/New_York", "Europe/London", "Asia/Tokyo")
PLANS = ("free", "trial", "pro", "team")

#: Ten triggers on one event type, mixing every built-in condition type, nested.
BENCH_TRIGGERS: list[dict[str, Any]] = [
    {
        "name": "engaged-browsing-hats",
        "conditions": [
            {"type": "engagement_score", "config": {"min": 99}},
            {"type": "time_window", "config": {"hours": 1}},
            {"type": "event_property", "config": {"property": "category", "value": "hats"}},
        ],
        "priority": 9,
    },
    {
        "name": "engaged-segment-shoes",
        "conditions": [
            {"type": "segment", "config": {"segment": "engaged"}},
            {"type": "event_property", "config": {"property": "category", "value": "shoes"}},
            {"type": "event_property", "config": {"property": "price", "op": "gt", "value": 195}},
        ],
        "priority": 8,
    },
    {
        "name": "no-recent-purchase",
        "conditions": [
            {"type": "event_property", "config": {"property": "price", "op": "gt", "value": 190}},
            {"type": "event_property", "config": {"property": "category", "value": "bags"}},
            {
                "type": "action_history",
                "config": {"event_type": "purchase", "within_days": 30, "did": False},
            },
        ],
        "priority": 7,
    },
    {
        "name": "repeat-buyer-pro",
        "conditions": [
            {
                "type": "event_property",
                "config": {"property": "discount", "op": "gte", "value": 46},
            },
            {"type": "contact_attribute", "config": {"attribute": "plan", "value": "pro"}},
            {
                "type": "action_history",
                "config": {"event_type": "purchase", "within_days": 90, "at_least": 3},
            },
        ],
        "priority": 6,
    },
    {
        "name": "weekday-daytime-eu",
        "conditions": [
            {
                "type": "contact_attribute",
                "config": {"attribute": "country", "op": "in", "value": ["FR", "DE"]},
            },
            {
                "type": "time_window",
                "config": {
                    "days_of_week": ["mon", "tue", "wed", "thu", "fri"],
                    "hour_from": 8,
                    "hour_to": 20,
                },
            },
            {
                "type": "event_property",
                "config": {"property": "discount", "op": "gte", "value": 50},
            },
        ],
        "priority": 5,
    },
    {
        "name": "bags-or-vip",
        "conditions": {
            "all": [
                {
                    "type": "event_property",
                    "config": {"property": "price", "op": "gte", "value": 198},
                },
                {
                    "any": [
                        {
                            "type": "event_property",
                            "config": {"property": "category", "value": "bags"},
                        },
                        {
                            "type": "contact_attribute",
                            "config": {"attribute": "tags", "op": "contains", "value": "vip"},
                        },
                    ]
                },
            ]
        },
        "priority": 4,
    },
    {
        "name": "not-trial-highly-engaged",
        "conditions": [
            {"type": "event_property", "config": {"property": "category", "value": "coats"}},
            {
                "not": {
                    "type": "contact_attribute",
                    "config": {"attribute": "plan", "value": "trial"},
                }
            },
            {"type": "engagement_score", "config": {"min": 98}},
        ],
        "priority": 3,
    },
    {
        "name": "deep-discount-expensive",
        "conditions": [
            {
                "type": "event_property",
                "config": {"property": "discount", "op": "gte", "value": 50},
            },
            {"type": "event_property", "config": {"property": "price", "op": "gt", "value": 175}},
        ],
        "priority": 2,
    },
    {
        "name": "company-low-engagement",
        "conditions": [
            {"type": "event_property", "config": {"property": "category", "value": "coats"}},
            {"type": "contact_attribute", "config": {"attribute": "company", "op": "exists"}},
            {"type": "engagement_score", "config": {"max": 5}},
        ],
        "priority": 1,
    },
    {
        "name": "big-team-engaged",
        "conditions": [
            {
                "type": "event_property",
                "config": {"property": "discount", "op": "gte", "value": 48},
            },
            {
                "type": "contact_attribute",
                "config": {"attribute": "seats", "op": "gte", "value": 90},
            },
            {"type": "segment", "config": {"segment": "engaged"}},
        ],
        "priority": 0,
    },
]


@dataclass(slots=True)
class _Latencies:
    """Publication-to-enqueue times of queued sends, and how long each ``submit_send`` took,
    recorded by the instrumented submitter."""

    values: list[float] = field(default_factory=list)
    submits: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def instrument(self, submit: Submitter) -> Submitter:
        def timed(runtime: Runtime, request: SendRequest) -> SubmitResult:
            started = time.perf_counter()
            result = submit(runtime, request)
            took = time.perf_counter() - started
            published = request.context.get("event", {}).get("published")
            with self.lock:
                self.submits.append(took)
                if result.status == SubmitStatus.QUEUED and isinstance(published, float):
                    self.values.append(time.time() - published)
            return result

        return timed


@dataclass(frozen=True, slots=True)
class _Run:
    """Where one benchmark run works: its scratch settings, stream and key namespace."""

    settings: Settings
    stream: str
    keys: TriggerKeys
    batch_size: int
    send_workers: int

    def engine(self, runtime: Runtime, consumer: str, **options: Any) -> TriggerEngine:
        return TriggerEngine(
            runtime,
            consumer=consumer,
            stream=self.stream,
            keys=self.keys,
            batch_size=self.batch_size,
            send_workers=self.send_workers,
            block_ms=20,
            **options,
        )


def _populate(runtime: Runtime, contacts: int, rng: random.Random) -> list[int]:
    import sqlalchemy as sa
    from sqlmodel import col

    now = datetime.now(UTC)
    with runtime.session() as session:
        template = Template(name="bench-follow-up")
        session.add(template)
        session.flush()
        assert template.id is not None
        session.add(
            TemplateVersion(
                template_id=template.id, version=1, subject="We saw you looking", html="<p>Hi</p>"
            )
        )
        session.add(
            Segment(
                name="engaged",
                kind="rules",
                rules={"field": "engagement_score", "op": "gte", "value": 60},
            )
        )
        rows = []
        for index in range(contacts):
            attributes: dict[str, Any] = {"plan": rng.choice(PLANS), "seats": rng.randint(1, 100)}
            if rng.random() < 0.3:
                attributes["company"] = f"Company {index % 97}"
            rows.append(
                {
                    "email": f"bench-{index}@bench.example.com",
                    "timezone": rng.choice(ZONES),
                    "country": rng.choice(COUNTRIES),
                    "status": "active",
                    "attributes": attributes,
                    "engagement_score": round(rng.uniform(0, 100), 2),
                    "engagement_updated_at": now,
                    "created_at": now,
                    "updated_at": now,
                }
            )
        session.execute(sa.insert(Contact), rows)
        query = sa.select(col(Contact.id)).order_by(col(Contact.id))
        ids = [row[0] for row in session.execute(query)]
        tags = [{"contact_id": cid, "tag": "vip"} for cid in ids if rng.random() < 0.1]
        if tags:
            session.execute(sa.insert(ContactTag), tags)
        history = [
            {
                "event_id": uuid.uuid4().hex,
                "type": "purchase",
                "occurred_at": now - timedelta(days=rng.uniform(0, 120)),
                "received_at": now,
                "contact_id": cid,
                "properties": {},
            }
            for cid in ids
            for _ in range(rng.choice((0, 0, 1, 2, 4)))
        ]
        if history:
            session.execute(sa.insert(Event), history)
    return ids


def _define_triggers(runtime: Runtime, count: int, keys: TriggerKeys) -> dict[int, str]:

    names: dict[int, str] = {}
    with runtime.session() as session:
        store = TriggerStore(session, runtime, keys=keys)
        for index in range(count):
            spec = dict(BENCH_TRIGGERS[index % len(BENCH_TRIGGERS)])
            if index >= len(BENCH_TRIGGERS):
                spec["name"] = f"{spec['name']}-{index}"
            spec.update(
                event_type=EVENT_TYPE,
                action={"type": "send_template", "template": "bench-follow-up"},
            )
            trigger = store.create(spec)
            assert trigger.id is not None
            names[trigger.id] = trigger.name
    return names


def _event(contact_id: int, rng: random.Random, published: float) -> dict[Any, Any]:
    envelope = EventEnvelope(
        event_id=uuid.uuid4().hex,
        type=EVENT_TYPE,
        occurred_at=datetime.fromtimestamp(published, UTC),
        contact_id=contact_id,
        properties={
            "category": rng.choice(CATEGORIES),
            "price": rng.randint(5, 200),
            "discount": rng.randint(0, 50),
            "published": published,
        },
    )
    return encode_event(envelope)


def _consumed(runtime: Runtime, run: _Run) -> bool:
    """Whether every entry of the stream was read and acknowledged by the group."""
    group = runtime.redis.xinfo_groups(run.stream)[0]
    return bool(group["lag"] == 0 and group["pending"] == 0)


def _consume_until_done(runtime: Runtime, engine: TriggerEngine, run: _Run) -> None:
    idle = 0
    while True:
        if engine.step():
            idle = 0
            continue
        idle += 1
        if idle >= 2 and _consumed(runtime, run):
            return


def _consumer_process(run: _Run, name: str, ready: Any, go: Any) -> None:
    """One consumer of the throughput phase in a process of its own."""
    runtime = Runtime(run.settings)
    engine = run.engine(runtime, name)
    engine.reload()
    ready.set()
    go.wait()
    try:
        _consume_until_done(runtime, engine, run)
    finally:
        engine.close()
        runtime.close()


def _throughput(runtime: Runtime, run: _Run, events: int, consumers: int) -> dict[str, Any]:
    started, cpu_started = time.perf_counter(), time.process_time()
    if consumers == 1:
        engine = run.engine(runtime, "bench-0")
        engine.reload()
        try:
            _consume_until_done(runtime, engine, run)
        finally:
            engine.close()
    else:
        context = multiprocessing.get_context("spawn")
        go = context.Event()
        readies = [context.Event() for _ in range(consumers)]
        processes = [
            context.Process(target=_consumer_process, args=(run, f"bench-{i}", readies[i], go))
            for i in range(consumers)
        ]
        for process in processes:
            process.start()
        for ready in readies:
            ready.wait(timeout=120)
        started, cpu_started = time.perf_counter(), time.process_time()
        go.set()
        for process in processes:
            process.join()
    elapsed = time.perf_counter() - started
    result: dict[str, Any] = {
        "events": events,
        "consumers": consumers,
        "seconds": round(elapsed, 3),
        "events_per_second": round(events / elapsed, 1),
    }
    if consumers == 1:
        # CPU seconds of the consumer: wall time well above it means it waited for Redis, the
        # database, or its share of a busy machine.
        result["cpu_seconds"] = round(time.process_time() - cpu_started, 3)
    return result


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 1000) - 1]


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


@dataclass(frozen=True, slots=True)
class _Producer:
    """Publishes ``total`` events at ``rate`` per second, as a product service would: from a
    process of its own, so it takes no time from the consumer being measured."""

    redis_url: str
    stream: str
    contact_ids: list[int]
    rate: float
    total: int
    seed: int

    def __call__(self) -> None:

        client = connect_redis(self.redis_url)
        rng = random.Random(self.seed)
        started = time.perf_counter()
        sent = 0
        while sent < self.total:
            due = min(self.total, int((time.perf_counter() - started) * self.rate) + 1)
            if due > sent:
                pipe = client.pipeline(transaction=False)
                for _ in range(due - sent):
                    pipe.xadd(self.stream, _event(rng.choice(self.contact_ids), rng, time.time()))
                pipe.execute()
                sent = due
            time.sleep(max(0.0, started + sent / self.rate - time.perf_counter()))
        client.close()


def _paced(
    runtime: Runtime,
    run: _Run,
    *,
    contact_ids: list[int],
    rng: random.Random,
    rate: float,
    seconds: float,
    submit: Submitter,
) -> dict[str, Any]:
    total = int(rate * seconds)
    latencies = _Latencies()
    engine = run.engine(runtime, "bench-paced", submit=latencies.instrument(submit))
    engine.reload()
    producer = multiprocessing.get_context("spawn").Process(
        target=_Producer(
            run.settings.redis_url, run.stream, contact_ids, rate, total, rng.randrange(2**32)
        ),
        name="bench-producer",
    )
    producer.start()
    try:
        while producer.is_alive() or not _consumed(runtime, run):
            engine.step()
    finally:
        producer.join(timeout=30)
        engine.close()
    if producer.exitcode != 0:
        raise PostwiseError(
            f"the benchmark's event producer failed (exit code {producer.exitcode})"
        )
    values = [value * 1000 for value in latencies.values]
    submits = [value * 1000 for value in latencies.submits]
    return {
        "rate": rate,
        "seconds": seconds,
        "events": total,
        "sends": len(values),
        "p50_ms": _round(_percentile(values, 0.5)),
        "p99_ms": _round(_percentile(values, 0.99)),
        "max_ms": _round(max(values) if values else None),
        # The part of the latency spent inside delivery's submit_send (gate, cap, ledger
        # commit, enqueue): under disk contention its commit dominates the tail.
        "submit_p50_ms": _round(_percentile(submits, 0.5)),
        "submit_p99_ms": _round(_percentile(submits, 0.99)),
    }


def _forget_claims(runtime: Runtime, run: _Run) -> None:
    """Free the cooldowns and frequency-cap slots of the throughput phase, so the paced phase
    sends as a fresh population would."""

    client = runtime.redis
    for key in client.scan_iter(match=f"{run.keys.namespace}:cd:*", count=1000):
        client.delete(key)
    with runtime.session() as session:
        import sqlalchemy as sa
        from sqlmodel import col

        ids = [row[0] for row in session.execute(sa.select(col(Contact.id)))]
    for start in range(0, len(ids), 1000):
        client.delete(*[f"{KEY_PREFIX}{cid}" for cid in ids[start : start + 1000]])


def run_benchmark(
    settings: Settings,
    *,
    events: int,
    triggers: int = 10,
    contacts: int = 20_000,
    rate: float = 1000.0,
    latency_seconds: float = 10.0,
    batch_size: int = 500,
    send_workers: int = 4,
    consumers: int = 1,
    seed: int = 7,
    submit: Submitter | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run both phases on ``settings`` (a scratch database) and return the figures."""

    say = progress or (lambda _text: None)
    rng = random.Random(seed)
    run_id = uuid.uuid4().hex[:10]
    run = _Run(
        settings=settings,
        stream=f"postwise:bench:{run_id}:events",
        keys=TriggerKeys(f"postwise:bench:{run_id}:triggers"),
        batch_size=batch_size,
        send_workers=send_workers,
    )
    runtime = Runtime(settings)
    try:
        say("preparing the database")
        runtime.migrate()
        contact_ids = _populate(runtime, contacts, rng)
        names = _define_triggers(runtime, triggers, run.keys)
        runtime.redis.xgroup_create(run.stream, "triggers", id="0", mkstream=True)

        say(f"throughput: publishing {events} events")
        pipe = runtime.redis.pipeline(transaction=False)
        for index in range(events):
            pipe.xadd(run.stream, _event(rng.choice(contact_ids), rng, time.time()))
            if index % 1000 == 999:
                pipe.execute()
        pipe.execute()
        say(f"throughput: consuming with {consumers} consumer(s)")
        throughput = _throughput(runtime, run, events, consumers)
        per_trigger = read_stats(runtime.redis, run.keys, names)
        totals = {
            counter: sum(stats[counter] for stats in per_trigger.values()) for counter in COUNTERS
        }
        throughput["sends_per_event"] = round(
            (totals["fired"] + totals["capped"] + totals["skipped"]) / events, 4
        )

        say(f"latency: {rate:g} events/s for {latency_seconds:g} s")
        _forget_claims(runtime, run)
        latency = _paced(
            runtime,
            run,
            contact_ids=contact_ids,
            rng=rng,
            rate=rate,
            seconds=latency_seconds,
            submit=submit or submit_send,
        )
        return {
            "benchmark": "triggers",
            "events": events,
            "triggers": triggers,
            "contacts": contacts,
            "consumers": consumers,
            "batch_size": batch_size,
            "send_workers": send_workers,
            "redis": settings.redis_url.split("@")[-1],
            "database": runtime.engine.dialect.name,
            "events_per_second": throughput["events_per_second"],
            "p99_latency_ms": latency["p99_ms"],
            "throughput": throughput,
            "latency": latency,
            "throughput_counters": totals,
            "per_trigger": {names[tid]: stats for tid, stats in per_trigger.items()},
        }
    finally:
        _cleanup(runtime, run)
        runtime.close()


def _cleanup(runtime: Runtime, run: _Run) -> None:
    client = runtime.redis
    client.delete(run.stream)
    for key in client.scan_iter(match=f"{run.keys.namespace}:*", count=1000):
        client.delete(key)
    _forget_claims(runtime, run)
    delete_scratch_jobs(runtime)


def delete_scratch_jobs(runtime: Runtime) -> None:
    """Delete the RQ jobs a benchmark queued: jobs whose message ids all belong to the scratch
    database's ledger (the shared Redis may hold a development server's jobs too)."""
    from rq import Queue
    from rq.registry import ScheduledJobRegistry
    from rq.serializers import JSONSerializer

    client = runtime.redis
    import sqlalchemy as sa
    from sqlmodel import col

    with runtime.session() as session:
        message_ids = {row[0] for row in session.execute(sa.select(col(Message.id)))}
    queue = Queue(
        queue_name(runtime.settings.provider), connection=client, serializer=JSONSerializer
    )
    job_ids = set(queue.get_job_ids()) | set(ScheduledJobRegistry(queue=queue).get_job_ids())
    for job in queue.job_class.fetch_many(
        list(job_ids), connection=client, serializer=JSONSerializer
    ):
        if job is None:
            continue
        batch = job.args[0] if job.args else []
        if isinstance(batch, list) and batch and {str(m) for m in batch} <= message_ids:
            job.delete()


@click.command("triggers")
@click.option("--events", default=50_000, show_default=True, help="Events in the throughput phase.")
@click.option("--triggers", "trigger_count", default=10, show_default=True)
@click.option("--contacts", default=20_000, show_default=True)
@click.option("--consumers", default=1, show_default=True, help="Consumer processes (throughput).")
@click.option("--send-workers", default=4, show_default=True, help="Send threads per consumer.")
@click.option("--rate", default=1000.0, show_default=True, help="Events/s in the latency phase.")
@click.option("--latency-seconds", default=20.0, show_default=True)
@click.option("--batch-size", default=500, show_default=True)
@click.option(
    "--database-url",
    default="",
    help="Scratch database to use (it gets bench data); default: a temporary SQLite file.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def bench_triggers(
    ctx: click.Context,
    *,
    events: int,
    trigger_count: int,
    contacts: int,
    consumers: int,
    send_workers: int,
    rate: float,
    latency_seconds: float,
    batch_size: int,
    database_url: str,
    as_json: bool,
) -> None:
    """Trigger engine: events/s end to end, and p99 event-to-enqueue latency at a paced rate."""
    root = ctx.find_root()
    base = load_settings(config_file=root.obj.get("config_file") if root.obj else None)
    with tempfile.TemporaryDirectory(prefix="postwise-bench-triggers-") as scratch:
        settings = base.model_copy(
            update={
                "data_dir": Path(scratch),
                "database_url": database_url or f"sqlite:///{Path(scratch) / 'bench.sqlite3'}",
            }
        )
        result = run_benchmark(
            settings,
            events=events,
            triggers=trigger_count,
            contacts=contacts,
            consumers=consumers,
            send_workers=send_workers,
            rate=rate,
            latency_seconds=latency_seconds,
            batch_size=batch_size,
            progress=None if as_json else lambda text: click.echo(text, err=True),
        )
    if as_json:
        emit_json(result)
        return
    click.echo(json.dumps(result, indent=2))
