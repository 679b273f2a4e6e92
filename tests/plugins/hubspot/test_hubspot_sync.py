"""HubSpot end to end: polls, webhooks and engagement through a running postwise."""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta
from typing import Any

import pytest
from fake_hubspot import BASE, FakeHubSpot, Reply
from hubspot_helpers import BASE_URL, CLIENT_SECRET
from sqlmodel import select

from postwise.crm.connector import CrmUnavailableError
from postwise.crm.engagement import push_engagement
from postwise.crm.scheduler import paused_until, run_round
from postwise.crm.sync import poll
from postwise.db.models import Contact, ContactStatus, CrmLink, CrmSyncState, utcnow
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


def a_day_passes(runtime: Runtime) -> None:
    """As if the last reconciliation of the recycle bin had been two days ago."""
    runtime.redis.set(
        "postwise:crm:hubspot:reconciled_at", (utcnow() - timedelta(days=2)).isoformat()
    )


def test_an_idle_poll_costs_one_call_and_deletions_come_by_webhook_or_daily_listing(
    runtime: Runtime, hubspot_server: FakeHubSpot, client: Any
) -> None:
    kept = hubspot_server.add("kept@example.com")
    hooked = hubspot_server.add("hooked@example.com")
    quiet = hubspot_server.add("quiet@example.com")
    for n in range(450):  # a recycle bin of 5 pages
        hubspot_server.archive(hubspot_server.add(f"old{n}@example.com"))
    poll(runtime, "hubspot")  # the first sync reconciles once

    idle_calls = []
    for _ in range(3):
        before = len(hubspot_server.received)
        poll(runtime, "hubspot")
        idle_calls.append(len(hubspot_server.received) - before)
    print(f"hubspot API calls per idle poll (450 archived contacts): {idle_calls}")
    assert max(idle_calls) <= 2, idle_calls  # it was 1 search + 5 recycle-bin pages

    hubspot_server.archive(hooked)
    events = [
        {
            "subscriptionType": "contact.deletion",
            "objectId": int(hooked),
            "occurredAt": int(time.time() * 1000),
            "eventId": 1,
        }
    ]
    body = json.dumps(events).encode()
    assert client.post(HOOK, content=body, headers=signed(body)).status_code in (200, 202, 204)
    hubspot_server.archive(quiet)  # no webhook for this one (a missed delivery)
    poll(runtime, "hubspot")
    with runtime.session() as session:
        linked = {link.external_id for link in session.exec(select(CrmLink))}
    assert linked == {kept, quiet}

    a_day_passes(runtime)
    poll(runtime, "hubspot")
    with runtime.session() as session:
        assert {link.external_id for link in session.exec(select(CrmLink))} == {kept}


def test_a_poll_lands_new_changed_and_deleted_contacts_and_a_rerun_changes_nothing(
    runtime: Runtime, hubspot_server: FakeHubSpot
) -> None:
    ada = hubspot_server.add("ada@example.com", firstname="Ada", country="gb")
    bob = hubspot_server.add("bob@example.com", firstname="Bob")
    first = poll(runtime, "hubspot")
    hubspot_server.change(ada, lastname="Lovelace", hs_email_optout="true")
    hubspot_server.archive(bob)
    a_day_passes(runtime)  # the recycle bin is reconciled daily (deletions: webhooks)

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


@pytest.mark.parametrize(
    ("outage", "message"),
    [
        (Reply(502, b"<html><body><h1>502 Bad Gateway</h1></body></html>"), "HTTP 502"),
        (Reply(200, b'{"results": [{"id": "1", "properties": {"em'), "not valid JSON"),
        (Reply(200, b"<!DOCTYPE html><html>Maintenance</html>"), "not valid JSON"),
    ],
)
def test_a_sync_that_dies_midway_keeps_its_checkpoint_and_resumes_there(
    runtime: Runtime, hubspot_server: FakeHubSpot, outage: Reply, message: str
) -> None:
    for n in range(1000):  # 10 search pages of 100
        hubspot_server.add(f"p{n}@example.com")
    hubspot_server.outage = outage
    hubspot_server.outage_after = 4  # pages 1-4 answer, then the vendor breaks

    with pytest.raises(CrmUnavailableError, match=message):
        poll(runtime, "hubspot")
    with runtime.session() as session:
        state = session.get(CrmSyncState, "hubspot")
        done = {link.external_id for link in session.exec(select(CrmLink))}
    assert state is not None and state.cursor is not None  # checkpointed, not lost
    assert len(done) == 400  # whole pages applied; nothing beyond them
    newest = datetime.fromisoformat(state.cursor)
    pending = [c.updated_at for cid, c in hubspot_server.contacts.items() if cid not in done]
    assert min(pending) >= newest  # the cursor never passed a record not yet applied

    hubspot_server.outage_after = None
    before = len(hubspot_server.received)
    poll(runtime, "hubspot")
    resumed_pages = sum(1 for r in hubspot_server.received[before:] if r.path == f"{BASE}/search")
    assert len(contacts(runtime)) == 1000
    # 6 pages left plus the 2-minute overlap (120 contacts here): not the 10 from zero
    assert resumed_pages <= 8, resumed_pages


def test_a_used_up_daily_limit_pauses_the_connector_until_reset_with_an_alert(
    runtime: Runtime, hubspot_server: FakeHubSpot, caplog: pytest.LogCaptureFixture
) -> None:
    hubspot_server.add("ada@example.com")
    daily = {
        "status": "error",
        "message": "You have reached your daily limit.",
        "errorType": "RATE_LIMIT",
        "policyName": "DAILY",
    }
    hubspot_server.reply(f"{BASE}/search", Reply(429, daily, {}))

    first = run_round(runtime)
    calls = len(hubspot_server.received)
    second = run_round(runtime)  # the next round does not call HubSpot at all

    assert "paused_until" in first["hubspot"] and "daily API limit" in first["hubspot"]["error"]
    assert second["hubspot"] == {"paused_until": first["hubspot"]["paused_until"]}
    assert len(hubspot_server.received) == calls == 1
    assert any("ALERT crm hubspot: daily API limit" in r.getMessage() for r in caplog.records)
    until = paused_until(runtime, "hubspot")
    assert until is not None and until > utcnow()


def _engage_everyone(runtime: Runtime) -> None:
    with runtime.session() as session:
        for contact in session.exec(select(Contact)):
            contact.engagement_score = (contact.engagement_score or 0) + 1.0
            contact.engagement_updated_at = utcnow()
            session.add(contact)


def _links(runtime: Runtime) -> dict[str, int]:
    with runtime.session() as session:
        return {link.external_id: link.contact_id for link in session.exec(select(CrmLink))}


def test_a_merge_seen_by_poll_relinks_to_the_survivor_and_nothing_goes_to_the_merged_id(
    runtime: Runtime, hubspot_server: FakeHubSpot
) -> None:
    ada = hubspot_server.add("ada@example.com", firstname="Ada")
    dup = hubspot_server.add("ada.l@example.com", firstname="Ada L")
    poll(runtime, "hubspot")
    hubspot_server.merge(ada, dup)

    poll(runtime, "hubspot")
    _engage_everyone(runtime)
    push_engagement(runtime, "hubspot")

    assert set(_links(runtime)) == {ada}  # the merged-away id's link is gone
    assert len(contacts(runtime)) == 2  # both people kept in postwise
    assert hubspot_server.writes_to_merged == []


def test_a_merge_webhook_with_a_new_object_id_moves_the_link(
    runtime: Runtime, hubspot_server: FakeHubSpot, client: Any
) -> None:
    ada = hubspot_server.add("ada@example.com", firstname="Ada")
    dup = hubspot_server.add("ada.l@example.com", firstname="Ada L")
    poll(runtime, "hubspot")
    ada_contact = _links(runtime)[ada]
    new = hubspot_server.merge(ada, dup, new_id="99001")
    event = {
        "subscriptionType": "contact.merge",
        "objectId": int(ada),
        "primaryObjectId": int(ada),
        "mergedObjectIds": [int(dup)],
        "newObjectId": int(new),
        "numberOfPropertiesMoved": 1,
        "occurredAt": int(time.time() * 1000),
        "eventId": 7,
    }
    body = json.dumps([event]).encode()

    assert client.post(HOOK, content=body, headers=signed(body)).status_code in (200, 202, 204)
    _engage_everyone(runtime)
    push_engagement(runtime, "hubspot")

    assert _links(runtime) == {new: ada_contact}  # moved to the new id, same person
    assert hubspot_server.writes_to_merged == []
