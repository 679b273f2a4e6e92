"""The message-event webhook, posted through the full app with real HMAC-SHA1 signatures."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from typing import Any
from urllib.parse import urlencode

import pytest
from fake_mailchimp import API_KEY, WEBHOOK_KEY
from litestar.testing import TestClient
from sqlmodel import select

from postwise.contacts.normalize import email_hash
from postwise.db.models import Contact, ContactStatus, Suppression
from postwise.db.models import Message as LedgerRow
from postwise.events import EVENT_STREAM, EventEnvelope, decode_event
from postwise.runtime import Runtime
from postwise.server.app import create_app
from postwise.testing.webhooks import SignedWebhookContract
from postwise_mailchimp.webhook import SIGNATURE_HEADER, sign_request

PATH = "/hooks/mailchimp/events"
#: The URL Mailchimp signs with: the test server's default base_url plus the path.
URL = "http://127.0.0.1:8000" + PATH
ANN = "ann@example.net"
MESSAGE_ID = "msg-ann-0001"
MANDRILL_ID = "exampleaaaaaaaaaaaaaaaaaaaaaaaaa"


def documented_signature(key: str, url: str, params: dict[str, str]) -> str:
    """Mailchimp's documented algorithm, written out independently of the plugin."""
    signed = url
    for name in sorted(params):
        signed += name + params[name]
    return base64.b64encode(hmac.new(key.encode(), signed.encode(), hashlib.sha1).digest()).decode()


def post(client: Any, events: list[Any], *, key: str = WEBHOOK_KEY, url: str = URL) -> Any:
    params = {"mandrill_events": json.dumps(events)}
    headers = {
        SIGNATURE_HEADER: documented_signature(key, url, params),
        "Content-Type": "application/x-www-form-urlencoded",
    }
    return client.post(PATH, content=urlencode(params).encode(), headers=headers)


def md_event(kind: str, *, ts: int | None = None, **fields: Any) -> dict[str, Any]:
    """An event shaped like Mailchimp's documented examples, sent by postwise."""
    msg = {
        "ts": int(time.time()) - 300,
        "subject": "Hello",
        "email": ANN,
        "sender": "news@example.com",
        "tags": [],
        "state": "sent",
        "metadata": {"postwise_message_id": MESSAGE_ID, "postwise_campaign_id": "7"},
        "_id": MANDRILL_ID,
        "_version": "exampleaaaaaaaaaaaaaaa",
    }
    msg.update(fields.pop("msg", {}))
    event = {
        "event": kind,
        "msg": msg,
        "_id": MANDRILL_ID,
        "ts": int(time.time()) - 60 if ts is None else ts,
    }
    event.update(fields)
    return event


def stream(runtime: Runtime) -> list[EventEnvelope]:
    entries: Any = runtime.redis.xrange(EVENT_STREAM)
    return [decode_event(fields) for _, fields in entries]


def contact_status(runtime: Runtime, contact_id: int) -> str:
    with runtime.session() as session:
        contact = session.get(Contact, contact_id)
        assert contact is not None
        return contact.status


def suppressions(runtime: Runtime) -> list[str]:
    with runtime.session() as session:
        query = select(Suppression).where(Suppression.email_hash == email_hash(ANN))
        return sorted(row.reason for row in session.exec(query))


@pytest.fixture
def ann(runtime: Runtime) -> int:
    """A contact and the ledger row of a message postwise sent her through Mailchimp."""
    with runtime.session() as session:
        contact = Contact(email=ANN)
        session.add(contact)
        session.flush()
        assert contact.id is not None
        session.add(
            LedgerRow(id=MESSAGE_ID, contact_id=contact.id, provider="mailchimp", status="accepted")
        )
        return contact.id


def test_the_plugin_signs_as_mailchimp_documents() -> None:
    params = {"mandrill_events": '[{"event":"send"}]', "b": "2", "a": "1"}
    assert sign_request("k", URL, params) == documented_signature("k", URL, params)


def test_mailchimp_can_check_that_the_url_exists(client: Any) -> None:
    response = client.head(PATH)
    assert response.status_code == 200


def test_send_open_and_click_become_events_tied_to_the_ledger(
    client: Any, runtime: Runtime, ann: int
) -> None:
    events = [
        md_event("send"),
        md_event("open", user_agent="Mozilla/5.0 (Windows NT 10.0) Outlook", ip="203.0.113.9"),
        md_event(
            "click", url="https://shop.example.com/item/1", user_agent="Mozilla/5.0 (X11) Firefox"
        ),
        md_event("deferral"),
    ]
    response = post(client, events)
    assert response.status_code == 200, response.text
    assert response.json()["recorded"] == 3 and response.json()["ignored"] == 1
    published = {e.type: e for e in stream(runtime)}
    assert set(published) == {"delivered", "open", "click"}
    for event in published.values():
        assert event.message_id == MESSAGE_ID
        assert event.contact_id == ann
        assert event.provider == "mailchimp"
        assert event.properties["provider_message_id"] == MANDRILL_ID
    assert "machine_open" not in published["open"].properties
    assert published["click"].properties["url"] == "https://shop.example.com/item/1"


def test_send_and_delivered_of_one_message_give_one_delivered_event(
    client: Any, runtime: Runtime, ann: int
) -> None:
    post(client, [md_event("send"), md_event("delivered", ts=int(time.time()) - 30)])
    assert [e.type for e in stream(runtime)] == ["delivered"]


def test_two_opens_of_one_message_are_two_events(client: Any, runtime: Runtime, ann: int) -> None:
    now = int(time.time())
    response = post(client, [md_event("open", ts=now - 100), md_event("open", ts=now - 50)])
    assert response.json()["recorded"] == 2
    assert [e.type for e in stream(runtime)] == ["open", "open"]


def test_a_hard_bounce_suppresses_the_address(client: Any, runtime: Runtime, ann: int) -> None:
    event = md_event(
        "hard_bounce",
        msg={
            "state": "bounced",
            "bounce_description": "bad_mailbox",
            "diag": "smtp;550 5.1.1 The email account that you tried to reach does not exist.",
        },
    )
    assert post(client, [event]).status_code == 200
    assert contact_status(runtime, ann) == ContactStatus.BOUNCED
    assert suppressions(runtime) == ["hard_bounce"]
    [bounce] = stream(runtime)
    assert bounce.properties["kind"] == "hard"
    assert bounce.properties["smtp_code"] == 550 and bounce.properties["status"] == "5.1.1"


def test_a_soft_bounce_is_counted_not_suppressed(client: Any, runtime: Runtime, ann: int) -> None:
    event = md_event("soft_bounce", msg={"diag": "smtp;452 4.2.2 Mailbox full"})
    assert post(client, [event]).status_code == 200
    assert contact_status(runtime, ann) == ContactStatus.ACTIVE
    assert suppressions(runtime) == []
    [bounce] = stream(runtime)
    assert bounce.properties["kind"] == "soft"


def test_a_spam_report_is_a_complaint(client: Any, runtime: Runtime, ann: int) -> None:
    assert post(client, [md_event("spam")]).status_code == 200
    assert contact_status(runtime, ann) == ContactStatus.COMPLAINED
    assert [e.type for e in stream(runtime)] == ["complaint"]


def test_an_unsub_unsubscribes_the_contact(client: Any, runtime: Runtime, ann: int) -> None:
    assert post(client, [md_event("unsub")]).status_code == 200
    assert contact_status(runtime, ann) == ContactStatus.UNSUBSCRIBED
    assert suppressions(runtime) == ["unsubscribe"]
    [event] = stream(runtime)
    assert event.type == "unsubscribe" and event.contact_id == ann


def test_a_reject_for_a_known_bounce_is_suppressed_and_recorded_as_dropped(
    client: Any, runtime: Runtime, ann: int
) -> None:
    event = md_event("reject", msg={"state": "rejected", "reject": {"reason": "hard-bounce"}})
    assert post(client, [event]).status_code == 200
    assert suppressions(runtime) == ["hard_bounce"]
    assert sorted(e.type for e in stream(runtime)) == ["bounce", "dropped"]


def test_sync_events_are_ignored(client: Any, runtime: Runtime) -> None:
    sync = {"type": "blacklist", "action": "add", "reject": {"email": ANN}, "ts": int(time.time())}
    response = post(client, [sync])
    assert response.json()["ignored"] == 1
    assert stream(runtime) == []


def test_a_replayed_request_is_refused_and_records_nothing(
    client: Any, runtime: Runtime, ann: int
) -> None:
    events = [md_event("open", user_agent="Mozilla/5.0 (X11) Firefox"), md_event("spam")]
    first = post(client, events)
    before = stream(runtime)
    second = post(client, events)
    assert first.json()["recorded"] == 2
    assert second.status_code == 401 and "replay" in second.json()["detail"]
    assert stream(runtime) == before


def test_events_sent_again_in_another_request_are_recorded_once(
    client: Any, runtime: Runtime, ann: int
) -> None:
    events = [md_event("open", user_agent="Mozilla/5.0 (X11) Firefox"), md_event("spam")]
    first = post(client, events)
    before = stream(runtime)
    again = post(client, [*events, {"event": "deferral", "msg": {}, "ts": 1}])
    assert first.json()["recorded"] == 2
    assert again.json()["duplicates"] == 2 and again.json()["recorded"] == 0
    assert stream(runtime) == before


def test_old_events_are_skipped_and_a_request_of_only_old_events_refused(
    client: Any, runtime: Runtime, ann: int
) -> None:
    old = int(time.time()) - 2 * 86400
    refused = post(client, [md_event("spam", ts=old)])
    assert refused.status_code == 401
    assert contact_status(runtime, ann) == ContactStatus.ACTIVE
    mixed = post(client, [md_event("spam", ts=old), md_event("open")])
    assert mixed.json()["expired"] == 1 and mixed.json()["recorded"] == 1
    assert [e.type for e in stream(runtime)] == ["open"]


def test_an_invalid_signature_is_refused_and_nothing_recorded(
    client: Any, runtime: Runtime, ann: int
) -> None:
    response = post(client, [md_event("spam")], key="not-the-key")
    assert response.status_code == 401
    assert stream(runtime) == []
    assert contact_status(runtime, ann) == ContactStatus.ACTIVE


def test_a_signature_for_another_url_is_refused(client: Any, runtime: Runtime, ann: int) -> None:
    response = post(client, [md_event("spam")], url="https://elsewhere.example.com" + PATH)
    assert response.status_code == 401
    assert "exactly the one entered" in response.json()["detail"]
    assert stream(runtime) == []


def test_an_unsigned_request_is_refused(client: Any, runtime: Runtime) -> None:
    body = urlencode({"mandrill_events": json.dumps([md_event("spam")])}).encode()
    response = client.post(
        PATH, content=body, headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert response.status_code == 401
    assert stream(runtime) == []


def test_a_configured_webhook_url_is_what_the_signature_covers(make_settings: Any) -> None:
    public = "https://mail.example.com/hooks/mailchimp/events"
    options = {"api_key": API_KEY, "webhook_key": WEBHOOK_KEY, "webhook_url": public}
    runtime = Runtime(make_settings(provider_options={"mailchimp": options}))
    try:
        with TestClient(app=create_app(runtime=runtime)) as client:
            assert post(client, [md_event("open")], url=URL).status_code == 401
            accepted = post(client, [md_event("open")], url=public)
        assert accepted.status_code == 200 and accepted.json()["received"] == 1
    finally:
        runtime.close()


def test_events_are_refused_while_no_webhook_key_is_configured(make_settings: Any) -> None:
    runtime = Runtime(make_settings(provider_options={"mailchimp": {"api_key": API_KEY}}))
    try:
        with TestClient(app=create_app(runtime=runtime)) as client:
            response = post(client, [md_event("spam")])
        assert response.status_code == 401
        assert "webhook_key" in response.json()["detail"]
        assert stream(runtime) == []
    finally:
        runtime.close()


def test_a_signed_form_without_json_events_is_a_bad_request(client: Any) -> None:
    params = {"mandrill_events": "not json"}
    headers = {
        SIGNATURE_HEADER: documented_signature(WEBHOOK_KEY, URL, params),
        "Content-Type": "application/x-www-form-urlencoded",
    }
    response = client.post(PATH, content=urlencode(params).encode(), headers=headers)
    assert response.status_code == 400


def test_an_unknown_message_still_counts_its_event_but_ties_nothing(
    client: Any, runtime: Runtime
) -> None:
    stranger = md_event("open", msg={"metadata": {}, "email": f"{uuid.uuid4().hex}@example.org"})
    response = post(client, [stranger])
    assert response.json()["unmatched"] == 1
    assert stream(runtime) == []


class TestMailchimpWebhookContract(SignedWebhookContract):
    path = PATH
    max_age_seconds = 86_400
    signs_time = False

    @pytest.fixture(autouse=True)
    def _ann(self, ann: int) -> None:
        pass

    def signed_request(self, at: float) -> tuple[bytes, dict[str, str]]:
        params = {"mandrill_events": json.dumps([md_event("spam", ts=int(at))])}
        headers = {
            SIGNATURE_HEADER: documented_signature(WEBHOOK_KEY, URL, params),
            "Content-Type": "application/x-www-form-urlencoded",
        }
        return urlencode(params).encode(), headers
