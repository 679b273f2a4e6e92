"""Recovery in seconds, with the default lease: a killed worker, a stopped worker, a dead
scheduler.

Real ``postwise worker`` processes against real Redis and the test's database, sending to the
fault-injecting SMTP server in this process. ``delivery_lease_seconds`` keeps its default (ten
minutes): nothing here may wait for a lease to run out.
"""

from __future__ import annotations

import functools
import os
import shutil
import signal
import socket
import subprocess
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from delivery_helpers import add_campaign, add_contacts, add_template, statuses
from worker_procs import received, start_worker, stop_all, wait_for, worker_env

from postwise.delivery.dispatch import dispatch_campaign, submit_send
from postwise.delivery.liveness import ALIVE_SECONDS
from postwise.delivery.requests import SendRequest
from postwise.runtime import Runtime
from postwise.testing.smtp import FaultySmtpServer

pytestmark = [pytest.mark.slow, pytest.mark.redis]

_FINAL = {"accepted", "dead", "bounced", "skipped"}
OUTAGE_SECONDS = float(os.environ.get("POSTWISE_TEST_REDIS_OUTAGE", "30"))


def _runtime(make_settings: Any, real_redis_url: str, server: FaultySmtpServer) -> Runtime:
    return Runtime(
        make_settings(
            redis_url=real_redis_url,
            smtp_host="127.0.0.1",
            smtp_port=server.port,
            smtp_starttls="off",
            smtp_timeout=5.0,
            frequency_cap="off",
            batch_size=100,
        )
    )


def _settled(runtime: Runtime, campaign: int) -> bool:
    return set(statuses(runtime, campaign_id=campaign).values()) <= _FINAL


def test_a_killed_workers_batch_is_finished_by_another_within_seconds(
    make_settings: Any, real_redis_url: str, smtp_server: FaultySmtpServer, tmp_path: Path
) -> None:
    runtime = _runtime(make_settings, real_redis_url, smtp_server)
    workers = []
    try:
        add_contacts(runtime, 200)
        campaign = add_campaign(runtime, add_template(runtime))
        assert dispatch_campaign(runtime, campaign).batches == 2
        smtp_server.slow_replies(0.02, count=None, command="DATA")
        env = worker_env(runtime.settings, smtp_server.port)
        log = tmp_path / "workers.log"
        workers = [start_worker(env, tmp_path, log=log) for _ in range(2)]
        assert wait_for(lambda: len(smtp_server.accepted) >= 40, timeout=60), log.read_text()
        os.kill(workers[0].pid, signal.SIGKILL)
        workers[0].wait(10)
        killed_at = time.monotonic()
        assert wait_for(lambda: _settled(runtime, campaign), timeout=60), log.read_text()
        recovered_in = time.monotonic() - killed_at
        # The heartbeat lapses, the next sweep fences and recovers: seconds, not the lease.
        assert recovered_in < ALIVE_SECONDS + 20
        copies = received(smtp_server)
        assert set(copies.values()) == {1}, "a message was sent twice"
        rows = statuses(runtime, campaign_id=campaign)
        outcome = Counter(rows.values())
        # In doubt: at most the message being transmitted on each lane of the killed worker.
        assert outcome["dead"] <= runtime.settings.delivery_concurrency
        accepted = {m for m, s in rows.items() if s == "accepted"}
        assert accepted <= set(copies)
        assert set(copies) - accepted <= {m for m, s in rows.items() if s == "dead"}
        assert outcome["accepted"] + outcome["dead"] == 200
    finally:
        stop_all(workers)
        runtime.close()


def test_a_worker_stops_within_seconds_of_sigterm_with_nothing_in_doubt(
    make_settings: Any, real_redis_url: str, smtp_server: FaultySmtpServer, tmp_path: Path
) -> None:
    runtime = _runtime(make_settings, real_redis_url, smtp_server)
    workers = []
    try:
        add_contacts(runtime, 300)
        campaign = add_campaign(runtime, add_template(runtime))
        dispatch_campaign(runtime, campaign)
        # 50 ms per message: a batch of 100 takes seconds, and the worker is mid-batch.
        smtp_server.slow_replies(0.05, count=None, command="DATA")
        env = worker_env(runtime.settings, smtp_server.port)
        log = tmp_path / "worker.log"
        workers.append(start_worker(env, tmp_path, log=log))
        assert wait_for(lambda: len(smtp_server.accepted) >= 20, timeout=60), log.read_text()
        sent = time.monotonic()
        workers[0].send_signal(signal.SIGTERM)
        workers[0].wait(30)
        took = time.monotonic() - sent
        assert took < 10, f"the worker took {took:.1f}s to stop"
        assert workers[0].returncode == 0, log.read_text()
        rows = statuses(runtime, campaign_id=campaign)
        assert "dead" not in rows.values(), "a message was left in doubt"
        assert "sending" not in rows.values(), "a message was left claimed"
        smtp_server.clear_faults()
        workers.append(start_worker(env, tmp_path, burst=True, log=log))
        workers[1].wait(120)
        assert _settled(runtime, campaign)
        assert set(statuses(runtime, campaign_id=campaign).values()) == {"accepted"}
        assert set(received(smtp_server).values()) == {1}
    finally:
        stop_all(workers)
        runtime.close()


def test_a_scheduled_message_goes_out_on_time_after_a_worker_is_killed(
    make_settings: Any, real_redis_url: str, smtp_server: FaultySmtpServer, tmp_path: Path
) -> None:
    """No scheduler lock to outlive its holder: whichever worker is alive moves the job."""
    runtime = _runtime(make_settings, real_redis_url, smtp_server)
    workers = []
    try:
        (contact,) = add_contacts(runtime, 1)
        template = add_template(runtime)
        env = worker_env(runtime.settings, smtp_server.port)
        log = tmp_path / "workers.log"
        workers = [start_worker(env, tmp_path, log=log) for _ in range(2)]
        assert wait_for(
            lambda: len(runtime.redis.keys("postwise:delivery:alive:*")) == 2, timeout=60
        ), log.read_text()
        os.kill(workers[0].pid, signal.SIGKILL)
        workers[0].wait(10)
        due = datetime.now(UTC) + timedelta(seconds=3)
        request = SendRequest(
            contact_id=contact, template_id=template, dedupe_key="later", not_before=due
        )
        message_id = submit_send(runtime, request).message_id
        assert wait_for(lambda: len(smtp_server.accepted) == 1, timeout=30), log.read_text()
        late = datetime.now(UTC) - due
        assert late < timedelta(seconds=3), f"sent {late} after its time"
        assert wait_for(lambda: statuses(runtime)[message_id] == "accepted", timeout=10)
    finally:
        stop_all(workers)
        runtime.close()


def _accepted_at_least(server: FaultySmtpServer, count: int) -> bool:
    return len(server.accepted) >= count


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _redis_server(port: int, folder: Path) -> subprocess.Popen[bytes]:
    """A Redis of this test's own (never the shared one), persisting every write."""
    folder.mkdir(exist_ok=True)
    process = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(folder),
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    try:
        assert wait_for(lambda: _pings(client), timeout=20), "redis-server did not start"
    finally:
        client.close()
    return process


def _pings(client: redis.Redis) -> bool:
    try:
        return bool(client.ping())
    except redis.ConnectionError:
        return False


@pytest.mark.skipif(shutil.which("redis-server") is None, reason="needs redis-server")
def test_redis_unreachable_for_30_seconds_loses_nothing_and_sends_nothing_twice(
    make_settings: Any, smtp_server: FaultySmtpServer, tmp_path: Path
) -> None:
    port = _free_port()
    server = _redis_server(port, tmp_path / "redis")
    runtime = Runtime(
        make_settings(
            redis_url=f"redis://127.0.0.1:{port}/0",
            smtp_host="127.0.0.1",
            smtp_port=smtp_server.port,
            smtp_starttls="off",
            smtp_timeout=5.0,
            frequency_cap="off",
            batch_size=100,
        )
    )
    workers = []
    try:
        add_contacts(runtime, 400)
        campaign = add_campaign(runtime, add_template(runtime))
        dispatch_campaign(runtime, campaign)
        smtp_server.slow_replies(0.03, count=None, command="DATA")
        env = worker_env(runtime.settings, smtp_server.port)
        log = tmp_path / "worker.log"
        workers.append(start_worker(env, tmp_path, log=log))
        assert wait_for(lambda: len(smtp_server.accepted) >= 50, timeout=60), log.read_text()
        server.terminate()
        server.wait(20)
        time.sleep(OUTAGE_SECONDS)
        server = _redis_server(port, tmp_path / "redis")
        back = time.monotonic()
        assert wait_for(lambda: _settled(runtime, campaign), timeout=90), log.read_text()
        recovered_in = time.monotonic() - back
        assert recovered_in < 60
        copies = received(smtp_server)
        assert set(copies.values()) == {1}, "a message was sent twice"
        rows = statuses(runtime, campaign_id=campaign)
        accepted = {m for m, s in rows.items() if s == "accepted"}
        doubtful = {m for m, s in rows.items() if s == "dead"}
        assert accepted <= set(copies) and set(copies) - accepted <= doubtful
        assert len(doubtful) <= runtime.settings.delivery_concurrency
        assert len(accepted) + len(doubtful) == 400
        text = log.read_text()
        # Said clearly, once: what is waiting for Redis, and that it works again.
        assert "Redis unreachable" in text or "unreachable" in text, text
    finally:
        stop_all(workers)
        runtime.close()
        server.terminate()
        server.wait(20)


def test_database_connections_dropped_during_a_send_lose_nothing(
    make_settings: Any, real_redis_url: str, smtp_server: FaultySmtpServer, tmp_path: Path
) -> None:
    """What a PostgreSQL restart does to a worker, without restarting the shared server: every
    connection to this test's own database is terminated, twice, mid-send."""
    runtime = _runtime(make_settings, real_redis_url, smtp_server)
    if runtime.engine.dialect.name != "postgresql":
        pytest.skip("needs PostgreSQL")
    workers = []
    try:
        add_contacts(runtime, 300)
        campaign = add_campaign(runtime, add_template(runtime))
        dispatch_campaign(runtime, campaign)
        smtp_server.slow_replies(0.02, count=None, command="DATA")
        env = worker_env(runtime.settings, smtp_server.port)
        log = tmp_path / "worker.log"
        workers.append(start_worker(env, tmp_path, log=log))
        for threshold in (40, 150):
            reached = functools.partial(_accepted_at_least, smtp_server, threshold)
            assert wait_for(reached, timeout=60)
            with runtime.engine.connect() as connection:
                dropped = connection.execute(
                    sa.text(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                    )
                ).scalar_one()
            assert dropped >= 1
        assert wait_for(lambda: _settled(runtime, campaign), timeout=90), log.read_text()
        assert set(received(smtp_server).values()) == {1}
        assert set(statuses(runtime, campaign_id=campaign).values()) == {"accepted"}
    finally:
        stop_all(workers)
        runtime.close()
