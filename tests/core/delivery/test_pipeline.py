"""The whole path against a real SMTP server: every message ends exactly once.

Each test dispatches to a fault-injecting aiosmtpd server on loopback and drains the queues with
an RQ SimpleWorker in this process (against the embedded Redis, or real Redis in the servers
mode), then checks what the server received against the ledger and the event stream.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from pathlib import Path
from typing import Any

import dkim
import pytest
from delivery_helpers import (
    add_campaign,
    add_contacts,
    add_template,
    ledger,
    statuses,
)

from postwise import hookimpl
from postwise.compliance.gate import PAUSED_KEY
from postwise.db.models import ContactStatus, Message
from postwise.delivery.dispatch import dispatch_campaign, submit_send
from postwise.delivery.journal import Journal
from postwise.delivery.ledger import campaign_message_id
from postwise.delivery.provider import Outcome, OutgoingMessage, SendResult
from postwise.delivery.queue import enqueue_batches, queue_name
from postwise.delivery.recovery import resend_dead, sweep
from postwise.delivery.requests import SendRequest, SubmitStatus
from postwise.delivery.worker import drain
from postwise.events import EVENT_STREAM, decode_event
from postwise.runtime import Runtime
from postwise.testing.smtp import FaultySmtpServer


def _campaign(runtime: Runtime, count: int, **contact_fields: Any) -> tuple[int, list[int]]:
    contacts = add_contacts(runtime, count, **contact_fields)
    campaign = add_campaign(runtime, add_template(runtime))
    dispatch_campaign(runtime, campaign)
    return campaign, contacts


def _events(runtime: Runtime, kind: str | None = None) -> list[Any]:
    events = [decode_event(fields) for _, fields in runtime.redis.xrange(EVENT_STREAM)]
    return [e for e in events if kind is None or e.type == kind]


def _received(server: FaultySmtpServer) -> Counter[str]:
    return Counter(m.rcpt_tos[0] for m in server.accepted)


def test_a_campaign_is_delivered_once_per_contact_and_recorded(
    delivery: Runtime, smtp_server: FaultySmtpServer
) -> None:
    campaign, contacts = _campaign(delivery, 60)
    drain(delivery)
    received = _received(smtp_server)
    assert len(received) == 60
    assert set(received.values()) == {1}
    assert not smtp_server.duplicates()
    rows = statuses(delivery, campaign_id=campaign)
    assert Counter(rows.values()) == {"accepted": 60}
    row = ledger(delivery, campaign_message_id(campaign, contacts[0]))
    assert row.attempts == 1
    assert row.sent_at is not None
    assert row.provider_message_id
    sent = _events(delivery, "sent")
    assert {e.message_id for e in sent} == set(rows)
    assert {e.campaign_id for e in sent} == {campaign}
    assert all(e.properties["recipient_domain"] == "example.org" for e in sent)
    raw = smtp_server.accepted[0].content
    assert b"List-Unsubscribe-Post: List-Unsubscribe=One-Click" in raw
    assert b"\r\n" in raw and b"\n" not in raw.replace(b"\r\n", b"")


def test_a_redelivered_job_sends_nothing_twice(
    delivery: Runtime, smtp_server: FaultySmtpServer
) -> None:
    campaign, _ = _campaign(delivery, 30)
    ids = list(statuses(delivery, campaign_id=campaign))
    enqueue_batches(delivery, "smtp", [ids, ids[:10]])
    drain(delivery)
    drain(delivery)
    enqueue_batches(delivery, "smtp", [ids])
    drain(delivery)
    assert len(smtp_server.accepted) == 30
    assert not smtp_server.duplicates()


def test_an_unsubscribe_after_queueing_means_not_sent(
    delivery: Runtime, smtp_server: FaultySmtpServer
) -> None:
    campaign, contacts = _campaign(delivery, 10)
    with delivery.session() as session:
        from postwise.db.models import Contact

        contact = session.get(Contact, contacts[3])
        assert contact is not None
        contact.status = ContactStatus.UNSUBSCRIBED
        session.add(contact)
    drain(delivery)
    assert len(smtp_server.accepted) == 9
    assert "user3@example.org" not in _received(smtp_server)
    row = ledger(delivery, campaign_message_id(campaign, contacts[3]))
    assert (row.status, row.last_error) == ("skipped", "unsubscribed")


def test_permanent_rejections_become_bounces_with_an_event(
    delivery: Runtime, smtp_server: FaultySmtpServer
) -> None:
    smtp_server.reject_recipients("user1@example.org", "user2@example.org")
    campaign, contacts = _campaign(delivery, 5)
    drain(delivery)
    rows = statuses(delivery, campaign_id=campaign)
    assert Counter(rows.values()) == {"accepted": 3, "bounced": 2}
    bounced = ledger(delivery, campaign_message_id(campaign, contacts[1]))
    assert bounced.last_code == 550
    assert bounced.attempts == 1
    (bounce, _) = sorted(_events(delivery, "bounce"), key=lambda e: e.contact_id)
    assert bounce.contact_id == contacts[1]
    assert bounce.properties["smtp_code"] == 550
    assert bounce.properties["status"] == "5.1.1"
    assert len(smtp_server.accepted) == 3


def test_transient_failures_are_retried_until_accepted_without_duplicates(
    make_runtime: Any, smtp_server: FaultySmtpServer
) -> None:
    # RQ schedules in whole seconds, so the backoff is set in seconds too: retries wait
    # 0.5-1 s each (equal jitter of a 1 s cap), and eight attempts span more than the 2 s
    # for which the relay defers user4.
    runtime = make_runtime(max_attempts=8, retry_base_seconds=1.0, retry_max_seconds=1.0)
    campaign, contacts = _campaign(runtime, 12)
    smtp_server.fail_transactions(3, code=421)
    smtp_server.defer_recipients("user4@example.org", seconds=2.0)
    drain(runtime)
    rows = statuses(runtime, campaign_id=campaign)
    assert Counter(rows.values()) == {"accepted": 12}
    assert len(smtp_server.accepted) == 12
    assert not smtp_server.duplicates()
    assert ledger(runtime, campaign_message_id(campaign, contacts[4])).attempts >= 2


def test_a_relay_that_keeps_failing_ends_in_the_dead_letters(
    make_runtime: Any, smtp_server: FaultySmtpServer
) -> None:
    runtime = make_runtime(max_attempts=2)
    smtp_server.defer_recipients("*@example.org", seconds=60)
    campaign, contacts = _campaign(runtime, 4)
    drain(runtime)
    rows = statuses(runtime, campaign_id=campaign)
    assert Counter(rows.values()) == {"dead": 4}
    row = ledger(runtime, campaign_message_id(campaign, contacts[0]))
    assert row.attempts == 2
    assert "gave up after 2 attempts" in (row.last_error or "")
    assert len(_events(runtime, "dead_letter")) == 4
    assert smtp_server.accepted == []
    # Once the relay is fixed, an operator can give the dead letters fresh attempts.
    smtp_server.clear_faults()
    assert resend_dead(runtime, campaign_id=campaign) == 4
    drain(runtime)
    assert Counter(statuses(runtime, campaign_id=campaign).values()) == {"accepted": 4}
    assert len(smtp_server.accepted) == 4


def test_connections_dropped_mid_transaction_lose_and_duplicate_nothing(
    delivery: Runtime, smtp_server: FaultySmtpServer
) -> None:
    smtp_server.drop_connections(2, stage="data")
    smtp_server.drop_connections(1, stage="mail")
    smtp_server.drop_connections(1, stage="rcpt")
    smtp_server.reject_recipients("user7@example.org")
    campaign, _ = _campaign(delivery, 25)
    drain(delivery)
    rows = statuses(delivery, campaign_id=campaign)
    # The two dropped after the 354 had their whole content sent: the provider cannot tell they
    # were not taken, so they are dead-lettered in doubt rather than risk a duplicate.
    assert Counter(rows.values()) == {"accepted": 22, "bounced": 1, "dead": 2}
    doubtful = [ledger(delivery, m) for m, status in rows.items() if status == "dead"]
    assert all((row.last_error or "").startswith("in doubt: ") for row in doubtful)
    assert len(smtp_server.accepted) == 22
    assert not smtp_server.duplicates()


def test_the_rate_limit_defers_what_is_over_and_sends_it_when_tokens_refill(
    make_runtime: Any, smtp_server: FaultySmtpServer
) -> None:
    runtime = make_runtime(rate_limits="smtp=20/s burst 5")
    campaign, _ = _campaign(runtime, 25)
    started = time.monotonic()
    drain(runtime)
    elapsed = time.monotonic() - started
    assert Counter(statuses(runtime, campaign_id=campaign).values()) == {"accepted": 25}
    assert not smtp_server.duplicates()
    # 20 messages beyond the burst need a second at 20/s.
    assert elapsed >= 0.9


def test_a_reputation_pause_defers_messages_instead_of_sending_or_dropping_them(
    delivery: Runtime, smtp_server: FaultySmtpServer
) -> None:
    from postwise.delivery.batch import deliver

    campaign, _ = _campaign(delivery, 6)
    delivery.redis.hset(PAUSED_KEY, "provider:smtp", json.dumps({"reason": "complaints"}))
    drain(delivery, wait_for_scheduled=False)
    assert smtp_server.accepted == []
    rows = statuses(delivery, campaign_id=campaign)
    assert Counter(rows.values()) == {"queued": 6}
    assert "reputation pause: complaints" in (ledger(delivery, next(iter(rows))).last_error or "")
    scheduled = delivery.redis.zcard(f"rq:scheduled:{queue_name('smtp')}")
    assert scheduled >= 1
    delivery.redis.delete(PAUSED_KEY)
    deliver(delivery, list(rows))
    assert len(smtp_server.accepted) == 6


def test_a_paused_recipient_domain_defers_only_its_recipients(
    delivery: Runtime, smtp_server: FaultySmtpServer
) -> None:
    here = add_contacts(delivery, 3, prefix="a", domain="example.org")
    there = add_contacts(delivery, 3, prefix="b", domain="paused.example")
    campaign = add_campaign(delivery, add_template(delivery))
    dispatch_campaign(delivery, campaign)
    delivery.redis.hset(PAUSED_KEY, "recipient_domain:paused.example", '{"reason": "blocks"}')
    drain(delivery, wait_for_scheduled=False)
    assert set(_received(smtp_server)) == {f"a{i}@example.org" for i in range(3)}
    for contact in there:
        assert ledger(delivery, campaign_message_id(campaign, contact)).status == "queued"
    assert all(
        ledger(delivery, campaign_message_id(campaign, c)).status == "accepted" for c in here
    )


class _Gatekeeper:
    """A plugin that vetoes one recipient and watches every outcome."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, Outcome]] = []

    @hookimpl
    def postwise_before_send(self, message: OutgoingMessage, contact_id: int | None) -> bool:
        return message.recipient != "user2@example.org"

    @hookimpl
    def postwise_after_send(self, message: OutgoingMessage, result: SendResult) -> None:
        self.seen.append((message.recipient, result.outcome))


def test_plugins_can_veto_a_send_and_see_every_outcome(
    delivery: Runtime, smtp_server: FaultySmtpServer
) -> None:
    plugin = _Gatekeeper()
    delivery.plugins.register(plugin, "gatekeeper")
    campaign, contacts = _campaign(delivery, 4)
    drain(delivery)
    assert "user2@example.org" not in _received(smtp_server)
    row = ledger(delivery, campaign_message_id(campaign, contacts[2]))
    assert (row.status, row.last_error) == ("skipped", "vetoed")
    assert sorted(plugin.seen) == [(f"user{i}@example.org", Outcome.ACCEPTED) for i in (0, 1, 3)]


def test_messages_are_dkim_signed_and_verify(
    make_runtime: Any, smtp_server: FaultySmtpServer, tmp_path: Path
) -> None:
    from postwise.delivery.dkim import DkimSigner, generate_key

    key = tmp_path / "dkim.pem"
    key.write_bytes(generate_key("rsa-sha256").private_key_pem)
    runtime = make_runtime(dkim_domain="example.com", dkim_selector="s1", dkim_private_key_path=key)
    _campaign(runtime, 2)
    drain(runtime)
    record = DkimSigner("s1", "example.com", key.read_bytes()).dns_record()
    for message in smtp_server.accepted:
        assert message.content.startswith(b"DKIM-Signature:")
        assert b"list-unsubscribe" in message.content.split(b"\r\n\r\n")[0]
        assert dkim.verify(message.content, dnsfunc=lambda *_args, **_kw: record.encode())


def test_a_send_requests_context_is_merged_into_its_template(
    delivery: Runtime, smtp_server: FaultySmtpServer
) -> None:
    (contact,) = add_contacts(delivery, 1)
    receipt = add_template(
        delivery,
        name="receipt",
        kind="transactional",
        subject="Order {{ order_id }}",
        html="<p>Thanks {{ first_name }}, order {{ order_id }} ships soon.</p>",
    )
    result = submit_send(
        delivery,
        SendRequest(contact, receipt, dedupe_key="order:A-17", context={"order_id": "A-17"}),
    )
    assert result.status == SubmitStatus.QUEUED
    drain(delivery)
    (message,) = smtp_server.accepted
    assert b"Subject: Order A-17" in message.content
    assert b"order A-17 ships soon" in message.content
    assert b"List-Unsubscribe" not in message.content


def test_a_dead_attempt_is_settled_from_its_journal(
    make_runtime: Any, smtp_server: FaultySmtpServer
) -> None:
    runtime = make_runtime(delivery_lease_seconds=2)
    campaign, contacts = _campaign(runtime, 5)
    ids = [campaign_message_id(campaign, c) for c in contacts]
    # An attempt claimed the batch, sent the first message, was sending the second, and died.
    token = "deadbeef" * 4
    with runtime.engine.begin() as connection:
        connection.execute(
            Message.__table__.update()  # type: ignore[attr-defined]
            .where(Message.__table__.c.id.in_(ids))  # type: ignore[attr-defined]
            .values(status="sending", claim_token=token, claimed_until=_ago(10))
        )
    journal = Journal(runtime.redis, token, ttl=60)
    journal.write([SendResult(ids[0], Outcome.ACCEPTED, code=250, reason="ok")], started=[ids[1]])
    report = sweep(runtime)
    assert (report.recovered, report.in_doubt) == (5, 1)
    drain(runtime)
    rows = statuses(runtime, campaign_id=campaign)
    assert rows[ids[0]] == "accepted"
    assert rows[ids[1]] == "dead"
    assert "in doubt" in (ledger(runtime, ids[1]).last_error or "")
    assert [rows[i] for i in ids[2:]] == ["accepted"] * 3
    # Neither the message the dead attempt sent nor the one in doubt is sent again.
    assert sorted(_received(smtp_server)) == [f"user{i}@example.org" for i in (2, 3, 4)]
    assert {e.message_id for e in _events(runtime, "sent")} == {ids[0], *ids[2:]}


def test_rows_whose_job_was_lost_are_enqueued_again(
    delivery: Runtime, smtp_server: FaultySmtpServer
) -> None:
    (contact,) = add_contacts(delivery, 1)
    result = submit_send(delivery, SendRequest(contact, add_template(delivery), dedupe_key="x"))
    delivery.redis.delete(f"rq:queue:{queue_name('smtp')}")
    with delivery.engine.begin() as connection:
        connection.execute(
            Message.__table__.update().values(claimed_until=_ago(1))  # type: ignore[attr-defined]
        )
    assert sweep(delivery).requeued == 1
    drain(delivery)
    assert ledger(delivery, result.message_id).status == "accepted"
    assert len(smtp_server.accepted) == 1


def _ago(seconds: float) -> Any:
    from datetime import timedelta

    from postwise.db.models import utcnow

    return utcnow() - timedelta(seconds=seconds)


def test_a_misconfigured_worker_fails_before_claiming_anything(
    make_runtime: Any, smtp_server: FaultySmtpServer
) -> None:
    from postwise.delivery.batch import deliver
    from postwise.errors import ConfigurationError

    runtime = make_runtime(dkim_domain="example.com")  # but no key
    campaign, _ = _campaign(runtime, 3)
    ids = list(statuses(runtime, campaign_id=campaign))
    with pytest.raises(ConfigurationError, match="dkim_private_key_path"):
        deliver(runtime, ids)
    assert Counter(statuses(runtime, campaign_id=campaign).values()) == {"queued": 3}
    assert smtp_server.accepted == []
