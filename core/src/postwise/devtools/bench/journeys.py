"""``postwise bench journeys``: due steps advanced per second with a million contacts inside,
event-to-first-send latency at a paced event rate, and memory against active steps.

The benchmark builds a scratch database (a temporary SQLite file unless ``--database-url`` is
given; use an empty PostgreSQL database for meaningful figures) and measures on the configured
Redis, in a key namespace and stream of its own that it removes afterwards:

* **population**: ``--contacts`` contacts, each inside the journey ``bench-nurture`` (wait 1 d →
  branch on the contact's plan → wait 3 d or 7 d) at its first wait: one ``journey_run`` row and
  one due-index entry per contact. ``--due`` of those waits have ended; the others end over the
  next 30 days;
* **due advance**: one worker advances every due run — claim from the due index (leased), load
  the runs and their contacts, take the wait's end, the branch and the next wait, write the
  positions (``WHERE seq = …``) and the due index — and reports runs and steps per second, its
  CPU time, and its memory before and after (it does not grow with the contacts inside: the
  worker holds one batch at a time);
* **latency**: a producer process publishes events at ``--rate`` per second for
  ``--latency-seconds``; a share ``--entry-share`` are ``cart_abandoned`` events that enter
  contacts into ``bench-cart``, whose first step sends at once (``submit_send``: compliance gate,
  frequency cap, ledger row, RQ enqueue); the rest are other events, read and skipped. For each
  queued send: the time from publication to enqueue.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import resource
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
import sqlalchemy as sa
from sqlmodel import col

from postwise.cli.common import emit_json
from postwise.db.models import Contact, JourneyRun, Template, TemplateVersion
from postwise.delivery.requests import SendRequest, SubmitResult, SubmitStatus
from postwise.devtools.bench.triggers import delete_scratch_jobs
from postwise.errors import PostwiseError
from postwise.events import EventEnvelope, encode_event
from postwise.journeys.engine import JourneyEngine, Submitter
from postwise.journeys.store import JourneyKeys, JourneyStore, read_journey_stats
from postwise.runtime import Runtime
from postwise.settings import Settings, load_settings

__all__ = ["bench_journeys", "run_benchmark"]

PLANS = ("free", "trial", "pro", "team")
ZONES = ("Europe/Paris", "Europe/Berlin", "America/New_York", "Europe/London", "Asia/Tokyo")

NURTURE: dict[str, Any] = {
    "name": "bench-nurture",
    "entry": {"event": "signup"},
    "steps": [
        {"id": "day1", "type": "wait", "duration": "1d", "next": "paid?"},
        {
            "id": "paid?",
            "type": "branch",
            "conditions": [
                {
                    "type": "contact_attribute",
                    "config": {"attribute": "plan", "op": "in", "value": ["pro", "team"]},
                }
            ],
            "then": "day3",
            "else": "day7",
        },
        {"id": "day3", "type": "wait", "duration": "3d", "next": "done"},
        {"id": "day7", "type": "wait", "duration": "7d", "next": "done"},
        {"id": "done", "type": "exit", "reason": "nurtured"},
    ],
}
CART: dict[str, Any] = {
    "name": "bench-cart",
    "entry": {"event": "cart_abandoned"},
    "reentry": "always",
    "goal": {"event": "purchase"},
    "steps": [
        {"id": "first", "type": "send", "template": "bench-cart", "next": "later"},
        {"id": "later", "type": "wait", "duration": "1d"},
    ],
}


def _rss_mb() -> float:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    return float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) / 1024


def _percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 2)


@dataclass(slots=True)
class _Latencies:
    values: list[float] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def instrument(self, submit: Submitter) -> Submitter:
        def timed(runtime: Runtime, request: SendRequest) -> SubmitResult:
            result = submit(runtime, request)
            published = (request.context.get("event") or {}).get("published")
            if result.status == SubmitStatus.QUEUED and isinstance(published, float):
                with self.lock:
                    self.values.append(time.time() - published)
            return result

        return timed


@dataclass(frozen=True, slots=True)
class _Producer:
    redis_url: str
    stream: str
    contacts: int
    first_id: int
    rate: float
    total: int
    entry_share: float
    seed: int

    def __call__(self) -> None:
        from postwise.redis_client import connect_redis

        client = connect_redis(self.redis_url)
        rng = random.Random(self.seed)
        started = time.perf_counter()
        sent = 0
        while sent < self.total:
            due = min(self.total, int((time.perf_counter() - started) * self.rate) + 1)
            if due > sent:
                pipe = client.pipeline(transaction=False)
                for _ in range(due - sent):
                    kind = "cart_abandoned" if rng.random() < self.entry_share else "page_view"
                    envelope = EventEnvelope(
                        event_id=uuid.uuid4().hex,
                        type=kind,
                        occurred_at=datetime.now(UTC),
                        contact_id=self.first_id + rng.randrange(self.contacts),
                        properties={"published": time.time()},
                    )
                    pipe.xadd(self.stream, encode_event(envelope))  # type: ignore[arg-type]
                pipe.execute()
                sent = due
            time.sleep(max(0.0, started + sent / self.rate - time.perf_counter()))
        client.close()


def _populate(
    runtime: Runtime, keys: JourneyKeys, contacts: int, due: int, rng: random.Random
) -> tuple[int, int, int]:
    """Contacts, both journeys, and one run per contact at the nurture's first wait."""
    now = datetime.now(UTC)
    with runtime.session() as session:
        template = Template(name="bench-cart")
        session.add(template)
        session.flush()
        assert template.id is not None
        session.add(
            TemplateVersion(
                template_id=template.id, version=1, subject="Your cart", html="<p>x</p>"
            )
        )
        store = JourneyStore(session, runtime, keys=keys)
        nurture = store.create(NURTURE).id
        store.create(CART)
    assert nurture is not None
    chunk = 20_000
    first_id = 0
    client = runtime.redis
    for start in range(0, contacts, chunk):
        count = min(chunk, contacts - start)
        rows = [
            {
                "email": f"bench-{start + i}@bench.example.com",
                "timezone": rng.choice(ZONES),
                "status": "active",
                "attributes": {"plan": rng.choice(PLANS)},
                "engagement_score": 50.0,
                "created_at": now,
                "updated_at": now,
            }
            for i in range(count)
        ]
        with runtime.session() as session:
            session.execute(sa.insert(Contact), rows)
            ids = [
                r[0]
                for r in session.execute(
                    sa.select(col(Contact.id))
                    .where(col(Contact.email).in_([row["email"] for row in rows]))
                    .order_by(col(Contact.id))
                )
            ]
            if start == 0:
                first_id = ids[0]
            runs = []
            for offset, contact_id in enumerate(ids):
                index = start + offset
                when = (
                    now - timedelta(seconds=1)
                    if index < due
                    else now + timedelta(days=rng.uniform(1, 30))
                )
                runs.append(
                    {
                        "journey_id": nurture,
                        "version": 1,
                        "contact_id": contact_id,
                        "entry_key": f"bench-{index}",
                        "step": "day1",
                        "seq": 0,
                        "status": "active",
                        "due_at": when,
                        "event": {"event_id": f"bench-{index}", "type": "signup"},
                        "state": {},
                        "entered_at": now,
                        "updated_at": now,
                    }
                )
            session.execute(sa.insert(JourneyRun), runs)
            dues = {
                r[0]: r[1]
                for r in session.execute(
                    sa.select(col(JourneyRun.id), col(JourneyRun.due_at)).where(
                        col(JourneyRun.contact_id).in_(ids)
                    )
                )
            }
        pipe = client.pipeline(transaction=False)
        for run_id, due_at in dues.items():
            moment = due_at if due_at.tzinfo else due_at.replace(tzinfo=UTC)
            pipe.zadd(keys.due, {str(run_id): int(moment.timestamp() * 1000)})
        pipe.execute()
    return nurture, first_id, contacts


def _advance_due(engine: JourneyEngine, runtime: Runtime, keys: JourneyKeys) -> dict[str, Any]:
    rss_before = _rss_mb()
    started, cpu_started = time.perf_counter(), time.process_time()
    runs = 0
    while True:
        claimed = engine.process_due()
        if not claimed:
            break
        runs += claimed
    elapsed = time.perf_counter() - started
    cpu = time.process_time() - cpu_started
    return {
        "runs_advanced": runs,
        "steps": runs * 3,
        "seconds": round(elapsed, 3),
        "runs_per_second": round(runs / elapsed, 1) if elapsed else None,
        "steps_per_second": round(3 * runs / elapsed, 1) if elapsed else None,
        "cpu_seconds": round(cpu, 3),
        "runs_per_cpu_second": round(runs / cpu, 1) if cpu else None,
        "worker_rss_mb_before": rss_before,
        "worker_rss_mb_after": _rss_mb(),
    }


def _paced(
    runtime: Runtime,
    settings: Settings,
    stream: str,
    keys: JourneyKeys,
    *,
    contacts: int,
    first_id: int,
    rate: float,
    seconds: float,
    entry_share: float,
    seed: int,
    send_workers: int = 4,
) -> dict[str, Any]:
    from postwise.delivery.dispatch import submit_send

    total = int(rate * seconds)
    latencies = _Latencies()
    engine = JourneyEngine(
        runtime,
        consumer="bench-paced",
        stream=stream,
        keys=keys,
        block_ms=20,
        submit=latencies.instrument(submit_send),
        send_workers=send_workers,
    )
    engine.ensure_group("0")
    engine.reload()
    producer = multiprocessing.get_context("spawn").Process(
        target=_Producer(
            settings.redis_url, stream, contacts, first_id, rate, total, entry_share, seed
        ),
        name="bench-producer",
    )
    started, cpu_started = time.perf_counter(), time.process_time()
    producer.start()
    try:
        while True:
            engine.step()
            group = runtime.redis.xinfo_groups(stream)[0]
            if not producer.is_alive() and group["lag"] == 0 and group["pending"] == 0:
                break
    finally:
        producer.join(timeout=30)
        engine.close()
    if producer.exitcode != 0:
        raise PostwiseError(f"the benchmark's producer failed (exit code {producer.exitcode})")
    values = [v * 1000 for v in latencies.values]
    return {
        "rate": rate,
        "seconds": round(time.perf_counter() - started, 2),
        # The worker's own CPU time (its send threads included): what the latency would be
        # made of on a machine that gave the worker its core.
        "worker_cpu_seconds": round(time.process_time() - cpu_started, 3),
        "events": total,
        "entry_share": entry_share,
        "send_workers": send_workers,
        "first_sends": len(values),
        "p50_ms": _percentile(values, 0.5),
        "p99_ms": _percentile(values, 0.99),
        "max_ms": round(max(values), 2) if values else None,
    }


def _forget_caps(runtime: Runtime) -> None:
    """Drop the frequency-cap counters of the scratch contacts (a shared Redis keeps them for a
    day: the next run's contacts have the same ids and would all be capped)."""
    from postwise.delivery.frequency import KEY_PREFIX

    with runtime.session() as session:
        ids = [row[0] for row in session.execute(sa.select(col(Contact.id)))]
    for start in range(0, len(ids), 10_000):
        runtime.redis.delete(*[f"{KEY_PREFIX}{cid}" for cid in ids[start : start + 10_000]])


def run_benchmark(
    settings: Settings,
    *,
    contacts: int,
    due: int,
    rate: float,
    latency_seconds: float,
    entry_share: float,
    batch_size: int,
    send_workers: int = 4,
    seed: int = 7,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    say = progress or (lambda _text: None)
    rng = random.Random(seed)
    run_id = uuid.uuid4().hex[:10]
    keys = JourneyKeys(f"postwise:bench:{run_id}:journeys")
    stream = f"postwise:bench:{run_id}:events"
    runtime = Runtime(settings)
    try:
        say("preparing the database")
        runtime.migrate()
        say(f"population: {contacts} contacts inside the nurture journey, {due} of them due")
        started = time.perf_counter()
        nurture, first_id, _ = _populate(runtime, keys, contacts, due, rng)
        populated = round(time.perf_counter() - started, 1)
        due_index_bytes = int(runtime.redis.memory_usage(keys.due) or 0)
        say("due advance")
        engine = JourneyEngine(
            runtime, consumer="bench-due", stream=stream, keys=keys, due_batch_size=batch_size
        )
        engine.reload()
        try:
            advance = _advance_due(engine, runtime, keys)
        finally:
            engine.close()
        counters = read_journey_stats(runtime.redis, keys, [nurture])[nurture]
        say(f"latency: {rate:g} events/s for {latency_seconds:g} s")
        _forget_caps(runtime)
        latency = _paced(
            runtime,
            settings,
            stream,
            keys,
            contacts=contacts,
            first_id=first_id,
            rate=rate,
            seconds=latency_seconds,
            entry_share=entry_share,
            seed=rng.randrange(2**32),
            send_workers=send_workers,
        )
        with runtime.session() as session:
            waiting = session.execute(
                sa.select(sa.func.count())
                .select_from(JourneyRun)
                .where(col(JourneyRun.status) == "active")
            ).scalar_one()
        return {
            "benchmark": "journeys",
            "database": runtime.engine.dialect.name,
            "redis": settings.redis_url.split("@")[-1],
            "contacts_inside": contacts,
            "populate_seconds": populated,
            "runs_waiting_after": int(waiting),
            "due_index_bytes": due_index_bytes,
            "due_index_bytes_per_waiting_run": round(due_index_bytes / contacts, 1),
            "due_batch_size": batch_size,
            "due_advance": advance,
            "nurture_counters": counters,
            "latency": latency,
            "load_average": os.getloadavg(),
        }
    finally:
        client = runtime.redis
        client.delete(stream)
        for key in client.scan_iter(match=f"{keys.namespace}:*", count=1000):
            client.delete(key)
        delete_scratch_jobs(runtime)
        _forget_caps(runtime)
        runtime.close()


@click.command("journeys")
@click.option("--contacts", default=1_000_000, show_default=True, help="Contacts inside.")
@click.option("--due", default=100_000, show_default=True, help="Of them, waits already over.")
@click.option("--rate", default=1000.0, show_default=True, help="Events/s in the latency phase.")
@click.option("--latency-seconds", default=10.0, show_default=True)
@click.option("--entry-share", default=0.05, show_default=True, help="Share of entry events.")
@click.option("--batch-size", default=1000, show_default=True, help="Due runs per batch.")
@click.option("--send-workers", default=4, show_default=True, help="Send threads (latency).")
@click.option(
    "--database-url",
    default="",
    help="Scratch database to use (it gets bench data); default: a temporary SQLite file.",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def bench_journeys(
    ctx: click.Context,
    *,
    contacts: int,
    due: int,
    rate: float,
    latency_seconds: float,
    entry_share: float,
    batch_size: int,
    send_workers: int,
    database_url: str,
    as_json: bool,
) -> None:
    """Journeys: due runs advanced per second with N contacts inside, event-to-send latency."""
    root = ctx.find_root()
    base = load_settings(config_file=root.obj.get("config_file") if root.obj else None)
    with tempfile.TemporaryDirectory(prefix="postwise-bench-journeys-") as scratch:
        settings = base.model_copy(
            update={
                "data_dir": Path(scratch),
                "database_url": database_url or f"sqlite:///{Path(scratch) / 'bench.sqlite3'}",
            }
        )
        result = run_benchmark(
            settings,
            contacts=contacts,
            due=min(due, contacts),
            rate=rate,
            latency_seconds=latency_seconds,
            entry_share=entry_share,
            batch_size=batch_size,
            send_workers=send_workers,
            progress=None if as_json else lambda text: click.echo(text, err=True),
        )
    if as_json:
        emit_json(result)
        return
    click.echo(json.dumps(result, indent=2))
