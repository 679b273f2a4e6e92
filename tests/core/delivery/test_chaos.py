"""The chaos test: a campaign of 10,000 messages through worker kills and a misbehaving relay.

Three real ``postwise worker`` processes send a campaign (dispatched by one of them) to the
fault-injecting SMTP server of this test, on loopback, while a kill schedule SIGKILLs one worker
every few seconds (the one dispatching first) and starts a replacement, and the relay answers
421 and 451 at random, refuses one domain with 550, hangs up after the 354, after the content
and after accepting, answers late and answers garbage. Default lease (ten minutes): nothing may
wait for it. Then, message by message:

* nothing is lost: every message ends accepted, bounced or dead-lettered with its reason;
* nothing is delivered twice outside the in-doubt set (a message the ledger says may have been
  handed over when its worker died or its answer was lost; it is never sent again);
* the ledger and the relay agree: accepted ⇔ received, except in doubt (either);
* everything has settled within two minutes of the last fault.

The figures are printed (``-s``) and recorded in docs/benchmarks.md.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from delivery_helpers import add_campaign, add_template, statuses
from sqlmodel import col
from worker_procs import received, start_worker, stop_all, wait_for, worker_env

from postwise.db.models import Contact, Message
from postwise.delivery.outcomes import IN_DOUBT_PREFIX
from postwise.delivery.queue import enqueue_dispatch
from postwise.delivery.recovery import stalls
from postwise.runtime import Runtime
from postwise.testing.smtp import ChaosRates, FaultySmtpServer

pytestmark = [pytest.mark.slow, pytest.mark.redis]

MESSAGES = int(os.environ.get("POSTWISE_CHAOS_MESSAGES", "10000"))
KILLS = int(os.environ.get("POSTWISE_CHAOS_KILLS", "10"))
WORKERS = 3
#: A kill every few seconds, of a worker that has been up long enough to be doing something.
KILL_EVERY = float(os.environ.get("POSTWISE_CHAOS_KILL_EVERY", "5"))
REFUSED_DOMAIN = "refused.example"
RATES = ChaosRates(
    shutdown=0.004,
    greylist=0.004,
    drop_after_354=0.001,
    drop_after_content=0.001,
    drop_after_accept=0.001,
    late=0.003,
    late_seconds=0.4,
    garbage=0.0005,
)
SETTLE_LIMIT = 120.0
_FINAL = {"accepted", "bounced", "dead", "skipped"}


def _contacts(runtime: Runtime, count: int) -> None:
    with runtime.session() as session:
        session.add_all(
            Contact(
                email=f"c{i}@{REFUSED_DOMAIN if i % 97 == 0 else 'example.org'}",
                first_name=f"Name{i}",
            )
            for i in range(count)
        )


def _counts(runtime: Runtime, campaign: int) -> Counter[str]:
    return Counter(statuses(runtime, campaign_id=campaign).values())


def test_a_campaign_survives_worker_kills_and_a_misbehaving_relay(
    make_settings: Any, real_redis_url: str, smtp_server: FaultySmtpServer, tmp_path: Path
) -> None:
    settings = make_settings(
        redis_url=real_redis_url,
        smtp_host="127.0.0.1",
        smtp_port=smtp_server.port,
        smtp_starttls="off",
        smtp_timeout=5.0,
        frequency_cap="off",
        batch_size=200,
        max_attempts=30,
        retry_base_seconds=1.0,
        retry_max_seconds=4.0,
    )
    runtime = Runtime(settings)
    rng = random.Random(18)
    workers: dict[str, subprocess.Popen[bytes]] = {}
    env = worker_env(settings, smtp_server.port, POSTWISE_MAX_ATTEMPTS="30")
    log = tmp_path / "workers.log"
    generation = 0
    born: dict[str, float] = {}

    def spawn() -> None:
        nonlocal generation
        generation += 1
        name = f"chaos-{generation}"
        workers[name] = start_worker(env, tmp_path, log=log, name=name)
        born[name] = time.monotonic()

    started = time.monotonic()
    try:
        _contacts(runtime, MESSAGES)
        campaign = add_campaign(runtime, add_template(runtime))
        smtp_server.reject_recipients(f"*@{REFUSED_DOMAIN}")
        smtp_server.chaos(RATES, seed=18)
        enqueue_dispatch(runtime, campaign)
        for _ in range(WORKERS):
            spawn()
        kills = 0

        def kill(victim: str) -> None:
            nonlocal kills
            process = workers.pop(victim)
            os.kill(process.pid, signal.SIGKILL)
            process.wait(10)
            kills += 1
            spawn()

        # The dispatcher first, once it has written part of the audience.
        deadline = time.monotonic() + 120
        dispatcher = None
        while dispatcher is None:
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
            if statuses(runtime, campaign_id=campaign):
                dispatcher = _dispatching_worker(runtime, workers)
        kill(dispatcher)
        while kills < KILLS or len(statuses(runtime, campaign_id=campaign)) < MESSAGES:
            time.sleep(KILL_EVERY)
            assert time.monotonic() - started < 900, "the chaos run took over 15 minutes"
            now = time.monotonic()
            ready = [n for n in sorted(workers) if now - born[n] >= KILL_EVERY] or sorted(workers)
            kill(rng.choice(ready))
        smtp_server.clear_faults()
        smtp_server.reject_recipients(f"*@{REFUSED_DOMAIN}")  # a refusal is no fault
        last_fault = time.monotonic()
        settled = wait_for(
            lambda: set(_counts(runtime, campaign)) <= _FINAL, timeout=SETTLE_LIMIT, step=0.5
        )
        settle_seconds = time.monotonic() - last_fault
        assert settled, (
            f"not settled {SETTLE_LIMIT:.0f}s after the last fault: {_counts(runtime, campaign)}"
        )
        assert kills >= KILLS

        rows = _ledger(runtime, campaign)
        copies = received(smtp_server)
        in_doubt = {
            m
            for m, (s, reason) in rows.items()
            if s == "dead" and reason.startswith(IN_DOUBT_PREFIX)
        }
        accepted = {m for m, (s, _) in rows.items() if s == "accepted"}
        outcome = Counter(s for s, _ in rows.values())
        # Nothing lost: the whole audience has a ledger row, each final with its reason.
        assert len(rows) == MESSAGES
        assert set(outcome) <= _FINAL
        lost = {m for m, (s, reason) in rows.items() if s == "dead" and m not in in_doubt}
        assert not lost, f"dead-lettered without being in doubt: {sorted(lost)[:5]}"
        # Nothing twice outside the in-doubt set (in fact, nothing twice at all).
        twice = {m for m, n in copies.items() if n > 1}
        assert twice <= in_doubt, f"delivered twice: {sorted(twice - in_doubt)[:5]}"
        # The ledger and the relay agree, message by message.
        assert accepted <= set(copies), "recorded as accepted, never received"
        assert set(copies) - accepted <= in_doubt, (
            "received, but recorded as neither sent nor in doubt"
        )
        bounced = {m for m, (s, _) in rows.items() if s == "bounced"}
        assert bounced and not bounced & set(copies)
        assert settle_seconds <= SETTLE_LIMIT
        assert stalls(runtime, campaign_id=campaign) == []
        print(
            f"\nchaos: {MESSAGES} messages, {kills} worker kills (the dispatcher's included), "
            f"relay faults {smtp_server.chaos_counts()}; outcome {dict(outcome)}; in doubt "
            f"{len(in_doubt)} ({len(in_doubt & set(copies))} of them received); received twice "
            f"{len(twice)}; settled {settle_seconds:.1f}s after the last fault; whole run "
            f"{time.monotonic() - started:.0f}s"
        )
    finally:
        stop_all(workers.values())
        runtime.close()


def _ledger(runtime: Runtime, campaign: int) -> dict[str, tuple[str, str]]:
    query = sa.select(col(Message.id), col(Message.status), col(Message.last_error)).where(
        col(Message.campaign_id) == campaign
    )
    with runtime.engine.connect() as connection:
        return {row[0]: (row[1], row[2] or "") for row in connection.execute(query)}


def _dispatching_worker(runtime: Runtime, workers: dict[str, Any]) -> str | None:
    """The name of the worker running the campaign's dispatch job, if one of ours is."""
    for entry in runtime.redis.zrange("rq:wip:default", 0, -1):
        job_id, _, execution_id = _text(entry).partition(":")
        owner = runtime.redis.hget(f"rq:execution:{job_id}:{execution_id}", "worker_name")
        if owner and _text(owner) in workers:
            return _text(owner)
    return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
