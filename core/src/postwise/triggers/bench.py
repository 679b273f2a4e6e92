"""``postwise bench triggers``: end-to-end trigger throughput and event-to-enqueue latency.

The benchmark builds a scratch database (a temporary SQLite file unless ``--database-url`` is
given) with contacts, a segment, purchase history and ten triggers on one event type using every
built-in condition type, nested. It then measures, on the configured Redis
(``POSTWISE_REDIS_URL``; use a real server for meaningful figures):

* **throughput**: ``--events`` events are put on a stream of their own, and one engine consumer
  drains it end to end — decode, conditions, cooldown claims, ``submit_send`` (compliance gate,
  frequency cap, ledger row, RQ enqueue), counters and acknowledgement;
* **latency**: events are published at ``--rate`` per second for ``--latency-seconds`` while the
  engine consumes them; for each send, the time from publication to its enqueue.

It works in its own stream and key namespace and removes what it wrote to Redis when it is done
(streams, claims, counters, the queued jobs and the frequency-cap entries of its contacts), so it
can share a Redis with a development server, but do not point it at production.
"""

from __future__ import annotations

import json
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
from postwise.delivery.requests import SendRequest, SubmitResult, SubmitStatus
from postwise.events import EventEnvelope, encode_event
from postwise.runtime import Runtime
from postwise.settings import Settings, load_settings
from postwise.triggers.cooldown import TriggerKeys
from postwise.triggers.engine import Submitter, TriggerEngine

__all__ = ["BENCH_TRIGGERS", "bench_triggers", "run_benchmark"]

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
            {"type": "engagement_score", "config": {"min": 97}},
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
            {"type": "event_property", "config": {"property": "price", "op": "gt", "value": 190}},
        ],
        "priority": 8,
    },
    {
        "name": "no-recent-purchase",
        "conditions": [
            {"type": "event_property", "config": {"property": "price", "op": "gt", "value": 197}},
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
                "config": {"property": "discount", "op": "gte", "value": 40},
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
                "config": {"property": "discount", "op": "gte", "value": 48},
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
                    "config": {"property": "price", "op": "gte", "value": 195},
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
            {"type": "engagement_score", "config": {"min": 95}},
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
            {"type": "event_property", "config": {"property": "price", "op": "gt", "value": 150}},
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
                "config": {"property": "discount", "op": "gte", "value": 45},
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
class _Timings:
    """Send enqueue times recorded by the instrumented submitter."""

    latencies: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, request: SendRequest, result: SubmitResult) -> None:
        done = time.time()
        with self.lock:
            self.statuses[result.status.value] = self.statuses.get(result.status.value, 0) + 1
            published = request.context.get("event", {}).get("published")
            if result.status == SubmitStatus.QUEUED and isinstance(published, float):
                self.latencies.append(done - published)


def _instrument(submit: Submitter, timings: _Timings) -> Submitter:
    def timed(runtime: Runtime, request: SendRequest) -> SubmitResult:
        result = submit(runtime, request)
        timings.record(request, result)
        return result

    return timed


def _populate(runtime: Runtime, contacts: int, rng: random.Random) -> list[int]:
    import sqlalchemy as sa
    from sqlmodel import col

    from postwise.db.models import Contact, ContactTag, Event, Segment, Template, TemplateVersion

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
        ids = [
            row[0] for row in session.execute(sa.select(col(Contact.id)).order_by(col(Contact.id)))
        ]
        tags = [{"contact_id": cid, "tag": "vip"} for cid in ids if rng.random() < 0.1]
        if tags:
            session.execute(sa.insert(ContactTag), tags)
        history = []
        for cid in ids:
            for _ in range(rng.choice((0, 0, 1, 2, 4))):
                history.append(
                    {
                        "event_id": uuid.uuid4().hex,
                        "type": "purchase",
                        "occurred_at": now - timedelta(days=rng.uniform(0, 120)),
                        "received_at": now,
                        "contact_id": cid,
                        "properties": {},
                    }
                )
        if history:
            session.execute(sa.insert(Event), history)
    return ids


def _define_triggers(runtime: Runtime, count: int) -> None:
    from postwise.triggers.store import TriggerStore

    with runtime.session() as session:
        store = TriggerStore(session, runtime)
        for index in range(count):
            spec = dict(BENCH_TRIGGERS[index % len(BENCH_TRIGGERS)])
            spec["name"] = (
                f"{spec['name']}-{index}" if index >= len(BENCH_TRIGGERS) else spec["name"]
            )
            spec.update(
                event_type=EVENT_TYPE,
                action={"type": "send_template", "template": "bench-follow-up"},
            )
            store.create(spec)


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


def _drain(engine: TriggerEngine, expected: int, timeout: float) -> int:
    handled = 0
    deadline = time.monotonic() + timeout
    while handled < expected and time.monotonic() < deadline:
        handled += engine.step()
    return handled


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=1000, method="inclusive")[int(q * 1000) - 1]


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
    seed: int = 7,
    submit: Submitter | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run both phases and return the figures (see the module docstring)."""
    from postwise.delivery.dispatch import submit_send

    say = progress or (lambda _text: None)
    rng = random.Random(seed)
    runtime = Runtime(settings)
    run_id = uuid.uuid4().hex[:10]
    keys = TriggerKeys(f"postwise:bench:{run_id}:triggers")
    stream = f"postwise:bench:{run_id}:events"
    timings = _Timings()
    try:
        say("preparing the database")
        runtime.migrate()
        contact_ids = _populate(runtime, contacts, rng)
        _define_triggers(runtime, triggers)
        engine = TriggerEngine(
            runtime,
            consumer="bench",
            stream=stream,
            keys=keys,
            batch_size=batch_size,
            send_workers=send_workers,
            block_ms=50,
            submit=_instrument(submit or submit_send, timings),
        )
        engine.ensure_group("0")
        engine.reload()

        say(f"throughput: publishing {events} events")
        pipe = runtime.redis.pipeline(transaction=False)
        for index in range(events):
            pipe.xadd(stream, _event(rng.choice(contact_ids), rng, time.time()))
            if index % 1000 == 999:
                pipe.execute()
        pipe.execute()
        say("throughput: consuming")
        started = time.perf_counter()
        handled = _drain(engine, events, timeout=600)
        elapsed = time.perf_counter() - started
        counters = dict(timings.statuses)
        engine_stats = {
            _text(k): int(v) for k, v in runtime.redis.hgetall(keys.engine_stats).items()
        }
        throughput = {
            "events": handled,
            "seconds": round(elapsed, 3),
            "events_per_second": round(handled / elapsed, 1),
            "sends": counters,
            "queued_sends_per_second": round(counters.get("queued", 0) / elapsed, 1),
        }
        stats = _trigger_totals(runtime, keys)

        say(f"latency: {rate:g} events/s for {latency_seconds:g} s")
        timings.latencies.clear()
        latency = _paced(
            runtime,
            engine,
            stream=stream,
            contact_ids=contact_ids,
            rng=rng,
            rate=rate,
            seconds=latency_seconds,
            timings=timings,
        )
        return {
            "benchmark": "triggers",
            "events": events,
            "triggers": triggers,
            "contacts": contacts,
            "batch_size": batch_size,
            "redis": settings.redis_url.split("@")[-1],
            "database": runtime.engine.dialect.name,
            "events_per_second": throughput["events_per_second"],
            "p99_latency_ms": latency["p99_ms"],
            "throughput": throughput,
            "latency": latency,
            "trigger_counters": stats,
            "engine_counters": engine_stats,
        }
    finally:
        _cleanup(runtime, stream, keys)
        runtime.close()


def _paced(
    runtime: Runtime,
    engine: TriggerEngine,
    *,
    stream: str,
    contact_ids: list[int],
    rng: random.Random,
    rate: float,
    seconds: float,
    timings: _Timings,
) -> dict[str, Any]:
    total = int(rate * seconds)
    done = threading.Event()
    producer_rng = random.Random(rng.random())

    def produce() -> None:
        client = runtime.redis
        tick = 0.01
        per_tick = rate * tick
        started = time.perf_counter()
        sent = 0
        while sent < total:
            due = int(min(total, (time.perf_counter() - started) / tick * per_tick + per_tick))
            if due > sent:
                pipe = client.pipeline(transaction=False)
                for _ in range(due - sent):
                    pipe.xadd(
                        stream, _event(producer_rng.choice(contact_ids), producer_rng, time.time())
                    )
                pipe.execute()
                sent = due
            time.sleep(max(0.0, started + (sent / rate) - time.perf_counter()))
        done.set()

    # Fresh contacts' cooldowns are what the paced phase measures; clear the claims of the
    # throughput phase so sends happen again.
    for key in runtime.redis.scan_iter(match=f"{engine.keys.namespace}:cd:*", count=1000):
        runtime.redis.delete(key)
    producer = threading.Thread(target=produce, daemon=True)
    started = time.perf_counter()
    producer.start()
    handled = 0
    while not done.is_set() or handled < total:
        handled += engine.step()
        if time.perf_counter() - started > seconds * 3 + 30:
            break
    producer.join(timeout=5)
    latencies = [value * 1000 for value in timings.latencies]
    return {
        "rate": rate,
        "seconds": seconds,
        "events": handled,
        "sends": len(latencies),
        "p50_ms": _round(_percentile(latencies, 0.5)),
        "p99_ms": _round(_percentile(latencies, 0.99)),
        "max_ms": _round(max(latencies) if latencies else None),
    }


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _trigger_totals(runtime: Runtime, keys: TriggerKeys) -> dict[str, int]:
    totals: dict[str, int] = {}
    for key in runtime.redis.scan_iter(match=f"{keys.namespace}:stats:*", count=1000):
        if _text(key).endswith(":engine"):
            continue
        for name, value in runtime.redis.hgetall(key).items():
            totals[_text(name)] = totals.get(_text(name), 0) + int(value)
    return totals


def _cleanup(runtime: Runtime, stream: str, keys: TriggerKeys) -> None:
    from postwise.delivery.frequency import KEY_PREFIX
    from postwise.delivery.jobs import queue_name

    client = runtime.redis
    client.delete(stream)
    for key in client.scan_iter(match=f"{keys.namespace}:*", count=1000):
        client.delete(key)
    import sqlalchemy as sa
    from sqlmodel import col

    from postwise.db.models import Contact, Message

    with runtime.session() as session:
        ids = [row[0] for row in session.execute(sa.select(col(Contact.id)))]
        message_ids = {row[0] for row in session.execute(sa.select(col(Message.id)))}
    for start in range(0, len(ids), 1000):
        client.delete(*[f"{KEY_PREFIX}{cid}" for cid in ids[start : start + 1000]])
    _remove_jobs(runtime, queue_name(runtime.settings.provider), message_ids)


def _remove_jobs(runtime: Runtime, queue: str, message_ids: set[str]) -> None:
    from rq import Queue
    from rq.registry import ScheduledJobRegistry
    from rq.serializers import JSONSerializer

    rq_queue = Queue(queue, connection=runtime.redis, serializer=JSONSerializer)
    job_ids = set(rq_queue.get_job_ids()) | set(ScheduledJobRegistry(queue=rq_queue).get_job_ids())
    for job in rq_queue.job_class.fetch_many(
        list(job_ids), connection=runtime.redis, serializer=JSONSerializer
    ):
        if job is None:
            continue
        batch = job.args[0] if job.args else []
        if isinstance(batch, list) and batch and set(map(str, batch)) <= message_ids:
            job.delete()


@click.command("triggers")
@click.option("--events", default=50_000, show_default=True, help="Events in the throughput phase.")
@click.option("--triggers", "trigger_count", default=10, show_default=True)
@click.option("--contacts", default=20_000, show_default=True)
@click.option("--rate", default=1000.0, show_default=True, help="Events/s in the latency phase.")
@click.option("--latency-seconds", default=10.0, show_default=True)
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
    rate: float,
    latency_seconds: float,
    batch_size: int,
    database_url: str,
    as_json: bool,
) -> None:
    """Trigger engine: events/s end to end, and p99 event-to-enqueue latency at a paced rate."""
    base = load_settings(
        config_file=ctx.find_root().obj.get("config_file") if ctx.find_root().obj else None
    )
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
            rate=rate,
            latency_seconds=latency_seconds,
            batch_size=batch_size,
            progress=None if as_json else lambda text: click.echo(text, err=True),
        )
    if as_json:
        emit_json(result)
        return
    click.echo(json.dumps(result, indent=2))
