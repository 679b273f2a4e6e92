"""A list's consent purpose through the segments API and CLI: accepted, returned, validated,
and enforced when a campaign is sent to the list."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlmodel import select

from postwise.cli import main
from postwise.db.models import Contact, Segment
from postwise.delivery.worker import drain
from postwise.runtime import Runtime
from postwise.settings import Settings

HTML = (
    "<p>Hi {{ first_name | default('there') }}</p>"
    '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a> {{ postal_address }}</p>'
)


def _contacts(runtime: Runtime, *emails: str) -> list[int]:
    with runtime.session() as session:
        contacts = [Contact(email=email) for email in emails]
        session.add_all(contacts)
        session.flush()
        return [c.id for c in contacts if c.id is not None]


def _stored_purpose(runtime: Runtime, name: str) -> str | None:
    with runtime.session() as session:
        return session.exec(select(Segment.consent_purpose).where(Segment.name == name)).one()


def test_a_list_is_created_shown_listed_and_changed_with_its_consent_purpose(
    client: Any, runtime: Runtime
) -> None:
    ids = _contacts(runtime, "ann@example.com", "bob@example.com")
    created = client.post(
        "/v1/segments",
        json={
            "name": "weekly",
            "kind": "static",
            "contact_ids": ids,
            "consent_purpose": "newsletter",
        },
    )
    assert created.status_code == 201, created.text
    assert created.json()["consent_purpose"] == "newsletter"
    assert created.json()["count"] == 2
    assert client.get("/v1/segments/weekly").json()["consent_purpose"] == "newsletter"
    plain = client.post("/v1/segments", json={"name": "vips", "rules": {"tag": "vip"}})
    assert plain.json()["consent_purpose"] is None
    listed = {s["name"]: s["consent_purpose"] for s in client.get("/v1/segments").json()}
    assert listed == {"vips": None, "weekly": "newsletter"}
    changed = client.patch("/v1/segments/vips", json={"consent_purpose": "vip-offers"})
    assert changed.status_code == 200, changed.text
    assert changed.json()["consent_purpose"] == "vip-offers"
    cleared = client.patch("/v1/segments/weekly", json={"consent_purpose": None})
    assert cleared.json()["consent_purpose"] is None
    assert _stored_purpose(runtime, "weekly") is None
    assert _stored_purpose(runtime, "vips") == "vip-offers"


@pytest.mark.parametrize(
    "purpose",
    ["Newsletter", "news letter", "", "-news", "x" * 51, "news/letter", 7],
    ids=["upper-case", "space", "empty", "leading-dash", "too-long", "slash", "number"],
)
def test_a_bad_consent_purpose_is_refused_naming_the_field(client: Any, purpose: Any) -> None:
    created = client.post(
        "/v1/segments", json={"name": "weekly", "kind": "static", "consent_purpose": purpose}
    )
    # A purpose that is not a string fails the body's schema; a bad name, the rule: both 422.
    assert created.status_code == 422, created.text
    assert created.json()["field"] == "consent_purpose"
    if not isinstance(purpose, int):
        assert "^[a-z][a-z0-9_.-]{0,49}$" in created.json()["detail"]
    # Nothing half-written: the list does not exist.
    assert client.get("/v1/segments/weekly").status_code == 404
    client.post("/v1/segments", json={"name": "weekly", "kind": "static"})
    patched = client.patch("/v1/segments/weekly", json={"consent_purpose": purpose})
    assert patched.status_code == 422, patched.text
    assert patched.json()["field"] == "consent_purpose"
    assert client.get("/v1/segments/weekly").json()["consent_purpose"] is None


def test_patching_a_field_other_than_the_consent_purpose_is_refused(client: Any) -> None:
    client.post("/v1/segments", json={"name": "weekly", "kind": "static"})
    patched = client.patch("/v1/segments/weekly", json={"name": "monthly"})
    assert patched.status_code == 422
    assert patched.json()["detail"] == "unknown field; allowed: consent_purpose"
    assert patched.json()["field"] == "name"
    assert client.patch("/v1/segments/nope", json={"consent_purpose": "x"}).status_code == 404


def test_a_campaign_to_a_consent_list_reports_the_skipped_as_no_consent(
    client: Any, runtime: Runtime
) -> None:
    granted, pending, other, never = _contacts(
        runtime, "ann@example.com", "bob@example.com", "cy@example.com", "dee@example.com"
    )
    consents = [
        (granted, {"purpose": "newsletter"}),
        (pending, {"purpose": "newsletter", "double_opt_in": True}),
        (other, {"purpose": "marketing"}),
    ]
    for contact_id, body in consents:
        answer = client.post(f"/v1/contacts/{contact_id}/consent", json={"source": "t", **body})
        assert answer.status_code in (200, 201), answer.text
    client.post(
        "/v1/segments",
        json={
            "name": "weekly",
            "kind": "static",
            "contact_ids": [granted, pending, other, never],
            "consent_purpose": "newsletter",
        },
    )
    template = client.post("/v1/templates", json={"name": "w", "subject": "Hi", "html": HTML})
    assert template.status_code == 201, template.text
    campaign = client.post(
        "/v1/campaigns",
        json={"name": "launch", "template_id": template.json()["id"], "segment": "weekly"},
    ).json()["id"]
    sent = client.post(f"/v1/campaigns/{campaign}/send")
    assert sent.status_code == 202, sent.text
    if sent.json()["status"] == "dispatching":
        # Real Redis: the dispatch is a job for the workers; run it here.
        drain(runtime, queues=["default"], wait_for_scheduled=False)
    status = client.get(f"/v1/campaigns/{campaign}").json()
    assert status["dispatch"]["queued"] == 1
    assert status["dispatch"]["skipped"] == {"no_consent": 3}


def _env(settings: Settings) -> dict[str, str]:
    return {
        "POSTWISE_DATA_DIR": str(settings.data_dir),
        "POSTWISE_DATABASE_URL": settings.resolved_database_url,
        "POSTWISE_REDIS_URL": settings.redis_url,
        "POSTWISE_SECRET_KEY": settings.secret_key.get_secret_value(),
        "POSTWISE_LOG_LEVEL": "WARNING",
    }


def test_the_cli_creates_shows_sets_and_clears_a_lists_consent_purpose(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, value in _env(runtime.settings).items():
        monkeypatch.setenv(name, value)

    def run(*args: str) -> tuple[int, str]:
        """Run ``postwise segments ARGS`` as the console script does: (exit status, output)."""
        try:
            main(["segments", *args])
            code = 0
        except SystemExit as exit:
            code = int(exit.code or 0)
        captured = capsys.readouterr()
        return code, captured.out + captured.err

    made = run("create", "vips", "--rules", '{"tag": "vip"}', "--consent-purpose", "vip-offers")
    assert made[0] == 0, made[1]
    assert _stored_purpose(runtime, "vips") == "vip-offers"
    code, output = run("consent", "vips", "--json")
    assert json.loads(output) == {"segment": "vips", "consent_purpose": "vip-offers"}
    assert run("consent", "vips", "newsletter") == (
        0,
        "segment 'vips' needs consent for 'newsletter'\n",
    )
    assert _stored_purpose(runtime, "vips") == "newsletter"
    assert run("consent", "vips", "--none") == (0, "segment 'vips' needs no consent of its own\n")
    assert _stored_purpose(runtime, "vips") is None
    code, output = run("consent", "vips", "News Letter")
    assert code == 2
    assert output.startswith("error: consent_purpose: 'News Letter' is not a consent purpose")
    assert _stored_purpose(runtime, "vips") is None
    code, output = run("create", "more", "--rules", '{"tag": "x"}', "--consent-purpose", "BAD")
    assert (code, output.split(":")[:2]) == (2, ["error", " consent_purpose"])
    assert run("count", "more")[0] == 2  # nothing was created
