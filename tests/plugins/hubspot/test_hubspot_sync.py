"""HubSpot end to end: polls, webhooks and engagement through a running postwise."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from fake_hubspot import BASE, FakeHubSpot
from hubspot_helpers import BASE_URL, CLIENT_SECRET
from sqlmodel import select

from postwise.crm.engagement import push_engagement
from postwise.crm.sync import poll
from postwise.db.models import Contact, ContactStatus, CrmLink, utcnow
from postwise.runtime import Runtime
from postwise.testing.webhooks import SignedWebhookContract
from postwise_hubspot.signature import signature_v3

HOOK = "/hooks/crm/hubspot"


def contacts(runtime: Runtime) -> dict[str, Contact]:
    with runtime.session() as session:
        return {c.email: c for c in session.exec(select(Contact))}


def signed(body: bytes, at: float | None = None) -> dict[str, str]:
    timestamp = str(int((time.time() if at is None else at) * 1000))
    signature = signature_v3(CLIENT_SECRET, "POST", BASE_URL + HOOK, body, timestamp)
    return {
        "X-HubSpot-Signature-v3": signature,
        "X-HubSpot-Request-Timestamp": timestamp,
        "Content-Type": "application/json",
    }


def test_a_poll_lands_new_changed_and_deleted_contacts_and_a_rerun_changes_nothing(
    runtime: Runtime, hubspot_server: FakeHubSpot
) -> None:
    ada = hubspot_server.add("ada@example.com", firstname="Ada", country="gb")
    bob = hubspot_server.add("bob@example.com", firstname="Bob")
    first = poll(runtime, "hubspot")
    hubspot_server.change(ada, lastname="Lovelace", hs_email_optout="true")
    hubspot_server.archive(bob)

    second = poll(runtime, "hubspot")
    third = poll(runtime, "hubspot")

    assert (first.created, second.updated, second.unlinked, second.unsubscribed) == (2, 1, 1, 1)
    assert (third.created, third.updated, third.unlinked) == (0, 0, 0)
    people = contacts(runtime)
    assert people["ada@example.com"].last_name == "Lovelace"
    assert people["ada@example.com"].country == "GB"
    assert people["ada@example.com"].status == ContactStatus.UNSUBSCRIBED
    assert "bob@example.com" in people  # unlinked, not erased
    with runtime.session() as session:
        assert [link.external_id for link in session.exec(select(CrmLink))] == [ada]


def test_engagement_push_sends_only_what_changed(
    runtime: Runtime, hubspot_server: FakeHubSpot
) -> None:
    ids = [hubspot_server.add(f"p{n}@example.com") for n in range(3)]
    poll(runtime, "hubspot")
    with runtime.session() as session:
        contact = session.exec(select(Contact).where(Contact.email == "p1@example.com")).one()
        contact.engagement_score = 3.0
        contact.engagement_updated_at = utcnow()
        session.add(contact)

    report = push_engagement(runtime, "hubspot")
    again = push_engagement(runtime, "hubspot")

    updates = hubspot_server.requests(f"{BASE}/batch/update")
    assert (report.pushed, again.pushed, len(updates)) == (1, 0, 1)
    assert [i["id"] for i in updates[0].body["inputs"]] == [ids[1]]
    assert hubspot_server.contacts[ids[1]].properties["postwise_engagement_score"] == "3.0"


def test_a_signed_webhook_lands_the_contact_and_a_redelivery_changes_nothing(
    client: Any, runtime: Runtime, hubspot_server: FakeHubSpot
) -> None:
    ada = hubspot_server.add("ada@example.com", firstname="Ada")
    body = json.dumps(
        [
            {
                "eventId": 7,
                "subscriptionType": "contact.creation",
                "objectId": int(ada),
                "occurredAt": 1700000000000,
                "attemptNumber": 0,
            }
        ]
    ).encode()

    first = client.post(HOOK, content=body, headers=signed(body))
    # HubSpot delivers again with a new timestamp, so a new signature.
    again = client.post(HOOK, content=body, headers=signed(body, time.time() - 1))

    assert first.status_code == 200 and first.json()["created"] == 1
    assert again.status_code == 200 and again.json()["unchanged"] == 1
    assert contacts(runtime)["ada@example.com"].first_name == "Ada"


def test_a_webhook_with_a_bad_signature_gets_401_and_changes_nothing(
    client: Any, runtime: Runtime, hubspot_server: FakeHubSpot
) -> None:
    ada = hubspot_server.add("ada@example.com")
    body = json.dumps(
        [
            {
                "eventId": 7,
                "subscriptionType": "contact.creation",
                "objectId": int(ada),
                "occurredAt": 1700000000000,
            }
        ]
    ).encode()
    headers = signed(body)
    headers["X-HubSpot-Signature-v3"] = signature_v3(
        "not-the-secret", "POST", BASE_URL + HOOK, body, headers["X-HubSpot-Request-Timestamp"]
    )

    response = client.post(HOOK, content=body, headers=headers)

    assert response.status_code == 401
    assert contacts(runtime) == {}
    assert hubspot_server.requests(f"{BASE}/batch/read") == []


class TestHubSpotWebhookContract(SignedWebhookContract):
    path = HOOK

    @pytest.fixture(autouse=True)
    def _hubspot(self, hubspot_server: FakeHubSpot) -> None:
        self.ada = hubspot_server.add("ada@example.com", firstname="Ada")

    def signed_request(self, at: float) -> tuple[bytes, dict[str, str]]:
        event = {"eventId": 7, "subscriptionType": "contact.creation", "objectId": int(self.ada)}
        body = json.dumps([{**event, "occurredAt": int(at * 1000)}]).encode()
        return body, signed(body, at)
