"""A campaign sent end to end through the delivery pipeline with ``provider = "sendgrid"``."""

from __future__ import annotations

from collections import Counter
from typing import Any

from fake_sendgrid import API_KEY, FakeSendGrid, Reply, errors
from sqlmodel import select

from postwise.compliance.processing import ComplianceConsumer
from postwise.compliance.suppression import is_suppressed
from postwise.db.models import Campaign, Contact, Template, TemplateVersion
from postwise.db.models import Message as LedgerRow
from postwise.delivery.dispatch import dispatch_campaign
from postwise.delivery.worker import drain
from postwise.events import EVENT_STREAM, decode_event
from postwise.runtime import Runtime

HTML = (
    "<html><body><p>Hello {{ first_name | default('there') }}</p>"
    '<p><a href="https://www.example.com/offer">offer</a></p>'
    '<p><a href="{{ unsubscribe_url }}">unsubscribe</a> {{ postal_address }}</p></body></html>'
)


def seed_campaign(runtime: Runtime, count: int) -> int:
    with runtime.session() as session:
        session.add_all(
            Contact(email=f"user{i}@example.org", first_name=f"Name{i}") for i in range(count)
        )
        template = Template(name="newsletter", kind="marketing", current_version=1)
        session.add(template)
        session.flush()
        assert template.id is not None
        session.add(
            TemplateVersion(
                template_id=template.id, version=1, subject="Hi {{ first_name }}", html=HTML
            )
        )
        campaign = Campaign(name="spring", template_id=template.id)
        session.add(campaign)
        session.flush()
        assert campaign.id is not None
        return campaign.id


def test_a_campaign_reaches_sendgrid_once_per_contact_through_throttling(
    make_settings: Any, sendgrid_server: FakeSendGrid
) -> None:
    # SendGrid throttles the first request and fails the second; the core must re-queue both.
    sendgrid_server.reply(
        Reply(429, {"Retry-After": "1"}, errors((None, "too many requests"))), Reply(500)
    )
    runtime = Runtime(
        make_settings(
            provider="sendgrid",
            provider_options={
                "sendgrid": {"api_key": API_KEY, "base_url": sendgrid_server.url, "concurrency": 1}
            },
            frequency_cap="off",
            retry_base_seconds=1.0,  # RQ schedules in whole seconds
            retry_max_seconds=1.0,
            delivery_chunk_size=5,
        )
    )
    try:
        campaign = seed_campaign(runtime, 12)
        dispatch_campaign(runtime, campaign)
        drain(runtime, max_wait=30)
        # The two scripted answers went to the first two requests; the rest were accepted.
        accepted = Counter(
            request.body["personalizations"][0]["to"][0]["email"]
            for request in sendgrid_server.received[2:]
        )
        with runtime.session() as session:
            rows = session.exec(select(LedgerRow).where(LedgerRow.campaign_id == campaign)).all()
        entries: Any = runtime.redis.xrange(EVENT_STREAM)
        sent = [e for e in (decode_event(f) for _, f in entries) if e.type == "sent"]
    finally:
        runtime.close()
    assert len(rows) == 12
    assert {row.status for row in rows} == {"accepted"}
    assert all(row.provider == "sendgrid" and row.provider_message_id for row in rows)
    assert len(sendgrid_server.received) == 14
    assert accepted == Counter({f"user{i}@example.org": 1 for i in range(12)})
    assert len(sent) == 12
    last = sendgrid_server.received[-1].body
    assert last["custom_args"]["postwise_campaign_id"] == str(campaign)
    assert "List-Unsubscribe" in last["headers"]


def _runtime(make_settings: Any, server: FakeSendGrid, **overrides: Any) -> Runtime:
    options = {"api_key": API_KEY, "base_url": server.url, "concurrency": 1}
    options.update(overrides.pop("sendgrid", {}))
    values: dict[str, Any] = {
        "provider": "sendgrid",
        "provider_options": {"sendgrid": options},
        "frequency_cap": "off",
        "retry_base_seconds": 1.0,  # RQ schedules in whole seconds
        "retry_max_seconds": 1.0,
        "delivery_chunk_size": 5,
    }
    values.update(overrides)
    return Runtime(make_settings(**values))


def _events(runtime: Runtime, kind: str) -> list[Any]:
    entries: Any = runtime.redis.xrange(EVENT_STREAM)
    return [e for e in (decode_event(f) for _, f in entries) if e.type == kind]


def test_a_429_defers_the_batch_without_an_attempt_and_comes_back_no_sooner_than_asked(
    make_settings: Any, sendgrid_server: FakeSendGrid
) -> None:
    sendgrid_server.reply(Reply(429, {"Retry-After": "2"}, errors((None, "too many requests"))))
    # One attempt only: had the deferral cost one, every message would be dead.
    runtime = _runtime(make_settings, sendgrid_server, max_attempts=1)
    try:
        campaign = seed_campaign(runtime, 3)
        dispatch_campaign(runtime, campaign)
        drain(runtime, max_wait=30)
        with runtime.session() as session:
            rows = session.exec(select(LedgerRow).where(LedgerRow.campaign_id == campaign)).all()
    finally:
        runtime.close()
    assert {(row.status, row.attempts) for row in rows} == {("accepted", 1)}
    throttled, *retried = sendgrid_server.received
    # The rest of the batch was not sent into the throttle: 1 refused request, then 3.
    assert len(retried) == 3
    assert retried[0].at - throttled.at >= 2.0


def test_a_server_error_with_retry_after_is_retried_no_sooner_than_asked(
    make_settings: Any, sendgrid_server: FakeSendGrid
) -> None:
    sendgrid_server.reply(Reply(503, {"Retry-After": "2"}))
    runtime = _runtime(make_settings, sendgrid_server)
    try:
        campaign = seed_campaign(runtime, 1)
        dispatch_campaign(runtime, campaign)
        drain(runtime, max_wait=30)
        with runtime.session() as session:
            [row] = session.exec(select(LedgerRow).where(LedgerRow.campaign_id == campaign)).all()
    finally:
        runtime.close()
    assert (row.status, row.attempts) == ("accepted", 2)
    failed, retried = sendgrid_server.received
    # The backoff alone would have been at most 1 s.
    assert retried.at - failed.at >= 2.0


def test_a_refused_api_key_dead_letters_the_messages_and_never_suppresses_the_recipients(
    make_settings: Any, sendgrid_server: FakeSendGrid
) -> None:
    runtime = _runtime(
        make_settings, sendgrid_server, max_attempts=2, sendgrid={"api_key": "SG.revoked"}
    )
    try:
        campaign = seed_campaign(runtime, 3)
        dispatch_campaign(runtime, campaign)
        drain(runtime, max_wait=30)
        handled = ComplianceConsumer(runtime, name="test").run_once(block_ms=None)
        with runtime.session() as session:
            rows = session.exec(select(LedgerRow).where(LedgerRow.campaign_id == campaign)).all()
            contacts = session.exec(select(Contact)).all()
            suppressed = [is_suppressed(session, c.email) for c in contacts]
        bounces = _events(runtime, "bounce")
        dead_letters = _events(runtime, "dead_letter")
    finally:
        runtime.close()
    assert {row.status for row in rows} == {"dead"}
    assert all("HTTP 401" in (row.last_error or "") for row in rows)
    assert all(row.last_code is None for row in rows)
    assert bounces == []
    assert len(dead_letters) == 3
    assert "smtp_code" not in dead_letters[0].properties
    assert handled == len(dead_letters)  # the consumer read them, and left them alone
    assert {c.status for c in contacts} == {"active"}
    assert suppressed == [False] * 3
