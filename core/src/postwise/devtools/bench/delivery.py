"""``postwise bench send``: end-to-end sending throughput on this machine.

What is measured is the real path: a campaign over N seeded contacts is dispatched (gate,
frequency cap off, ledger rows, ``enqueue_many``) and delivered by RQ ``SimpleWorker``
processes that render a personalised message per contact (merge tags, a conditional block, a
recommendation block, tracked links), build the MIME, DKIM-sign it (RSA-2048 through
``cryptography``) and send it over pooled SMTP connections to a local sink running in a process
of its own (so it does not share the workers' GIL). The sink speaks full SMTP but discards the
messages unless ``--outbox`` is given (a million .eml files would measure the disk).

With a real Redis (``POSTWISE_REDIS_URL``) the workers are separate processes; with the
embedded stand-in they cannot be, and one in-process worker runs. The database is
``POSTWISE_DATABASE_URL`` (use a database made for benchmarking: contacts
``bench-<i>@bench.example`` are added to it) or a fresh SQLite file under ``data_dir/bench``.

Reported: messages and messages/hour (from the start of dispatch to the last message
recorded), dispatch time, per-batch latency percentiles (a job's run time, and enqueue to
finish), each worker's peak RSS and CPU time, the sink's CPU time, and CPU milliseconds per
message over all processes: the figure that sizes a deployment.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import resource
import shutil
import signal
import statistics
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import sqlalchemy as sa
from aiosmtpd.smtp import SMTP, Envelope, Session
from sqlmodel import select

from postwise.cli.common import emit_json, get_runtime
from postwise.db.models import Contact, Message, Segment, Template, as_utc, utcnow
from postwise.delivery.atomic import supports_lua
from postwise.delivery.campaigns import create_campaign
from postwise.delivery.dispatch import dispatch_campaign
from postwise.delivery.dkim import generate_key
from postwise.delivery.jobs import bind_runtime
from postwise.delivery.queue import queue_name
from postwise.delivery.services import DEFAULT_RECOMMENDER, services_for
from postwise.delivery.templates import create_template
from postwise.delivery.worker import drain, run_worker
from postwise.devtools.sink import BackgroundSmtpServer, SmtpSink
from postwise.errors import DeliveryError, UnknownComponentError
from postwise.plugins import RECOMMENDERS
from postwise.recommend.base import Interaction, Item
from postwise.runtime import Runtime
from postwise.settings import Settings

__all__ = ["bench_send", "run_bench"]

log = logging.getLogger(__name__)

BENCH_TEMPLATE = "postwise-bench"
_DOMAIN = "bench.example"
_SUBJECT = "{{ first_name }}, {{ count }} new picks for {{ city | default('you') }}"
_HTML = """<html><head><style>
  body { font-family: Georgia, serif; color: #1a1a1a; line-height: 1.5; }
  h1 { font-size: 24px; color: #0b5394; }
  p { margin: 0 0 12px; }
  .card { border: 1px solid #ddd; padding: 10px; margin: 8px 0; }
  .card a { color: #cc0000; text-decoration: none; }
  .pro { background: #fff7e0; padding: 8px; }
  .footer { font-size: 11px; color: #777; }
</style></head><body>
<h1>Good morning {{ first_name }} {{ last_name }}</h1>
<p>We picked {{ count }} stories for readers in {{ city }} this week, based on what you read.</p>
{% if plan == "pro" %}<p class="pro">Your Pro plan renews on {{ renews }}: thank you!</p>
{% else %}<p>Upgrade to Pro to read without limits:
<a href="https://www.example.com/pro">see plans</a>.</p>{% endif %}
{% for item in recommendations(3) %}
<div class="card"><a href="{{ item.url }}">{{ item.title }}</a></div>
{% endfor %}
<p>Lorem ipsum dolor sit amet, consectetur adipiscing elit. Sed do eiusmod tempor incididunt
ut labore et dolore magna aliqua. Ut enim ad minim veniam, quis nostrud exercitation ullamco
laboris nisi ut aliquip ex ea commodo consequat. Duis aute irure dolor in reprehenderit.</p>
<p>Read online: <a href="https://www.example.com/issues/latest">this week's issue</a> &middot;
<a href="https://www.example.com/archive">archive</a></p>
<p><img src="/img/header.png" alt=""></p>
<p class="footer"><a href="{{ unsubscribe_url }}">Unsubscribe</a> &middot; {{ postal_address }}</p>
</body></html>
"""
_CITIES = ["Berlin", "Lisbon", "Nairobi", "Osaka", "Toronto", "Lyon", "Austin", "Kraków", "Zürich"]
_CATALOGUE = [(f"story-{i}", f"Story number {i}") for i in range(40)]


def _percentiles(values: Sequence[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "max": 0.0}
    ordered = sorted(values)
    if len(ordered) == 1:
        only = round(ordered[0] * 1000, 1)
        return {"p50": only, "p95": only, "p99": only, "max": only}
    cuts = statistics.quantiles(ordered, n=100, method="inclusive")
    return {
        "p50": round(cuts[49] * 1000, 1),
        "p95": round(cuts[94] * 1000, 1),
        "p99": round(cuts[98] * 1000, 1),
        "max": round(ordered[-1] * 1000, 1),
    }


def _rusage() -> dict[str, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {
        "peak_rss_mb": round(usage.ru_maxrss / 1024, 1),
        "cpu_seconds": round(usage.ru_utime + usage.ru_stime, 2),
    }


class _DiscardingSink(BackgroundSmtpServer):
    """Full SMTP on loopback that counts each message and keeps none of them."""

    def __init__(self, counter: Any) -> None:
        super().__init__()
        self.counter = counter

    def create_protocol(self, loop: asyncio.AbstractEventLoop) -> SMTP:
        return SMTP(_CountingHandler(self.counter), hostname="postwise-bench-sink", loop=loop)


class _CountingHandler:
    def __init__(self, counter: Any) -> None:
        self.counter = counter

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self.counter.get_lock():
            self.counter.value += 1
            number = self.counter.value
        return f"250 2.0.0 OK: queued as bench-{number}"


def _sink_process(outbox: str | None, shared: dict[str, Any]) -> None:
    """A child process serving SMTP until told to stop."""
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    sink: BackgroundSmtpServer
    sink = _DiscardingSink(shared["count"]) if outbox is None else SmtpSink(Path(outbox))
    sink.start()
    shared["port"].value = sink.port
    shared["ready"].set()
    shared["stop"].wait()
    sink.stop()
    if isinstance(sink, SmtpSink):
        shared["count"].value = sink.count
    shared["stats"].put({"role": "sink", **_rusage()})


def _worker_process(settings_json: str, ready: Any, stats: Any) -> None:
    """A child process running one delivery worker until SIGTERM."""

    logging.basicConfig(level=logging.WARNING)
    for name in ("rq.worker", "rq.scheduler", "rq.queue", "rq.job"):
        logging.getLogger(name).setLevel(logging.WARNING)
    settings = Settings.model_validate_json(settings_json)
    runtime = Runtime(settings)
    bind_runtime(runtime)
    _fit_recommender(runtime)
    services_for(runtime).composer  # noqa: B018 - DKIM key and template cache before timing
    ready.set()
    try:
        run_worker(runtime, burst=False, name=f"bench-{os.getpid()}")
    finally:
        stats.put({"role": "worker", "pid": os.getpid(), **_rusage()})
        runtime.close()


def _fit_recommender(runtime: Any) -> None:

    try:
        factory = runtime.component(RECOMMENDERS, DEFAULT_RECOMMENDER)
    except UnknownComponentError:
        return
    items = [Item(id=k, title=t, url=f"https://www.example.com/{k}") for k, t in _CATALOGUE]
    interactions = [
        Interaction(contact_id=(i * 7919) % 5000, item_id=_CATALOGUE[(i * 31) % 40][0])
        for i in range(5000)
    ]
    recommender = factory()
    recommender.fit(interactions, items)
    services_for(runtime).use_recommender(recommender)


def _bench_settings(
    settings: Settings, bench_dir: Path, *, dkim: bool, batch_size: int
) -> Settings:
    updates: dict[str, Any] = {
        "frequency_cap": "off",
        "rate_limits": {},
        "provider": "smtp",
        "smtp_host": "127.0.0.1",
        "smtp_starttls": "off",
        "smtp_implicit_tls": False,
        "smtp_username": "",
        "batch_size": batch_size,
        "sender": f"postwise bench <news@{_DOMAIN}>",
        "cdn_base_url": "https://cdn.example.com",
        "log_level": "WARNING",
    }
    if not settings.database_url:
        path = bench_dir / "bench.sqlite3"
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        updates["database_url"] = f"sqlite:///{path.resolve()}"
    if dkim:
        key_path = bench_dir / "dkim-rsa.pem"
        if not key_path.exists():
            key_path.write_bytes(generate_key("rsa-sha256").private_key_pem)
        updates.update(
            dkim_domain=_DOMAIN,
            dkim_selector="bench",
            dkim_algorithm="rsa-sha256",
            dkim_private_key_path=key_path,
        )
    else:
        updates.update(dkim_domain="", dkim_private_key_path=None)
    return settings.model_copy(update=updates)


def _seed(runtime: Any, messages: int) -> int:
    """N bench contacts (added to what earlier runs left), a template and a campaign."""

    table = Contact.__table__  # type: ignore[attr-defined]
    with runtime.engine.begin() as connection:
        have = connection.execute(
            sa.select(sa.func.count()).where(table.c.email.like(f"bench-%@{_DOMAIN}"))
        ).scalar_one()
    now = time.time()
    stamp = utcnow()
    for start in range(int(have), messages, 10_000):
        rows = [
            {
                "email": f"bench-{i}@{_DOMAIN}",
                "first_name": f"Reader{i}",
                "last_name": f"Number{i % 997}",
                "timezone": "UTC",
                "country": "US",
                "status": "active",
                "attributes": {
                    "bench": i,
                    "city": _CITIES[i % len(_CITIES)],
                    "plan": "pro" if i % 5 == 0 else "free",
                    "count": 3 + i % 4,
                    "renews": f"2027-0{1 + i % 9}-1{i % 10}",
                },
                "engagement_score": 0.0,
                "created_at": stamp,
                "updated_at": stamp,
            }
            for i in range(start, min(messages, start + 10_000))
        ]
        with runtime.engine.begin() as connection:
            connection.execute(table.insert(), rows)
    log.info("seeded contacts in %.1fs", time.time() - now)
    with runtime.session() as session:
        template = session.exec(select(Template).where(Template.name == BENCH_TEMPLATE)).first()
        if template is None:
            template = create_template(
                session,
                runtime.settings,
                name=BENCH_TEMPLATE,
                subject=_SUBJECT,
                html=_HTML,
                variables=["city", "plan", "count", "renews"],
            )
        # Contacts are seeded in order, so the first N bench contacts are an id range: the
        # audience query walks the primary key and stops at its end.
        bounds = session.execute(
            sa.select(sa.func.min(table.c.id), sa.func.max(table.c.id)).where(
                table.c.email.in_([f"bench-0@{_DOMAIN}", f"bench-{messages - 1}@{_DOMAIN}"])
            )
        ).one()
        rules = {
            "all": [
                {"field": "id", "op": "gte", "value": bounds[0]},
                {"field": "id", "op": "lte", "value": bounds[1]},
                {"field": "email", "op": "ends_with", "value": f"@{_DOMAIN}"},
            ]
        }
        name = f"postwise-bench-{messages}"
        segment = session.exec(select(Segment).where(Segment.name == name)).first()
        if segment is None:
            segment = Segment(name=name, kind="rules")
        segment.rules = rules
        session.add(segment)
        session.flush()
        assert template.id is not None
        campaign = create_campaign(
            session,
            name=f"bench {messages} {time.strftime('%H:%M:%S')}",
            template=template.id,
            segment=name,
        )
        assert campaign.id is not None
        return campaign.id


def run_bench(
    settings: Settings,
    *,
    messages: int,
    workers: int = 2,
    batch_size: int = 500,
    dkim: bool = True,
    outbox: Path | None = None,
    timeout: float = 3600.0,
) -> dict[str, Any]:
    """Run the benchmark and return its figures (see the module docstring)."""

    bench_dir = Path(settings.data_dir) / "bench"
    bench_dir.mkdir(parents=True, exist_ok=True)
    if outbox is not None:
        shutil.rmtree(outbox, ignore_errors=True)
        outbox.mkdir(parents=True)
    config = _bench_settings(settings, bench_dir, dkim=dkim, batch_size=batch_size)
    ctx = multiprocessing.get_context("spawn")
    stats = ctx.Queue()
    shared: dict[str, Any] = {
        "port": ctx.Value("i", 0),
        "count": ctx.Value("q", 0),
        "ready": ctx.Event(),
        "stop": ctx.Event(),
        "stats": stats,
    }
    sink = ctx.Process(
        target=_sink_process,
        args=(str(outbox) if outbox else None, shared),
        name="postwise-bench-sink",
    )
    sink.start()
    if not shared["ready"].wait(60):
        raise DeliveryError("the benchmark's SMTP sink did not start within 60 s")
    config = config.model_copy(update={"smtp_port": shared["port"].value})
    runtime = Runtime(config)
    procs: list[Any] = []
    try:
        runtime.migrate()
        campaign_id = _seed(runtime, messages)
        in_process = not supports_lua(runtime.redis)
        if in_process:
            _fit_recommender(runtime)
        else:
            for queue in (queue_name("smtp"), "default"):
                runtime.redis.delete(f"rq:queue:{queue}")
            for _ in range(workers):
                ready = ctx.Event()
                proc = ctx.Process(
                    target=_worker_process,
                    args=(config.model_dump_json(), ready, stats),
                    name="postwise-bench-worker",
                )
                proc.start()
                procs.append((proc, ready))
            for _, ready in procs:
                ready.wait(120)
        cpu_before = _rusage()["cpu_seconds"]
        started_at = datetime.now(UTC)
        started = time.monotonic()
        report = dispatch_campaign(runtime, campaign_id)
        dispatched = time.monotonic()
        if in_process:
            drain(runtime)
        else:
            _wait_until_final(runtime, campaign_id, deadline=started + timeout)
        finished = time.monotonic()
        main_cpu = _rusage()["cpu_seconds"] - cpu_before
        counts = _ledger_counts(runtime, campaign_id)
        batch_times, queue_times = _job_latencies(runtime, queue_name("smtp"), since=started_at)
    finally:
        for proc, _ in procs:
            if proc.is_alive():
                os.kill(proc.pid, signal.SIGTERM)
        for proc, _ in procs:
            proc.join(60)
        shared["stop"].set()
        sink.join(60)
        runtime.close()
    reports = [stats.get(timeout=5) for _ in range(len(procs) + 1)]
    worker_stats = [r for r in reports if r["role"] == "worker"]
    sink_stats = next(r for r in reports if r["role"] == "sink")
    sent = counts.get("accepted", 0)
    seconds = finished - started
    cpu_total = main_cpu + sink_stats["cpu_seconds"] + sum(w["cpu_seconds"] for w in worker_stats)
    return {
        "messages": messages,
        "sent": sent,
        "failed": counts.get("bounced", 0) + counts.get("dead", 0),
        "unfinished": sum(counts.get(s, 0) for s in ("queued", "sending", "retrying")),
        "sink_received": int(shared["count"].value),
        "workers": workers if not in_process else "in-process",
        "batch_size": batch_size,
        "batches": report.batches,
        "dkim": "rsa-sha256" if dkim else None,
        "seconds": round(seconds, 2),
        "dispatch_seconds": round(dispatched - started, 2),
        "messages_per_second": round(sent / seconds, 1) if seconds else 0.0,
        "messages_per_hour": round(sent / seconds * 3600) if seconds else 0,
        "batch_latency_ms": _percentiles(batch_times),
        "enqueue_to_done_ms": _percentiles(queue_times),
        "worker_peak_rss_mb": [w["peak_rss_mb"] for w in worker_stats],
        "worker_cpu_seconds": [w["cpu_seconds"] for w in worker_stats],
        "sink_cpu_seconds": sink_stats["cpu_seconds"],
        "dispatcher_cpu_seconds": round(main_cpu, 2),
        "dispatcher_peak_rss_mb": _rusage()["peak_rss_mb"],
        "cpu_ms_per_message": round(cpu_total / sent * 1000, 3) if sent else None,
        "redis": "real" if not in_process else "embedded",
        "database": config.resolved_database_url.split("://", 1)[0],
        "cpus": os.cpu_count(),
    }


def _ledger_counts(runtime: Any, campaign_id: int) -> dict[str, int]:

    table = Message.__table__  # type: ignore[attr-defined]
    with runtime.engine.connect() as connection:
        rows = connection.execute(
            sa.select(table.c.status, sa.func.count())
            .where(table.c.campaign_id == campaign_id)
            .group_by(table.c.status)
        ).all()
    return {str(status): int(n) for status, n in rows}


def _wait_until_final(runtime: Any, campaign_id: int, *, deadline: float) -> None:

    table = Message.__table__  # type: ignore[attr-defined]
    query = sa.select(sa.func.count()).where(
        table.c.campaign_id == campaign_id,
        table.c.status.in_(("queued", "sending", "retrying")),
    )
    while time.monotonic() < deadline:
        with runtime.engine.connect() as connection:
            if connection.execute(query).scalar_one() == 0:
                return
        time.sleep(0.25)
    log.warning("benchmark timed out with messages still unfinished")


def _job_latencies(runtime: Any, queue: str, *, since: datetime) -> tuple[list[float], list[float]]:
    """Run time and enqueue-to-finish time of each send job of this run that finished."""
    from rq import Queue
    from rq.job import Job
    from rq.serializers import JSONSerializer

    registry = Queue(queue, connection=runtime.redis, serializer=JSONSerializer)
    ids = registry.finished_job_registry.get_job_ids()
    runs: list[float] = []
    waits: list[float] = []
    for job in Job.fetch_many(ids, connection=runtime.redis, serializer=JSONSerializer):
        if job is None or job.started_at is None or job.ended_at is None:
            continue
        if job.enqueued_at is None or as_utc(job.enqueued_at) < since:
            continue
        runs.append((job.ended_at - job.started_at).total_seconds())
        waits.append((job.ended_at - job.enqueued_at).total_seconds())
    return runs, waits


@click.command(name="send")
@click.option("--messages", "-n", default=10_000, show_default=True, type=click.IntRange(1))
@click.option(
    "--workers",
    "-w",
    default=2,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Worker processes (real Redis only).",
)
@click.option("--batch-size", default=500, show_default=True, type=click.IntRange(1, 10_000))
@click.option("--dkim/--no-dkim", default=True, show_default=True)
@click.option(
    "--outbox",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Keep every message as an .eml file here (default: the sink discards them).",
)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def bench_send(
    ctx: click.Context,
    *,
    messages: int,
    workers: int,
    batch_size: int,
    dkim: bool,
    outbox: Path | None,
    as_json: bool,
) -> None:
    """End-to-end sending throughput: dispatch, RQ workers, render, DKIM, SMTP."""

    for name in ("mail.log", "rq.worker", "rq.queue", "rq.job", "rq.scheduler"):
        logging.getLogger(name).setLevel(logging.WARNING)
    settings = get_runtime(ctx).settings
    result = run_bench(
        settings,
        messages=messages,
        workers=workers,
        batch_size=batch_size,
        dkim=dkim,
        outbox=outbox,
    )
    if as_json:
        emit_json(result)
        return
    click.echo(
        f"{result['sent']:,} of {result['messages']:,} messages in {result['seconds']}s "
        f"({result['messages_per_hour']:,}/hour; dispatch {result['dispatch_seconds']}s)"
    )
    latency = result["batch_latency_ms"]
    click.echo(
        f"batches of {batch_size}: p50 {latency['p50']} ms, p95 {latency['p95']} ms, "
        f"p99 {latency['p99']} ms"
    )
    click.echo(
        f"workers: {result['workers']}, peak RSS {result['worker_peak_rss_mb']} MB, "
        f"CPU {result['worker_cpu_seconds']} s; sink CPU {result['sink_cpu_seconds']} s; "
        f"{result['cpu_ms_per_message']} CPU ms per message in all"
    )
