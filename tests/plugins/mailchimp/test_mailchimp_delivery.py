"""A campaign sent end to end through the delivery pipeline with ``provider = "mailchimp"``."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import dkim
from fake_mailchimp import API_KEY, FakeMailchimp, Reply, error
from sqlmodel import select

from postwise.compliance.processing import ComplianceConsumer
from postwise.compliance.suppression import is_suppressed
from postwise.db.models import Campaign, Contact, Template, TemplateVersion
from postwise.db.models import Message as LedgerRow
from postwise.delivery.dispatch import dispatch_campaign
from postwise.delivery.dkim import DkimSigner, generate_key
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


def test_a_campaign_reaches_mailchimp_signed_once_per_contact_through_throttling(
    make_settings: Any, mailchimp_server: FakeMailchimp, tmp_path: Path
) -> None:
    key = tmp_path / "dkim.pem"
    key.write_bytes(generate_key().private_key_pem)
    mailchimp_server.reply(
        Reply(429, {"Retry-After": "1"}, {"status": "error", "name": "Too_Many_Requests"}),
        Reply(500, body=error("GeneralError", "try again")),
    )
    runtime = Runtime(
        make_settings(
            provider="mailchimp",
            provider_options={
                "mailchimp": {
                    "api_key": API_KEY,
                    "base_url": mailchimp_server.base_url,
                    "concurrency": 1,
                }
            },
            frequency_cap="off",
            retry_base_seconds=1.0,  # RQ schedules in whole seconds
            retry_max_seconds=1.0,
            delivery_chunk_size=5,
            dkim_domain="example.com",
            dkim_selector="s1",
            dkim_private_key_path=key,
        )
    )
    try:
        campaign = seed_campaign(runtime, 10)
        dispatch_campaign(runtime, campaign)
        drain(runtime, max_wait=30)
        with runtime.session() as session:
            rows = session.exec(select(LedgerRow).where(LedgerRow.campaign_id == campaign)).all()
    finally:
        runtime.close()
    assert len(rows) == 10
    assert {row.status for row in rows} == {"accepted"}
    assert all(row.provider == "mailchimp" and row.provider_message_id for row in rows)
    received = mailchimp_server.received
    assert len(received) == 12
    # The two scripted answers went to the first two requests; the rest were accepted.
    accepted = Counter(request.body["to"][0] for request in received[2:])
    assert accepted == Counter({f"user{i}@example.org": 1 for i in range(10)})
    record = DkimSigner("s1", "example.com", key.read_bytes()).dns_record().encode()
    ids = {row.id for row in rows}
    for request in received[2:]:
        raw = request.body["raw_message"].encode()
        metadata = json.loads(raw.split(b"\r\n", 1)[0].partition(b": ")[2])
        assert metadata["postwise_message_id"] in ids
        assert metadata["postwise_campaign_id"] == str(campaign)
        assert dkim.verify(raw, dnsfunc=lambda *_a, **_k: record)


def test_rejections_become_bounces_of_mailchimps_kind_and_never_carry_an_smtp_code(
    make_settings: Any, mailchimp_server: FakeMailchimp
) -> None:
    # What Mailchimp holds against each address, and what compliance must make of it.
    mailchimp_server.rejected.update(
        {
            "user0@example.org": "hard-bounce",
            "user1@example.org": "spam",
            "user2@example.org": "soft-bounce",
            "user3@example.org": "unsub",
            "user4@example.org": "invalid-sender",
        }
    )
    runtime = Runtime(
        make_settings(
            provider="mailchimp",
            provider_options={
                "mailchimp": {"api_key": API_KEY, "base_url": mailchimp_server.base_url}
            },
            frequency_cap="off",
        )
    )
    try:
        campaign = seed_campaign(runtime, 6)
        dispatch_campaign(runtime, campaign)
        drain(runtime, max_wait=30)
        ComplianceConsumer(runtime, name="test").run_once(block_ms=None)
        entries: Any = runtime.redis.xrange(EVENT_STREAM)
        events = [decode_event(fields) for _, fields in entries]
        with runtime.session() as session:
            contacts = {c.id: c for c in session.exec(select(Contact)).all()}
            rows = session.exec(select(LedgerRow).where(LedgerRow.campaign_id == campaign)).all()
            by_email = {contacts[row.contact_id].email: row for row in rows}
            suppressed = {c.email: is_suppressed(session, c.email) for c in contacts.values()}
    finally:
        runtime.close()
    status = {email: row.status for email, row in by_email.items()}
    assert status == {
        "user0@example.org": "bounced",
        "user1@example.org": "bounced",
        "user2@example.org": "bounced",
        "user3@example.org": "dead",
        "user4@example.org": "dead",
        "user5@example.org": "accepted",
    }
    bounces = {
        contacts[e.contact_id].email: e.properties
        for e in events
        if e.type == "bounce" and e.event_id.startswith("bounce:")
    }
    assert {email: p["kind"] for email, p in bounces.items()} == {
        "user0@example.org": "hard",
        "user1@example.org": "complaint",
        "user2@example.org": "soft",
    }
    # Mailchimp's HTTP 200 is recorded as what it is, never as an SMTP reply.
    assert all("smtp_code" not in p and p["http_status"] == 200 for p in bounces.values())
    assert all(row.last_code is None for row in rows)
    # Compliance acted on each kind: suppressed, unsubscribed, counted; the others untouched.
    by_address = {c.email: c for c in contacts.values()}
    assert by_address["user0@example.org"].status == "bounced"
    assert by_address["user1@example.org"].status == "complained"
    assert by_address["user2@example.org"].status == "active"
    assert suppressed == {
        "user0@example.org": True,
        "user1@example.org": True,
        "user2@example.org": False,
        "user3@example.org": False,
        "user4@example.org": False,
        "user5@example.org": False,
    }
    dead = {contacts[e.contact_id].email: e.properties for e in events if e.type == "dead_letter"}
    assert "unsubscribed at Mailchimp" in dead["user3@example.org"]["reason"]
    assert "sender address is not valid" in dead["user4@example.org"]["reason"]
