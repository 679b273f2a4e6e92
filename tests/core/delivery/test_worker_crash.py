"""A worker killed mid-batch, then restarted, completes the batch without sending anything twice.

This runs real ``postwise worker --burst`` processes against real Redis and the test's database,
sending to a fault-injecting SMTP server in this process that answers each message slowly, so
the first worker is surely in the middle of its batch when it is killed with SIGKILL.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from delivery_helpers import add_campaign, add_contacts, add_template, statuses

from postwise.delivery.dispatch import dispatch_campaign
from postwise.delivery.outcomes import IN_DOUBT_REASON
from postwise.runtime import Runtime
from postwise.testing.smtp import FaultySmtpServer

pytestmark = [pytest.mark.slow, pytest.mark.redis]

LEASE_SECONDS = 3
_LEDGER_ID = re.compile(rb"^X-Postwise-Message-Id: (\w+)", re.M)


def _worker(env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
    code = "from postwise.cli import main; main(['worker', '--burst'])"
    return subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def _wait(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_a_killed_worker_loses_nothing_and_its_successor_duplicates_nothing(
    make_settings: Any, real_redis_url: str, smtp_server: FaultySmtpServer, tmp_path: Path
) -> None:
    overrides: dict[str, Any] = {
        "redis_url": real_redis_url,
        "smtp_host": "127.0.0.1",
        "smtp_port": smtp_server.port,
        "smtp_starttls": "off",
        "frequency_cap": "off",
        "batch_size": 500,
        "delivery_lease_seconds": LEASE_SECONDS,
    }
    settings = make_settings(**overrides)
    runtime = Runtime(settings)
    try:
        contacts = add_contacts(runtime, 120)
        campaign = add_campaign(runtime, add_template(runtime))
        assert dispatch_campaign(runtime, campaign).batches == 1
        # Each message is answered 15 ms late: the single batch takes about two seconds.
        smtp_server.slow_replies(0.015, count=None, command="DATA")
        env = {k: v for k, v in os.environ.items() if not k.startswith("POSTWISE_")}
        env.update(
            POSTWISE_DATA_DIR=str(settings.data_dir),
            POSTWISE_DATABASE_URL=settings.resolved_database_url,
            POSTWISE_REDIS_URL=real_redis_url,
            POSTWISE_SECRET_KEY=settings.secret_key.get_secret_value(),
            POSTWISE_SMTP_PORT=str(smtp_server.port),
            POSTWISE_SMTP_STARTTLS="off",
            POSTWISE_FREQUENCY_CAP="off",
            POSTWISE_DELIVERY_LEASE_SECONDS=str(LEASE_SECONDS),
            POSTWISE_LOG_LEVEL="WARNING",
            POSTWISE_MODE="development",
        )
        first = _worker(env, tmp_path)
        try:
            assert _wait(lambda: len(smtp_server.accepted) >= 30, timeout=60), (
                first.stderr.read().decode() if first.poll() is not None and first.stderr else ""
            )
            os.kill(first.pid, signal.SIGKILL)
            first.wait(10)
        finally:
            if first.poll() is None:
                first.kill()
        sent_before_kill = len(smtp_server.accepted)
        assert sent_before_kill < 120, "the worker finished before it could be killed"
        smtp_server.clear_faults()
        rows = statuses(runtime, campaign_id=campaign)
        assert "sending" in rows.values()

        time.sleep(LEASE_SECONDS + 0.5)
        second = _worker(env, tmp_path)
        _, errors = second.communicate(timeout=120)
        assert second.returncode == 0, errors.decode()

        received = Counter(
            match.group(1).decode()
            for message in smtp_server.accepted
            if (match := _LEDGER_ID.search(message.content))
        )
        assert set(received.values()) == {1}, "a message was sent twice"
        rows = statuses(runtime, campaign_id=campaign)
        outcome = Counter(rows.values())
        assert set(outcome) <= {"accepted", "dead"}
        # Only the messages with the provider when the worker died are in doubt: the one being
        # transmitted on each lane, at most (the journal records each message as it leaves).
        in_flight = settings.delivery_concurrency
        assert outcome["dead"] <= in_flight
        accepted = {mid for mid, status in rows.items() if status == "accepted"}
        # Everything recorded as sent was received, and everything received is recorded: as
        # sent, or as in doubt when the worker died.
        doubtful = {mid for mid, status in rows.items() if status == "dead"}
        assert accepted <= set(received)
        assert set(received) - accepted <= doubtful
        with runtime.session() as session:
            from postwise.db.models import Message

            for message_id in doubtful:
                row = session.get(Message, message_id)
                assert row is not None and row.last_error == IN_DOUBT_REASON
        assert len(accepted) >= 120 - in_flight
        assert len(contacts) == 120
    finally:
        runtime.close()
