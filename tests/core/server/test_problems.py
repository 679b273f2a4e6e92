"""The shared API contract: problem details, hostile input, scopes and rate limits."""

from __future__ import annotations

import json
from typing import Any

import pytest
from litestar.testing import TestClient
from sqlmodel import select

from postwise.apikeys import create_api_key, granted_scopes
from postwise.db.models import ApiKey, Contact
from postwise.runtime import Runtime
from postwise.server.app import create_app
from postwise.server.validation import json_depth

PROBLEM = "application/problem+json"


def _is_problem(response: Any, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert body["type"].startswith("urn:postwise:problem:")
    assert body["title"] and body["detail"]
    return body


def _key(runtime: Runtime, name: str, *scopes: str, rate_limit: int | None = None) -> str:
    with runtime.session() as session:
        made = create_api_key(session, name, scopes=scopes or ("admin",), rate_limit=rate_limit)
        return made.key


def test_errors_are_rfc9457_problems(client: Any) -> None:
    _is_problem(client.get("/v1/contacts/999999"), 404)
    body = _is_problem(client.post("/v1/contacts", json={"email": "nope"}), 422)
    assert body["field"] == "email"
    _is_problem(client.get("/v1/no-such-thing"), 404)
    anonymous = client.get("/v1/contacts", headers={"Authorization": ""})
    assert "Bearer" in _is_problem(anonymous, 401)["detail"]
    assert anonymous.headers["www-authenticate"].startswith("Bearer")


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("get", "/v1/contacts/2147483648"),
        ("get", "/v1/contacts/99999999999999999999999"),
        ("delete", "/v1/triggers/70687507962"),
        ("get", "/v1/campaigns/2147483648"),
        ("post", "/v1/contacts/2147483648/erase"),
    ],
)
def test_ids_above_32_bits_in_a_path_are_404(client: Any, method: str, path: str) -> None:
    body = _is_problem(getattr(client, method)(path), 404)
    assert body["field"].endswith("_id")


def test_ids_above_32_bits_in_a_query_are_422_naming_it(client: Any) -> None:
    body = _is_problem(client.get("/v1/contacts?after=3675442188367"), 422)
    assert body["field"] == "after"


def test_a_nul_byte_in_a_text_field_is_422_and_nothing_is_written(
    client: Any, runtime: Runtime
) -> None:
    body = _is_problem(
        client.post("/v1/contacts", json={"email": "n@example.com", "first_name": "a\u0000b"}), 422
    )
    assert body["field"] == "first_name"
    nested = client.post(
        "/v1/contacts", json={"email": "n@example.com", "attributes": {"k": ["x", "\u0000"]}}
    )
    assert _is_problem(nested, 422)["field"] == "attributes.k[1]"
    assert _is_problem(client.get("/v1/contacts?email=a%00b"), 422)["field"] == "email"
    with runtime.session() as session:
        assert session.exec(select(Contact)).first() is None


def test_deeply_nested_json_is_refused_without_recursing(client: Any) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    headers = {"Content-Type": "application/json"}
    for path in ("/v1/events", "/v1/contacts", "/v1/triggers"):
        body = _is_problem(client.post(path, content=deep, headers=headers), 400)
        assert "nested" in body["detail"]
    assert json_depth(b'{"a": "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["}') == 1


def test_invalid_utf8_and_wrong_content_types(client: Any) -> None:
    bad = client.post(
        "/v1/contacts",
        content=b'{"email": "a@example.com", "first_name": "\xff\xfe"}',
        headers={"Content-Type": "application/json"},
    )
    assert "UTF-8" in _is_problem(bad, 400)["detail"]
    form = client.post(
        "/v1/contacts",
        content=b"email=a@example.com",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert "application/json" in _is_problem(form, 415)["detail"]
    malformed = client.post(
        "/v1/contacts", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert 400 <= malformed.status_code < 500
    assert malformed.headers["content-type"].startswith(PROBLEM)


def test_oversized_bodies_are_413(make_settings: Any) -> None:
    runtime = Runtime(make_settings(api_max_body_bytes=4096))
    try:
        key = _key(runtime, "big")
        with TestClient(app=create_app(runtime=runtime)) as client:
            response = client.post(
                "/v1/events",
                content=json.dumps([{"type": "x" * 10_000}]),
                headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
            )
            _is_problem(response, 413)
    finally:
        runtime.close()


def test_existing_keys_are_admin_and_scopes_are_enforced(runtime: Runtime) -> None:
    reader = _key(runtime, "reader", "read")
    sender = _key(runtime, "sender", "send")
    with runtime.session() as session:
        admin = create_api_key(session, "old").key
        record = session.exec(select(ApiKey).where(ApiKey.name == "old")).one()
        assert record.scopes == "admin" and "privacy" in granted_scopes(record)
    with TestClient(app=create_app(runtime=runtime)) as client:

        def call(key: str, method: str, path: str, **kwargs: Any) -> Any:
            headers = {"Authorization": f"Bearer {key}"}
            return getattr(client, method)(path, headers=headers, **kwargs)

        made = call(admin, "post", "/v1/contacts", json={"email": "s@example.com"})
        contact_id = made.json()["contact"]["id"]
        assert call(reader, "get", f"/v1/contacts/{contact_id}").status_code == 200
        refused = call(reader, "post", f"/v1/contacts/{contact_id}/erase")
        assert "'privacy'" in _is_problem(refused, 403)["detail"]
        paused = call(reader, "post", "/v1/reputation/pause", json={"stream": "provider:smtp"})
        _is_problem(paused, 403)
        _is_problem(call(reader, "post", "/v1/contacts", json={"email": "t@example.com"}), 403)
        _is_problem(call(sender, "post", "/v1/contacts", json={"email": "t@example.com"}), 403)
        assert call(sender, "get", "/v1/sends/nope").status_code == 404
        assert call(admin, "post", f"/v1/contacts/{contact_id}/erase").status_code == 200


def test_a_key_over_its_rate_limit_gets_429_with_retry_after(runtime: Runtime) -> None:
    key = _key(runtime, "slow", "read", rate_limit=3)
    with TestClient(app=create_app(runtime=runtime)) as client:
        headers = {"Authorization": f"Bearer {key}"}
        statuses = [client.get("/v1/segments", headers=headers).status_code for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
        limited = client.get("/v1/segments", headers=headers)
        _is_problem(limited, 429)
        assert 1 <= int(limited.headers["retry-after"]) <= 61


def test_the_openapi_document_lists_problems_and_public_routes(client: Any) -> None:
    schema = client.get("/schema/openapi.json").json()
    assert "security" not in schema["paths"]["/health"]["get"]
    contact = schema["paths"]["/v1/contacts/{contact_id}"]["get"]
    assert contact["security"] == [{"apiKey": []}]
    for status in ("401", "403", "404", "422", "429"):
        content = contact["responses"][status]["content"]
        assert content[PROBLEM]["schema"] == {"$ref": "#/components/schemas/Problem"}
    upsert = schema["paths"]["/v1/contacts"]["post"]["responses"]
    assert {"400", "413", "415", "422"} <= set(upsert)
    assert set(schema["components"]["schemas"]["Problem"]["required"]) >= {
        "type",
        "title",
        "status",
        "detail",
    }


def test_listing_contacts_returns_their_tags(client: Any) -> None:
    client.post("/v1/contacts", json={"email": "a@example.com", "tags": ["vip", "beta"]})
    client.post("/v1/contacts", json={"email": "b@example.com"})
    page = client.get("/v1/contacts?limit=1").json()
    assert page["contacts"][0]["tags"] == ["beta", "vip"]
    rest = client.get(f"/v1/contacts?after={page['next_after']}").json()
    assert rest["contacts"][0]["tags"] == [] and rest["next_after"] is None


def test_the_cli_creates_keys_with_scopes_and_rate_limits(runtime: Runtime) -> None:
    from click.testing import CliRunner

    from postwise.cli import cli

    settings = runtime.settings
    env = {
        "POSTWISE_DATA_DIR": str(settings.data_dir),
        "POSTWISE_DATABASE_URL": settings.resolved_database_url,
        "POSTWISE_REDIS_URL": settings.redis_url,
        "POSTWISE_SECRET_KEY": settings.secret_key.get_secret_value(),
    }
    runner = CliRunner()
    made = runner.invoke(
        cli,
        ["apikeys", "create", "shop", "--scope", "send", "--scope", "read", "--rate-limit", "60"],
        env=env,
    )
    assert made.exit_code == 0, made.output
    assert made.output.startswith("pw_")
    listed = runner.invoke(cli, ["apikeys", "list", "--json"], env=env)
    [row] = [r for r in json.loads(listed.output) if r["name"] == "shop"]
    assert row["scopes"] == ["read", "send"] and row["rate_limit"] == 60
    bad = runner.invoke(cli, ["apikeys", "create", "x", "--scope", "root"], env=env)
    assert bad.exit_code != 0 and "root" in bad.output


def test_deleting_a_segment_a_campaign_uses_is_409_naming_it(client: Any) -> None:
    client.post("/v1/contacts", json={"email": "a@example.com", "tags": ["vip"]})
    assert client.post("/v1/segments", json={"name": "vips", "rules": {"tag": "vip"}}).is_success
    template = client.post(
        "/v1/templates",
        json={
            "name": "t",
            "subject": "Hi",
            "html": '<p>{{ postal_address }} <a href="{{ unsubscribe_url }}">u</a></p>',
            "text": "{{ postal_address }} {{ unsubscribe_url }}",
        },
    )
    assert template.status_code == 201, template.text
    template_id = template.json()["id"]
    campaign = client.post(
        "/v1/campaigns", json={"name": "launch", "template_id": template_id, "segment": "vips"}
    )
    assert campaign.status_code == 201, campaign.text
    refused = _is_problem(client.delete("/v1/segments/vips"), 409)
    assert "launch" in refused["detail"]
    assert client.get("/v1/segments/vips").status_code == 200
    in_use = _is_problem(client.delete(f"/v1/templates/{template_id}"), 409)
    assert "campaign" in in_use["detail"]
    campaign_id = campaign.json()["id"]
    assert client.delete(f"/v1/campaigns/{campaign_id}").status_code == 204
    assert client.delete("/v1/segments/vips").status_code == 204
    assert client.delete(f"/v1/templates/{template_id}").status_code == 204
    assert client.get(f"/v1/templates/{template_id}").status_code == 404


def test_lists_page_with_after_and_unknown_fields_are_named(client: Any) -> None:
    for n in range(3):
        client.post(
            "/v1/templates",
            json={"name": f"t{n}", "subject": "s", "html": "<p>x</p>", "kind": "transactional"},
        )
    first = client.get("/v1/templates?limit=2").json()
    assert len(first["templates"]) == 2 and first["next_after"]
    rest = client.get(f"/v1/templates?limit=2&after={first['next_after']}").json()
    assert len(rest["templates"]) == 1 and rest["next_after"] is None
    assert client.get("/v1/campaigns").json()["next_after"] is None
    extra = client.post(
        "/v1/sends", json={"contact_id": 1, "template_id": 1, "dedupe_key": "k", "x": 1}
    )
    body = _is_problem(extra, 422)
    assert body["field"] == "x" and "dedupe_key" in body["detail"]


def test_contact_attributes_are_capped(client: Any) -> None:
    big = {"blob": "x" * 20_000}
    refused = _is_problem(
        client.post("/v1/contacts", json={"email": "a@example.com", "attributes": big}), 422
    )
    assert refused["field"] == "attributes"
    many = {f"k{i}": i for i in range(101)}
    _is_problem(
        client.post("/v1/contacts", json={"email": "a@example.com", "attributes": many}), 422
    )
    made = client.post(
        "/v1/contacts", json={"email": "a@example.com", "attributes": {"a": "x" * 9000}}
    )
    contact_id = made.json()["contact"]["id"]
    grown = client.patch(f"/v1/contacts/{contact_id}", json={"attributes": {"b": "y" * 9000}})
    assert _is_problem(grown, 422)["field"] == "attributes"
    assert set(client.get(f"/v1/contacts/{contact_id}").json()["attributes"]) == {"a"}


def test_a_lax_body_value_is_refused_not_coerced(client: Any) -> None:
    made = client.post("/v1/contacts", json={"email": "a@example.com"}).json()["contact"]["id"]
    coerced = client.post(f"/v1/contacts/{made}/consent", json={"granted": 0})
    assert _is_problem(coerced, 422)["field"] == "granted"


def test_experiments_page_like_every_list(client: Any) -> None:
    page = client.get("/v1/experiments?limit=1").json()
    assert page == {"experiments": [], "next_after": None}
    _is_problem(client.get("/v1/experiments?status=sideways"), 422)
    _is_problem(client.get("/v1/experiments?after=2147483648"), 422)
