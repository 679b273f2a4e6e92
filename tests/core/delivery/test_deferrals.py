"""What is deferred rather than attempted, and for how long: a provider's throttle holds back the
rest of the batch, the circuit breaker defers what it did not attempt, and neither uses up an
attempt."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from delivery_helpers import add_campaign, add_contacts, add_template, ledger, statuses
from esp_fakes import PROVIDER, SERVICE, EspApi, use_esp

from postwise.compliance.gate import PAUSED_KEY
from postwise.db.models import utcnow
from postwise.delivery.dispatch import dispatch_campaign
from postwise.delivery.ledger import MESSAGE, campaign_message_id
from postwise.delivery.queue import enqueue_batches, queue_name
from postwise.delivery.worker import drain
from postwise.errors import ConfigurationError
from postwise.events import EVENT_STREAM, decode_event
from postwise.runtime import Runtime
from postwise.settings import load_settings
from postwise.testing.http import Reply
from postwise.testing.smtp import FaultySmtpServer

GMAIL_MAILBOX_RATE = (
    "4.2.1 The user you are trying to contact is receiving mail at a rate that prevents "
    "additional messages from being delivered."
)
GMAIL_SENDER_RATE = (
    "4.7.28 Our system has detected an unusual rate of unsolicited mail originating from your "
    "IP address; mail sent from your IP address has been temporarily rate limited."
)


@pytest.fixture
def esp() -> Iterator[EspApi]:
    with EspApi() as api:
        yield api


@pytest.fixture
def esp_runtime(make_settings: Any, esp: EspApi) -> Iterator[Any]:
    """Build runtimes sending through the ESP fake; closed after the test."""
    made: list[Runtime] = []

    def make(**overrides: Any) -> Runtime:
        values: dict[str, Any] = {"provider": PROVIDER, "frequency_cap": "off", **overrides}
        runtime = use_esp(Runtime(make_settings(**values)), esp)
        made.append(runtime)
        return runtime

    yield make
    for runtime in made:
        runtime.close()


def _campaign(runtime: Runtime, count: int) -> list[str]:
    contacts = add_contacts(runtime, count)
    campaign = add_campaign(runtime, add_template(runtime))
    dispatch_campaign(runtime, campaign)
    return [campaign_message_id(campaign, c) for c in contacts]


def _events(runtime: Runtime, kind: str) -> list[Any]:
    events = [decode_event(fields) for _, fields in runtime.redis.xrange(EVENT_STREAM)]
    return [e for e in events if e.type == kind]


def _wait_of(runtime: Runtime, message_id: str) -> timedelta:
    """How long ``message_id`` was put back to wait (its due-by time less the lease)."""
    row = ledger(runtime, message_id)
    assert row.claimed_until is not None
    lease = timedelta(seconds=runtime.settings.delivery_lease_seconds)
    return row.claimed_until - row.updated_at - lease


def test_a_throttled_api_holds_back_the_rest_of_the_batch_for_its_retry_after(
    esp_runtime: Any, esp: EspApi
) -> None:
    runtime = esp_runtime(delivery_chunk_size=2, delivery_concurrency=1, max_attempts=1)
    esp.reply(Reply(429, {"Retry-After": "2"}, {"status": "error", "name": "Too_Many_Requests"}))
    ids = _campaign(runtime, 6)
    drain(runtime, wait_for_scheduled=False)
    # One request, throttled: neither the rest of its chunk nor the two chunks after it were
    # sent to an ESP that had just said to wait.
    assert len(esp.received) == 1
    assert set(statuses(runtime).values()) == {"queued"}
    assert {ledger(runtime, m).attempts for m in ids} == {0}
    assert {_wait_of(runtime, m) for m in ids} == {timedelta(seconds=2)}
    held = ledger(runtime, ids[4]).last_error or ""
    assert held.startswith(
        f"not attempted: {PROVIDER} is refusing the sender for now (rate limited by"
    )
    assert f"rate limited by {SERVICE} (HTTP 429); retry after 2 s)" in held
    # They wait together: one job, due when the ESP said.
    assert runtime.redis.zcard(f"rq:scheduled:{queue_name(PROVIDER)}") == 1

    drain(runtime)
    # max_attempts=1: had the wait used up the attempt, they would now be dead.
    assert Counter(statuses(runtime).values()) == {"accepted": 6}
    assert {ledger(runtime, m).attempts for m in ids} == {1}
    assert len(esp.received) == 7
    assert not _events(runtime, "dead_letter")


def test_a_relay_that_rate_limits_the_sender_holds_back_the_later_chunks(
    make_runtime: Any, smtp_server: FaultySmtpServer
) -> None:
    runtime = make_runtime(delivery_chunk_size=2, delivery_concurrency=1, max_attempts=1)
    smtp_server.fail_transactions(1, code=421, text=GMAIL_SENDER_RATE)
    ids = _campaign(runtime, 6)
    drain(runtime, wait_for_scheduled=False)
    assert smtp_server.transactions == 1
    assert smtp_server.accepted == []
    assert set(statuses(runtime).values()) == {"queued"}
    assert {ledger(runtime, m).attempts for m in ids} == {0}
    # Without a Retry-After, all wait as long as a first retry would: one draw for the batch.
    assert len({_wait_of(runtime, m) for m in ids}) == 1
    drain(runtime)
    assert Counter(statuses(runtime).values()) == {"accepted": 6}
    assert len(smtp_server.accepted) == 6


def test_a_mailbox_receiving_mail_too_fast_holds_back_only_its_own_message(
    make_runtime: Any, smtp_server: FaultySmtpServer
) -> None:
    runtime = make_runtime(delivery_chunk_size=1, delivery_concurrency=1)
    smtp_server.defer_recipients("user0@example.org", seconds=60, code=450, text=GMAIL_MAILBOX_RATE)
    ids = _campaign(runtime, 4)
    drain(runtime, wait_for_scheduled=False)
    assert statuses(runtime) == {
        ids[0]: "queued",
        ids[1]: "accepted",
        ids[2]: "accepted",
        ids[3]: "accepted",
    }
    assert ledger(runtime, ids[0]).attempts == 0
    assert ledger(runtime, ids[0]).last_error == GMAIL_MAILBOX_RATE


def test_what_the_circuit_breaker_did_not_attempt_is_deferred_without_using_an_attempt(
    make_runtime: Any, smtp_server: FaultySmtpServer
) -> None:
    runtime = make_runtime(
        delivery_chunk_size=3,
        delivery_concurrency=1,
        max_attempts=1,
        retry_base_seconds=1.0,
        retry_max_seconds=1.0,
    )
    smtp_server.fail_transactions(3, code=451, text="4.3.0 Temporary system problem")
    ids = _campaign(runtime, 9)
    drain(runtime, wait_for_scheduled=False)
    # The first chunk failed three times in a row: the breaker kept the other two chunks from
    # a relay that seemed down.
    assert smtp_server.transactions == 3
    rows = statuses(runtime)
    assert [rows[m] for m in ids] == ["dead"] * 3 + ["queued"] * 6
    assert {ledger(runtime, m).attempts for m in ids[3:]} == {0}
    held = ledger(runtime, ids[3]).last_error or ""
    assert held == (
        "not attempted: 3 messages in a row failed transiently at smtp "
        "(last: 4.3.0 Temporary system problem)"
    )
    assert len(_events(runtime, "dead_letter")) == 3

    drain(runtime)
    # max_attempts=1: the deferred messages still had their one attempt, and it went through.
    rows = statuses(runtime)
    assert [rows[m] for m in ids] == ["dead"] * 3 + ["accepted"] * 6
    assert len(smtp_server.accepted) == 6
    assert len(_events(runtime, "dead_letter")) == 3


def _age(runtime: Runtime, message_ids: list[str], hours: float, *, column: str) -> None:
    """Make ``message_ids`` look queued (``created_at``) or first deferred by the provider
    (``deferred_since``) ``hours`` ago."""
    with runtime.engine.begin() as connection:
        connection.execute(
            MESSAGE.update()
            .where(MESSAGE.c.id.in_(message_ids))
            .values({column: utcnow() - timedelta(hours=hours)})
        )


def test_a_message_still_deferred_after_the_limit_is_dead_lettered(
    esp_runtime: Any, esp: EspApi
) -> None:
    runtime = esp_runtime(
        delivery_chunk_size=2, delivery_concurrency=1, delivery_max_defer_hours=24
    )
    esp.reply(Reply(429, {"Retry-After": "30"}, {"status": "error", "name": "Too_Many_Requests"}))
    ids = _campaign(runtime, 3)
    # The first was throttled, the second not attempted by the ESP after that, the third held
    # back by the batch: every one is a deferral by the provider, and two have been deferred
    # for too long already.
    _age(runtime, [ids[0], ids[2]], hours=25, column="deferred_since")
    drain(runtime, wait_for_scheduled=False)
    assert len(esp.received) == 1
    assert statuses(runtime) == {ids[0]: "dead", ids[1]: "queued", ids[2]: "dead"}
    row = ledger(runtime, ids[0])
    assert row.attempts == 0
    assert row.last_error == (
        "gave up: deferred by the provider for 25.0 h "
        f"(delivery_max_defer_hours is 24): rate limited by {SERVICE} (HTTP 429); retry after 30 s"
    )
    assert (ledger(runtime, ids[2]).last_error or "").startswith(
        "gave up: deferred by the provider for 25.0 h"
    )
    dead = {e.message_id: e.properties for e in _events(runtime, "dead_letter")}
    assert set(dead) == {ids[0], ids[2]}
    assert dead[ids[0]]["http_status"] == 429
    assert "in_doubt" not in dead[ids[0]]
    assert not _events(runtime, "bounce")
    # The young one waits as the ESP asked, still with its attempt.
    assert _wait_of(runtime, ids[1]) == timedelta(seconds=30)
    assert ledger(runtime, ids[1]).attempts == 0


def test_the_deferral_limit_counts_from_the_first_deferral_not_from_queueing(
    esp_runtime: Any, esp: EspApi
) -> None:
    # A message that waited days for reasons of postwise's own (a schedule, a slow rate limit)
    # is not dead-lettered by its first throttle: the clock starts there.
    runtime = esp_runtime(
        delivery_chunk_size=1, delivery_concurrency=1, delivery_max_defer_hours=24
    )
    esp.reply(Reply(429, {"Retry-After": "30"}, {"status": "error", "name": "Too_Many_Requests"}))
    [message] = _campaign(runtime, 1)
    _age(runtime, [message], hours=100, column="created_at")
    drain(runtime, wait_for_scheduled=False)
    row = ledger(runtime, message)
    assert (row.status, row.attempts) == ("queued", 0)
    assert row.deferred_since is not None
    first = row.deferred_since
    # Deferred again later: the first deferral's time is kept, so the limit does come.
    enqueue_batches(runtime, PROVIDER, [[message]])
    esp.reply(Reply(429, {"Retry-After": "30"}, {"status": "error", "name": "Too_Many_Requests"}))
    drain(runtime, wait_for_scheduled=False)
    assert ledger(runtime, message).deferred_since == first


def test_waits_of_postwise_own_making_never_end_in_a_dead_letter(
    make_runtime: Any, smtp_server: FaultySmtpServer
) -> None:
    runtime = make_runtime(rate_limits="smtp=1/m burst 1", delivery_max_defer_hours=1)
    ids = _campaign(runtime, 3)
    _age(runtime, ids, hours=100, column="created_at")
    runtime.redis.hset(PAUSED_KEY, "recipient_domain:example.org", '{"reason": "blocks"}')
    drain(runtime, wait_for_scheduled=False)
    assert set(statuses(runtime).values()) == {"queued"}
    assert ledger(runtime, ids[0]).last_error == "reputation pause: blocks"
    runtime.redis.delete(PAUSED_KEY)
    enqueue_batches(runtime, "smtp", [ids])
    drain(runtime, wait_for_scheduled=False)
    # The bucket had one token: one sent, the others wait for it to refill, however old.
    assert Counter(statuses(runtime).values()) == {"accepted": 1, "queued": 2}
    waiting = [m for m, status in statuses(runtime).items() if status == "queued"]
    assert all(
        (ledger(runtime, m).last_error or "").startswith("rate limit of smtp") for m in waiting
    )
    assert not _events(runtime, "dead_letter")


@pytest.mark.parametrize("hours", ["0", "-1", "8761", "soon"])
def test_the_deferral_limit_must_be_a_positive_number_of_hours(hours: str) -> None:
    with pytest.raises(ConfigurationError, match="POSTWISE_DELIVERY_MAX_DEFER_HOURS"):
        load_settings(environ={"POSTWISE_DELIVERY_MAX_DEFER_HOURS": hours}, config_file=None)


def test_a_deferral_without_a_time_waits_longer_the_longer_it_has_lasted(
    esp_runtime: Any, esp: EspApi
) -> None:
    # A 429 without Retry-After: the first time, about the base backoff (15-30 s); after two
    # hours of deferral, 30-60 minutes, so a relay that stays away is not asked every 30 s.
    runtime = esp_runtime(delivery_chunk_size=1, delivery_concurrency=1)
    throttled = Reply(429, {}, {"status": "error", "name": "Too_Many_Requests"})
    esp.reply(throttled)
    fresh, old = _campaign(runtime, 2)
    _age(runtime, [old], hours=2, column="deferred_since")
    drain(runtime, wait_for_scheduled=False)
    assert timedelta(seconds=15) <= _wait_of(runtime, fresh) <= timedelta(seconds=30)
    assert timedelta(minutes=30) <= _wait_of(runtime, old) <= timedelta(minutes=60)
    assert ledger(runtime, old).attempts == ledger(runtime, fresh).attempts == 0


def test_the_deferral_clock_restarts_after_an_attempt_a_pause_or_a_resend(
    esp_runtime: Any, esp: EspApi
) -> None:
    from postwise.delivery.recovery import resend_dead

    runtime = esp_runtime(
        delivery_chunk_size=1, delivery_concurrency=1, delivery_max_defer_hours=24
    )
    # The campaign's first attempt fails transiently for all three, which were deferred for
    # 20 h before: tried, and the attempt counted, so max_attempts bounds them from here and
    # the deferral clock is cleared.
    esp.reply(*[Reply(503, {}, {"status": "error", "name": "GeneralError"})] * 3)
    ids = _campaign(runtime, 3)
    _age(runtime, ids, hours=20, column="deferred_since")
    drain(runtime, wait_for_scheduled=False)
    assert set(statuses(runtime).values()) == {"retrying"}
    assert all(ledger(runtime, m).deferred_since is None for m in ids)
    paused, dead = ids[1], ids[2]
    # A reputation pause holds mail by decision: its time never counts toward the limit.
    _age(runtime, [paused], hours=20, column="deferred_since")
    runtime.redis.hset(PAUSED_KEY, f"provider:{PROVIDER}", '{"reason": "complaints"}')
    enqueue_batches(runtime, PROVIDER, [[paused]])
    drain(runtime, wait_for_scheduled=False)
    runtime.redis.delete(PAUSED_KEY)
    assert (ledger(runtime, paused).last_error or "").startswith("reputation pause")
    assert ledger(runtime, paused).deferred_since is None
    # A dead-lettered message sent again by an operator starts afresh.
    _age(runtime, [dead], hours=30, column="deferred_since")
    esp.reply(Reply(429, {"Retry-After": "30"}, {"status": "error", "name": "Too_Many_Requests"}))
    enqueue_batches(runtime, PROVIDER, [[dead]])
    drain(runtime, wait_for_scheduled=False)
    assert ledger(runtime, dead).status == "dead"
    assert resend_dead(runtime) >= 1
    assert ledger(runtime, dead).deferred_since is None
