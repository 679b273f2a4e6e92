"""A campaign sent end to end through the delivery pipeline with ``provider = "sendgrid"``."""

from __future__ import annotations

from collections import Counter
from typing import Any

from fake_sendgrid import API_KEY, FakeSendGrid, Reply, errors

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
            rows = session.query(LedgerRow).filter(LedgerRow.campaign_id == campaign).all()
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
