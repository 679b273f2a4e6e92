"""The attempt journal keeps everything a provider said, so recovery settles a crashed worker's
messages exactly as the worker would have: a bounce keeps the provider's kind, and compliance
acts on it."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from delivery_helpers import add_campaign, add_contacts, add_template, ledger, statuses
from esp_fakes import PROVIDER, EspApi, rejection, use_esp

from postwise.compliance.processing import ComplianceConsumer
from postwise.compliance.suppression import is_suppressed
from postwise.db.models import Contact
from postwise.delivery.dispatch import dispatch_campaign
from postwise.delivery.journal import (
    KEY_PREFIX,
    Fenced,
    Journal,
    JournalEntry,
    fence_journal,
    journal_owners,
    read_journal,
)
from postwise.delivery.ledger import campaign_message_id
from postwise.delivery.outcomes import IN_DOUBT_REASON
from postwise.delivery.provider import BounceKind, Outcome, SendResult
from postwise.delivery.recovery import sweep
from postwise.delivery.worker import drain
from postwise.events import EVENT_STREAM, decode_event
from postwise.runtime import Runtime
from postwise.testing.http import Reply

LEASE_SECONDS = 2

# What a worker process runs: deliver one batch through the ESP at argv[2].
_WORKER = """
import json, sys
sys.path.insert(0, sys.argv[1])
from esp_fakes import EspPlugin
from postwise.delivery.batch import deliver
from postwise.runtime import Runtime
runtime = Runtime()
runtime.plugins.register(EspPlugin(sys.argv[2]), "esp-fake")
deliver(runtime, json.loads(sys.argv[3]))
"""


@pytest.fixture
def esp() -> Iterator[EspApi]:
    with EspApi() as api:
        yield api


def _events(runtime: Runtime, kind: str) -> list[Any]:
    events = [decode_event(fields) for _, fields in runtime.redis.xrange(EVENT_STREAM)]
    return [e for e in events if e.type == kind]


def _wait(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


def test_every_field_of_a_result_survives_the_journal(runtime: Runtime) -> None:
    results = [
        SendResult(
            "m-bounce",
            Outcome.PERMANENT,
            reason="rejected: hard-bounce",
            provider_message_id="esp-1",
            http_status=200,
            bounce_kind=BounceKind.HARD,
        ),
        SendResult(
            "m-throttled",
            Outcome.DEFERRED,
            reason="rate limited (HTTP 429)",
            http_status=429,
            retry_after=17.5,
        ),
        SendResult("m-refused", Outcome.FAILED, reason="message too large", http_status=413),
        SendResult("m-lost", Outcome.UNKNOWN, reason="no answer within 30 s"),
        SendResult(
            "m-smtp",
            Outcome.ACCEPTED,
            code=250,
            status="2.0.0",
            reason="queued as X1",
            accepted_at=datetime(2026, 12, 7, 17, 40, 1, 123457, tzinfo=UTC),
        ),
    ]
    # Every field is set to something other than its default by one of the results, so a field
    # added to SendResult and forgotten by the journal fails here.
    for field in dataclasses.fields(SendResult):
        if field.name not in ("message_id", "outcome"):
            assert any(getattr(r, field.name) != field.default for r in results), field.name
    Journal(runtime.redis, "t1", ttl=60).write(results, started=["m-in-flight"])
    entries = read_journal(runtime.redis, "t1")
    assert {message_id: entry.result for message_id, entry in entries.items()} == {
        **{r.message_id: r for r in results},
        "m-in-flight": None,
    }


def test_entries_journaled_before_the_new_fields_existed_still_decode(runtime: Runtime) -> None:
    old = {"o": "permanent", "c": 550, "s": "5.1.1", "r": "user unknown", "p": None}
    runtime.redis.hset(KEY_PREFIX + "t-old", "m1", json.dumps(old))
    [entry] = read_journal(runtime.redis, "t-old").values()
    assert entry.result == SendResult(
        "m1", Outcome.PERMANENT, code=550, status="5.1.1", reason="user unknown"
    )


@pytest.mark.slow
@pytest.mark.redis
def test_a_hard_bounce_journaled_by_a_killed_worker_is_recovered_with_its_kind(
    make_settings: Any, real_redis_url: str, esp: EspApi, tmp_path: Path
) -> None:
    settings = make_settings(
        redis_url=real_redis_url,
        provider=PROVIDER,
        frequency_cap="off",
        delivery_chunk_size=1,
        delivery_concurrency=1,
        delivery_lease_seconds=LEASE_SECONDS,
    )
    runtime = use_esp(Runtime(settings), esp)
    try:
        contacts = add_contacts(runtime, 3)
        campaign = add_campaign(runtime, add_template(runtime))
        dispatch_campaign(runtime, campaign)
        ids = [campaign_message_id(campaign, c) for c in contacts]
        # The ESP rejects the first message (it holds user0 as hard-bounced) and never answers
        # the second, so the worker is surely waiting on it when it is killed: by then it has
        # journaled the first message's result.
        esp.reply(Reply(200, body=rejection("user0@example.org", "hard-bounce")), Reply(hang=10))
        env = {k: v for k, v in os.environ.items() if not k.startswith("POSTWISE_")}
        env.update(
            POSTWISE_DATA_DIR=str(settings.data_dir),
            POSTWISE_DATABASE_URL=settings.resolved_database_url,
            POSTWISE_REDIS_URL=real_redis_url,
            POSTWISE_SECRET_KEY=settings.secret_key.get_secret_value(),
            POSTWISE_PROVIDER=PROVIDER,
            POSTWISE_FREQUENCY_CAP="off",
            POSTWISE_DELIVERY_CHUNK_SIZE="1",
            POSTWISE_DELIVERY_CONCURRENCY="1",
            POSTWISE_DELIVERY_LEASE_SECONDS=str(LEASE_SECONDS),
            POSTWISE_LOG_LEVEL="WARNING",
            POSTWISE_MODE="development",
        )
        here = str(Path(__file__).parent)
        worker = subprocess.Popen(
            [sys.executable, "-c", _WORKER, here, esp.url, json.dumps(ids)],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            assert _wait(lambda: len(esp.received) == 2, timeout=60), (
                worker.stderr.read().decode() if worker.poll() is not None and worker.stderr else ""
            )
            os.kill(worker.pid, signal.SIGKILL)
            worker.wait(10)
        finally:
            if worker.poll() is None:
                worker.kill()
        assert set(statuses(runtime, campaign_id=campaign).values()) == {"sending"}
        assert not _events(runtime, "bounce")

        time.sleep(LEASE_SECONDS + 0.5)
        report = sweep(runtime)
        assert (report.recovered, report.in_doubt) == (3, 1)
        [bounce] = _events(runtime, "bounce")
        assert bounce.message_id == ids[0]
        assert bounce.properties["kind"] == "hard"
        assert bounce.properties["http_status"] == 200
        assert "smtp_code" not in bounce.properties
        row = ledger(runtime, ids[0])
        assert (row.status, row.last_code) == ("bounced", None)
        assert row.last_error == "rejected by Mailchimp-style ESP: hard-bounce"
        # The request that never got an answer is in doubt; the message never started is sent.
        assert ledger(runtime, ids[1]).last_error == IN_DOUBT_REASON
        drain(runtime)
        assert statuses(runtime, campaign_id=campaign) == {
            ids[0]: "bounced",
            ids[1]: "dead",
            ids[2]: "accepted",
        }
        assert esp.recipients() == [f"user{i}@example.org" for i in range(3)]

        # Compliance acts on the recovered kind: the address is suppressed, the others are not.
        ComplianceConsumer(runtime, name="test").run_once(block_ms=None)
        with runtime.session() as session:
            bounced = session.get(Contact, contacts[0])
            assert bounced is not None and bounced.status == "bounced"
            assert is_suppressed(session, "user0@example.org")
            assert not is_suppressed(session, "user1@example.org")
    finally:
        runtime.close()


def test_a_fenced_journal_refuses_to_mark_a_message_started(runtime: Runtime) -> None:
    journal = Journal(runtime.redis, "t-fenced", ttl=60)
    journal.open("worker-1")
    assert journal_owners(runtime.redis, ["t-fenced", "t-none"]) == {
        "t-fenced": "worker-1",
        "t-none": None,
    }
    journal.write(started=["m1"])
    accepted = SendResult("m1", Outcome.ACCEPTED, code=250)
    entries = fence_journal(runtime.redis, "t-fenced")
    assert entries == {"m1": JournalEntry("m1", None)}
    with pytest.raises(Fenced):
        journal.write([accepted], started=["m2"])
    # Nothing of the refused write was kept: m2 was never handed over, so it is not in doubt.
    assert read_journal(runtime.redis, "t-fenced") == {"m1": JournalEntry("m1", None)}
    journal.write([accepted])  # outcomes alone are still recorded
    assert read_journal(runtime.redis, "t-fenced")["m1"].result == accepted
