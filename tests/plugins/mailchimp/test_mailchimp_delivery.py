"""A campaign sent end to end through the delivery pipeline with ``provider = "mailchimp"``."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import dkim
from fake_mailchimp import API_KEY, FakeMailchimp, Reply, error

from postwise.db.models import Campaign, Contact, Template, TemplateVersion
from postwise.db.models import Message as LedgerRow
from postwise.delivery.dispatch import dispatch_campaign
from postwise.delivery.dkim import DkimSigner, generate_key
from postwise.delivery.worker import drain
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
            rows = session.query(LedgerRow).filter(LedgerRow.campaign_id == campaign).all()
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
