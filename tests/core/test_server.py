"""The server: health, OpenAPI, API-key authentication and 4xx answers for bad input."""

from __future__ import annotations

from typing import Any

from litestar.testing import TestClient
from sqlmodel import select

from postwise.apikeys import create_api_key, revoke_api_key
from postwise.db.models import ApiKey
from postwise.runtime import Runtime
from postwise.server.app import create_app


def test_health_reports_database_and_redis(client: Any) -> None:
    response = client.get("/health")
    body = response.json()
    assert body["checks"]["database"] == body["checks"]["redis"] == "ok"
    # On a real Redis the required processes must beat too (tests/core/test_operations.py);
    # the embedded stand-in lives in this process alone.
    assert all(p.startswith("no live ") for p in body["problems"])
    assert response.status_code == (200 if not body["problems"] else 503)


def test_openapi_document_lists_the_contacts_api(client: Any) -> None:
    schema = client.get("/schema/openapi.json").json()
    assert "/v1/contacts" in schema["paths"]


def test_v1_needs_a_valid_api_key(runtime: Runtime) -> None:
    with TestClient(app=create_app(runtime=runtime)) as anonymous:
        missing = anonymous.get("/v1/contacts")
        assert missing.status_code == 401
        assert "Authorization: Bearer" in missing.json()["detail"]
        wrong = anonymous.get(
            "/v1/contacts", headers={"Authorization": "Bearer pw_AAAAAAAA_nope-nope-nope-nope-nope"}
        )
        assert wrong.status_code == 401
        with runtime.session() as session:
            key = create_api_key(session, "ci").key
        assert (
            anonymous.get("/v1/contacts", headers={"Authorization": f"Bearer {key}"}).status_code
            == 200
        )
        with runtime.session() as session:
            revoke_api_key(session, "ci")
        assert (
            anonymous.get("/v1/contacts", headers={"Authorization": f"Bearer {key}"}).status_code
            == 401
        )


def test_api_keys_are_stored_only_as_hashes(runtime: Runtime) -> None:
    with runtime.session() as session:
        created = create_api_key(session, "hashcheck")
    with runtime.session() as session:
        stored = session.exec(select(ApiKey).where(ApiKey.name == "hashcheck")).one()
        assert created.key not in (stored.key_hash, stored.prefix)
        assert len(stored.key_hash) == 64


def test_contacts_api_upserts_by_normalised_email(client: Any) -> None:
    first = client.post("/v1/contacts", json={"email": "Zed@Example.COM", "first_name": "Zed"})
    assert first.status_code == 201, first.text
    assert first.json()["created"] is True
    again = client.post("/v1/contacts", json={"email": "zed@example.com", "tags": ["vip"]})
    assert again.json()["created"] is False
    assert again.json()["contact"]["tags"] == ["vip"]
    contact_id = again.json()["contact"]["id"]
    assert client.get(f"/v1/contacts/{contact_id}").json()["first_name"] == "Zed"


def test_bad_contact_input_gets_422_naming_the_field(client: Any) -> None:
    bad_email = client.post("/v1/contacts", json={"email": "nope"})
    assert bad_email.status_code == 422
    assert bad_email.json()["field"] == "email"
    bad_zone = client.post("/v1/contacts", json={"email": "a@example.com", "timezone": "Mars/Base"})
    assert bad_zone.status_code == 422 and bad_zone.json()["field"] == "timezone"
    unknown = client.post("/v1/contacts", json={"email": "a@example.com", "shoe": 44})
    assert unknown.status_code == 422 and "unknown field" in unknown.json()["detail"]
    not_object = client.post("/v1/contacts", json=[1, 2])
    assert 400 <= not_object.status_code < 500
    assert client.get("/v1/contacts/999999").status_code == 404


def test_segments_api_validates_rules_and_counts(client: Any) -> None:
    client.post("/v1/contacts", json={"email": "v@example.com", "tags": ["vip"]})
    client.post("/v1/contacts", json={"email": "w@example.com"})
    bad = client.post(
        "/v1/segments", json={"name": "x", "rules": {"field": "attributes.a", "op": "sorta"}}
    )
    assert bad.status_code == 422 and bad.json()["field"] == "rules.op"
    made = client.post("/v1/segments", json={"name": "vips", "rules": {"tag": "vip"}})
    assert made.status_code == 201 and made.json()["count"] == 1
    assert (
        client.post("/v1/segments", json={"name": "vips", "rules": {"tag": "vip"}}).status_code
        == 409
    )
    assert len(client.get("/v1/segments/vips/members").json()["contact_ids"]) == 1


def test_the_api_refuses_to_resubscribe_an_unsubscribed_contact(client: Any) -> None:
    made = client.post("/v1/contacts", json={"email": "u@example.com", "status": "unsubscribed"})
    contact_id = made.json()["contact"]["id"]
    again = client.patch(f"/v1/contacts/{contact_id}", json={"status": "active"})
    assert again.status_code == 409
    assert "consent confirmation" in again.json()["detail"]
    assert client.get(f"/v1/contacts/{contact_id}").json()["status"] == "unsubscribed"
