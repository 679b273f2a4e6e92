"""The signed Event Webhook, posted through the full app with real ECDSA signatures."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from litestar.testing import TestClient
from sqlmodel import select

from postwise.contacts.normalize import email_hash
from postwise.db.models import Contact, ContactStatus, Suppression
from postwise.db.models import Message as LedgerRow
from postwise.events import EVENT_STREAM, EventEnvelope, decode_event
from postwise.runtime import Runtime
from postwise.server.app import create_app
from postwise.testing.webhooks import SignedWebhookContract
from postwise_sendgrid.webhook import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    load_public_key,
    verify_signature,
)

PATH = "/hooks/sendgrid/events"
ANN = "ann@example.net"
MESSAGE_ID = "msg-ann-0001"


def signed_headers(
    key: ec.EllipticCurvePrivateKey, body: bytes, timestamp: int | None = None
) -> dict[str, str]:
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    signature = key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return {
        SIGNATURE_HEADER: base64.b64encode(signature).decode(),
        TIMESTAMP_HEADER: stamp,
        "Content-Type": "application/json",
    }


def body_of(events: list[dict[str, Any]]) -> bytes:
    # SendGrid's bodies end with CRLF; the signature covers it.
    return json.dumps(events, separators=(",", ":")).encode() + b"\r\n"


def post(
    client: Any, key: ec.EllipticCurvePrivateKey, events: list[dict[str, Any]], **kw: Any
) -> Any:
    body = body_of(events)
    return client.post(PATH, content=body, headers=signed_headers(key, body, **kw))


def sg_event(kind: str, **fields: Any) -> dict[str, Any]:
    event = {
        "email": ANN,
        "timestamp": int(time.time()) - 60,
        "event": kind,
        "sg_event_id": f"{kind}-{uuid.uuid4().hex}",
        "sg_message_id": "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0",
        "postwise_message_id": MESSAGE_ID,
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


def suppressions(runtime: Runtime, address: str = ANN) -> list[str]:
    with runtime.session() as session:
        rows = session.exec(
            select(Suppression).where(Suppression.email_hash == email_hash(address))
        )
        return sorted(row.reason for row in rows)


@pytest.fixture
def ann(runtime: Runtime) -> int:
    """A contact and the ledger row of a message postwise sent her through SendGrid."""
    with runtime.session() as session:
        contact = Contact(email=ANN)
        session.add(contact)
        session.flush()
        assert contact.id is not None
        session.add(
            LedgerRow(id=MESSAGE_ID, contact_id=contact.id, provider="sendgrid", status="accepted")
        )
        return contact.id


# --- signature verification -----------------------------------------------------------------

# SendGrid's published test vector (sendgrid-python, test/unit/test_eventwebhook.py).
VENDOR_KEY = (
    "MFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE83T4O/n84iotIvIW4mdBgQ/7dAfSmpqIM8kF9mN1flpVKS3GRqe62gw+"
    "2fNNRaINXvVpiglSI8eNEc6wEA3F+g=="
)
VENDOR_SIGNATURE = (
    "MEUCIGHQVtGj+Y3LkG9fLcxf3qfI10QysgDWmMOVmxG0u6ZUAiEAyBiXDWzM+uOe5W0JuG+luQAbPIqHh89M15TluLtE"
    "ZtM="
)
VENDOR_TIMESTAMP = "1600112502"
VENDOR_PAYLOAD = (
    json.dumps(
        [
            {
                "email": "hello@world.com",
                "event": "dropped",
                "reason": "Bounced Address",
                "sg_event_id": "ZHJvcC0xMDk5NDkxOS1MUnpYbF9OSFN0T0doUTRrb2ZTbV9BLTA",
                "sg_message_id": (
                    "LRzXl_NHStOGhQ4kofSm_A.filterdrecv-p3mdw1-756b745b58-kmzbl-18-5F5FC76C-9.0"
                ),
                "smtp-id": "<LRzXl_NHStOGhQ4kofSm_A@ismtpd0039p1iad1.sendgrid.net>",
                "timestamp": 1600112492,
            }
        ],
        sort_keys=True,
        separators=(",", ":"),
    )
    + "\r\n"
).encode()


def test_sendgrids_published_signature_verifies() -> None:
    key = load_public_key(VENDOR_KEY)
    assert verify_signature(key, VENDOR_PAYLOAD, VENDOR_SIGNATURE, VENDOR_TIMESTAMP)


@pytest.mark.parametrize(
    ("payload", "signature", "timestamp"),
    [
        (b"payload", VENDOR_SIGNATURE, VENDOR_TIMESTAMP),
        (VENDOR_PAYLOAD, VENDOR_SIGNATURE, "1600112503"),
        (
            VENDOR_PAYLOAD,
            "MEUCIQCtIHJeH93Y+qpYeWrySphQgpNGNr/U+UyUlBkU6n7RAwIgJTz2C+8a8xonZGi6BpSzoQsbVRamr2nl"
            "xFDWYNH3j/0=",
            VENDOR_TIMESTAMP,
        ),
        (VENDOR_PAYLOAD, "not base64 at all!", VENDOR_TIMESTAMP),
    ],
)
def test_a_changed_payload_timestamp_or_signature_does_not_verify(
    payload: bytes, signature: str, timestamp: str
) -> None:
    assert not verify_signature(load_public_key(VENDOR_KEY), payload, signature, timestamp)


def test_another_key_does_not_verify_sendgrids_signature(public_key_text: str) -> None:
    key = load_public_key(public_key_text)
    assert not verify_signature(key, VENDOR_PAYLOAD, VENDOR_SIGNATURE, VENDOR_TIMESTAMP)


def test_a_pem_key_is_accepted_as_well(signing_key: ec.EllipticCurvePrivateKey) -> None:
    from cryptography.hazmat.primitives import serialization

    pem = signing_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    body = b'[{"event":"open"}]'
    headers = signed_headers(signing_key, body, timestamp=1700000000)
    key = load_public_key(pem.decode())
    assert verify_signature(key, body, headers[SIGNATURE_HEADER], "1700000000")


# --- events through the app -----------------------------------------------------------------


def test_delivered_open_and_click_become_events_tied_to_the_ledger(
    client: Any, runtime: Runtime, signing_key: ec.EllipticCurvePrivateKey, ann: int
) -> None:
    events = [
        sg_event("processed"),
        sg_event("delivered", response="250 OK"),
        sg_event("open", sg_machine_open=True, useragent="Mozilla/5.0", ip="17.58.0.1"),
        sg_event("click", url="https://shop.example.com/item/1", useragent="Mozilla/5.0 (X11)"),
    ]
    response = post(client, signing_key, events)
    assert response.status_code == 200, response.text
    assert response.json() == {
        "received": 4,
        "recorded": 3,
        "duplicates": 0,
        "ignored": 1,
        "invalid": 0,
        "expired": 0,
        "unmatched": 0,
    }
    published = {e.type: e for e in stream(runtime)}
    assert set(published) == {"delivered", "open", "click"}
    for event in published.values():
        assert event.message_id == MESSAGE_ID
        assert event.contact_id == ann
        assert event.provider == "sendgrid"
        assert event.properties["source"] == "webhook:sendgrid"
        assert event.properties["recipient_domain"] == "example.net"
        assert ANN not in json.dumps(event.to_dict())
    assert published["open"].properties["machine_open"] is True
    assert published["click"].properties["url"] == "https://shop.example.com/item/1"
    assert published["delivered"].event_id == f"sendgrid:{events[1]['sg_event_id']}:delivered"


def test_a_hard_bounce_suppresses_the_address_and_marks_the_contact_bounced(
    client: Any, runtime: Runtime, signing_key: ec.EllipticCurvePrivateKey, ann: int
) -> None:
    event = sg_event(
        "bounce",
        type="bounce",
        status="5.1.1",
        reason="550 5.1.1 The email account that you tried to reach does not exist.",
        bounce_classification="Invalid Address",
    )
    assert post(client, signing_key, [event]).status_code == 200
    assert contact_status(runtime, ann) == ContactStatus.BOUNCED
    assert suppressions(runtime) == ["hard_bounce"]
    [bounce] = stream(runtime)
    assert bounce.type == "bounce"
    assert bounce.event_id == f"sendgrid:{event['sg_event_id']}"
    assert bounce.properties["kind"] == "hard"
    assert bounce.message_id == MESSAGE_ID


def test_a_blocked_bounce_counts_for_reputation_but_suppresses_nothing(
    client: Any, runtime: Runtime, signing_key: ec.EllipticCurvePrivateKey, ann: int
) -> None:
    event = sg_event(
        "bounce",
        type="blocked",
        status="5.7.1",
        reason="550 5.7.1 Service unavailable; client host blocked using Spamhaus",
        bounce_classification="Reputation",
    )
    assert post(client, signing_key, [event]).status_code == 200
    assert contact_status(runtime, ann) == ContactStatus.ACTIVE
    assert suppressions(runtime) == []
    [bounce] = stream(runtime)
    assert bounce.properties["kind"] == "block"


def test_a_soft_bounce_is_classified_from_the_smtp_reply(
    client: Any, runtime: Runtime, signing_key: ec.EllipticCurvePrivateKey, ann: int
) -> None:
    event = sg_event("bounce", type="bounce", status="4.2.2", reason="452 4.2.2 Mailbox full")
    assert post(client, signing_key, [event]).status_code == 200
    assert contact_status(runtime, ann) == ContactStatus.ACTIVE
    [bounce] = stream(runtime)
    assert bounce.properties["kind"] == "soft"


def test_a_spam_report_is_a_complaint(
    client: Any, runtime: Runtime, signing_key: ec.EllipticCurvePrivateKey, ann: int
) -> None:
    assert post(client, signing_key, [sg_event("spamreport")]).status_code == 200
    assert contact_status(runtime, ann) == ContactStatus.COMPLAINED
    assert "complaint" in suppressions(runtime)
    assert [e.type for e in stream(runtime)] == ["complaint"]


@pytest.mark.parametrize("kind", ["unsubscribe", "group_unsubscribe"])
def test_an_unsubscribe_unsubscribes_the_contact(
    client: Any, runtime: Runtime, signing_key: ec.EllipticCurvePrivateKey, ann: int, kind: str
) -> None:
    assert post(client, signing_key, [sg_event(kind, asm_group_id=42)]).status_code == 200
    assert contact_status(runtime, ann) == ContactStatus.UNSUBSCRIBED
    assert "unsubscribe" in suppressions(runtime)
    [event] = stream(runtime)
    assert event.type == "unsubscribe"
    assert event.contact_id == ann


def test_a_dropped_bounced_address_is_suppressed_and_recorded_as_dropped(
    client: Any, runtime: Runtime, signing_key: ec.EllipticCurvePrivateKey, ann: int
) -> None:
    assert post(client, signing_key, [sg_event("dropped", reason="Bounced Address")]).is_success
    assert suppressions(runtime) == ["hard_bounce"]
    types = sorted(e.type for e in stream(runtime))
    assert types == ["bounce", "dropped"]


def test_events_without_a_ledger_id_are_tied_by_address(
    client: Any, runtime: Runtime, signing_key: ec.EllipticCurvePrivateKey, ann: int
) -> None:
    event = sg_event("delivered")
    del event["postwise_message_id"]
    stranger = sg_event("delivered", email="nobody@example.org")
    del stranger["postwise_message_id"]
    response = post(client, signing_key, [event, stranger])
    assert response.json()["unmatched"] == 1
    [delivered] = stream(runtime)
    assert delivered.contact_id == ann and delivered.message_id is None


def test_a_replayed_request_is_refused_and_records_nothing(
    client: Any, runtime: Runtime, signing_key: ec.EllipticCurvePrivateKey, ann: int
) -> None:
    body = body_of([sg_event("open", useragent="Mozilla/5.0 (X11)"), sg_event("spamreport")])
    headers = signed_headers(signing_key, body)
    first = client.post(PATH, content=body, headers=headers)
    before = stream(runtime)
    second = client.post(PATH, content=body, headers=headers)
    assert first.json()["recorded"] == 2
    assert second.status_code == 401
    assert "replay" in second.json()["detail"]
    assert stream(runtime) == before


def test_events_sent_again_in_a_newly_signed_request_are_recorded_once(
    client: Any, runtime: Runtime, signing_key: ec.EllipticCurvePrivateKey, ann: int
) -> None:
    events = [sg_event("open", useragent="Mozilla/5.0 (X11)"), sg_event("spamreport")]
    first = post(client, signing_key, events)
    before = stream(runtime)
    again = post(client, signing_key, events, timestamp=int(time.time()) - 1)
    assert first.json()["recorded"] == 2
    assert again.status_code == 200
    assert again.json()["duplicates"] == 2 and again.json()["recorded"] == 0
    assert stream(runtime) == before


def test_malformed_events_are_counted_and_the_rest_recorded(
    client: Any, runtime: Runtime, signing_key: ec.EllipticCurvePrivateKey, ann: int
) -> None:
    events: list[Any] = [
        {"event": "open"},
        "not an object",
        sg_event("click"),  # a click without a URL
        sg_event("delivered"),
    ]
    response = post(client, signing_key, events)
    assert response.json()["invalid"] == 3
    assert [e.type for e in stream(runtime)] == ["delivered"]


# --- refusals -------------------------------------------------------------------------------


def test_an_invalid_signature_is_refused_and_nothing_recorded(
    client: Any, runtime: Runtime, signing_key: ec.EllipticCurvePrivateKey, ann: int
) -> None:
    genuine = body_of([sg_event("spamreport")])
    headers = signed_headers(signing_key, genuine)
    forged = body_of([sg_event("spamreport")])
    response = client.post(PATH, content=forged, headers=headers)
    assert response.status_code == 401
    assert "does not verify" in response.json()["detail"]
    assert stream(runtime) == []
    assert contact_status(runtime, ann) == ContactStatus.ACTIVE


def test_a_signature_by_another_key_is_refused(client: Any, runtime: Runtime, ann: int) -> None:
    other = ec.generate_private_key(ec.SECP256R1())
    response = post(client, other, [sg_event("spamreport")])
    assert response.status_code == 401
    assert contact_status(runtime, ann) == ContactStatus.ACTIVE


def test_an_unsigned_request_is_refused(client: Any, runtime: Runtime) -> None:
    response = client.post(PATH, content=body_of([sg_event("spamreport")]))
    assert response.status_code == 401
    assert SIGNATURE_HEADER in response.json()["detail"]
    assert stream(runtime) == []


@pytest.mark.parametrize("age", [2 * 86400, -3600])
def test_an_old_or_future_timestamp_is_refused(
    client: Any, runtime: Runtime, signing_key: ec.EllipticCurvePrivateKey, ann: int, age: int
) -> None:
    response = post(client, signing_key, [sg_event("spamreport")], timestamp=int(time.time()) - age)
    assert response.status_code == 401
    assert stream(runtime) == []
    assert contact_status(runtime, ann) == ContactStatus.ACTIVE


def test_a_signed_body_that_is_not_json_is_a_bad_request(
    client: Any, signing_key: ec.EllipticCurvePrivateKey
) -> None:
    body = b"not json"
    response = client.post(PATH, content=body, headers=signed_headers(signing_key, body))
    assert response.status_code == 400


def test_events_are_refused_while_no_public_key_is_configured(
    make_settings: Any, signing_key: ec.EllipticCurvePrivateKey
) -> None:
    runtime = Runtime(make_settings(provider_options={"sendgrid": {"api_key": "SG.x"}}))
    try:
        with TestClient(app=create_app(runtime=runtime)) as client:
            response = post(client, signing_key, [sg_event("spamreport")])
        assert response.status_code == 401
        assert "webhook_public_key" in response.json()["detail"]
        assert stream(runtime) == []
    finally:
        runtime.close()


class TestSendGridWebhookContract(SignedWebhookContract):
    path = PATH
    max_age_seconds = 86_400

    @pytest.fixture(autouse=True)
    def _key(self, signing_key: ec.EllipticCurvePrivateKey, ann: int) -> None:
        self.key = signing_key

    def signed_request(self, at: float) -> tuple[bytes, dict[str, str]]:
        body = body_of([sg_event("spamreport", timestamp=int(at))])
        return body, signed_headers(self.key, body, timestamp=int(at))
