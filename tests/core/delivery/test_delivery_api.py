"""``/v1/templates``, ``/v1/campaigns`` and ``/v1/sends`` through the full app."""

from __future__ import annotations

from typing import Any

from delivery_helpers import add_contacts

from postwise.delivery.worker import drain
from postwise.runtime import Runtime

HTML = (
    "<style>p { color: #333; }</style><p>Hi {{ first_name | default('there') }}, "
    "{% if plan == 'pro' %}thanks for being Pro{% else %}try Pro{% endif %}.</p>"
    '<p><a href="https://www.example.com/x">read</a></p>'
    '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a> {{ postal_address }}</p>'
)


def _template(client: Any, **fields: Any) -> Any:
    body = {"name": "weekly", "subject": "Hello {{ first_name }}", "html": HTML}
    body.update(fields)
    body.setdefault("variables", ["plan"])
    return client.post("/v1/templates", json=body)


def test_a_template_is_validated_saved_and_versioned(client: Any) -> None:
    created = _template(client)
    assert created.status_code == 201, created.text
    data = created.json()
    assert data["current_version"] == 1
    template_id = data["id"]
    again = _template(client)
    assert again.status_code == 409
    version = client.post(
        f"/v1/templates/{template_id}/versions",
        json={"subject": "Hi again {{ first_name }}", "html": HTML, "variables": ["plan"]},
    )
    assert version.status_code == 201
    assert version.json()["version"]["version"] == 2
    shown = client.get(f"/v1/templates/{template_id}", params={"version": 1}).json()
    assert shown["version"]["subject"] == "Hello {{ first_name }}"
    assert shown["current_version"] == 2
    listed = client.get("/v1/templates").json()["templates"]
    assert [t["name"] for t in listed] == ["weekly"]


def test_a_broken_template_is_refused_with_the_line_and_the_problem(client: Any) -> None:
    response = _template(client, html="<p>{{ first_name </p>\n<p>{{ unknown_thing }}</p>")
    assert response.status_code == 422
    body = response.json()
    assert body["field"] == "html"
    assert "line 1" in body["detail"]


def test_an_unknown_variable_is_refused_unless_declared(client: Any) -> None:
    html = HTML.replace("{{ postal_address }}", "{{ postal_address }} {{ coupon }}")
    refused = _template(client, html=html)
    assert refused.status_code == 422
    assert "coupon" in refused.json()["detail"]
    assert _template(client, html=html, variables=["plan", "coupon"]).status_code == 201


def test_a_marketing_template_without_a_postal_address_is_refused(client: Any) -> None:
    html = '<p>Hi</p><a href="{{ unsubscribe_url }}">unsubscribe</a>'
    response = _template(client, html=html)
    assert response.status_code == 409
    assert "postal" in response.json()["detail"].lower()
    assert (
        _template(client, name="receipt", kind="transactional", html="<p>Hi</p>").status_code == 201
    )


def test_a_template_preview_renders_for_a_contact(client: Any, runtime: Runtime) -> None:
    template_id = _template(client).json()["id"]
    (contact,) = add_contacts(runtime, 1, attributes={"plan": "pro"})
    response = client.post(f"/v1/templates/{template_id}/preview", json={"contact_id": contact})
    assert response.status_code == 200, response.text
    rendered = response.json()
    assert rendered["subject"] == "Hello Name0"
    assert "thanks for being Pro" in rendered["html"]
    assert "color:#333" in rendered["html"].replace(" ", "")
    assert "thanks for being Pro" in rendered["text"]


def test_a_campaign_is_created_sent_and_reported(client: Any, runtime: Runtime) -> None:
    add_contacts(runtime, 4)
    add_contacts(runtime, 1, prefix="gone", status="unsubscribed")
    template_id = _template(client).json()["id"]
    created = client.post("/v1/campaigns", json={"name": "launch", "template_id": template_id})
    assert created.status_code == 201, created.text
    campaign_id = created.json()["id"]
    assert created.json()["status"] == "draft"
    sent = client.post(f"/v1/campaigns/{campaign_id}/send")
    assert sent.status_code == 202, sent.text
    if sent.json()["status"] == "dispatching":
        # Real Redis: the dispatch is a job for the workers; run it here.
        assert sent.json()["dispatch_job"]
        drain(runtime, queues=["default"], wait_for_scheduled=False)
    status = client.get(f"/v1/campaigns/{campaign_id}").json()
    assert status["status"] == "sending"
    assert status["dispatch"]["queued"] == 4
    # Without a segment the audience is the active contacts: the unsubscribed one is not in it.
    assert status["dispatch"]["audience"] == 4
    assert status["messages"] == {"queued": 4}
    assert client.post(f"/v1/campaigns/{campaign_id}/send").status_code == 409
    again = client.post("/v1/campaigns", json={"name": "x", "template_id": 999})
    assert again.status_code == 404


def test_a_send_is_queued_once_per_dedupe_key(client: Any, runtime: Runtime) -> None:
    (contact,) = add_contacts(runtime, 1)
    template_id = _template(client).json()["id"]
    body = {
        "contact_id": contact,
        "template_id": template_id,
        "dedupe_key": "welcome-1",
        "context": {"plan": "pro"},
    }
    first = client.post("/v1/sends", json=body)
    assert first.status_code == 202, first.text
    assert first.json()["status"] == "queued"
    second = client.post("/v1/sends", json=body)
    assert second.status_code == 200
    assert second.json() == {**first.json(), "status": "duplicate"}
    shown = client.get(f"/v1/sends/{first.json()['message_id']}").json()
    assert shown["status"] == "queued"
    assert shown["email"] == "user0@example.org"
    assert client.get("/v1/sends/nope").status_code == 404


def test_a_send_to_an_unsubscribed_contact_is_skipped_not_an_error(
    client: Any, runtime: Runtime
) -> None:
    (contact,) = add_contacts(runtime, 1, status="unsubscribed")
    template_id = _template(client).json()["id"]
    response = client.post(
        "/v1/sends", json={"contact_id": contact, "template_id": template_id, "dedupe_key": "k"}
    )
    assert response.status_code == 200
    assert response.json()["status"] == "skipped"
    assert response.json()["reason"] == "unsubscribed"


def test_a_send_naming_a_consent_purpose_needs_that_consent(client: Any, runtime: Runtime) -> None:
    from postwise.compliance.consent import grant_consent

    consented, other = add_contacts(runtime, 2)
    with runtime.session() as session:
        grant_consent(session, runtime.settings, consented, "newsletter", source="test")
    template_id = _template(client).json()["id"]

    def send(contact: int, **extra: Any) -> Any:
        body = {"contact_id": contact, "template_id": template_id, "dedupe_key": "nl-1"}
        return client.post("/v1/sends", json={**body, **extra})

    queued = send(consented, consent_purpose="newsletter")
    assert queued.status_code == 202, queued.text
    shown = client.get(f"/v1/sends/{queued.json()['message_id']}").json()
    assert shown["consent_purpose"] == "newsletter"
    skipped = send(other, consent_purpose="newsletter")
    assert skipped.status_code == 200
    assert (skipped.json()["status"], skipped.json()["reason"]) == ("skipped", "no_consent")
    bad = send(other, consent_purpose="News Letter!")
    assert bad.status_code == 422
    assert "consent_purpose" in bad.text


def test_the_delivery_api_needs_an_api_key(client: Any) -> None:
    client.headers.pop("Authorization")
    assert client.get("/v1/templates").status_code == 401
    assert client.post("/v1/sends", json={}).status_code == 401


def test_the_unsubscribe_link_a_message_carries_unsubscribes_its_contact(
    client: Any, runtime: Runtime
) -> None:
    from postwise.db.models import Contact
    from postwise.delivery.compose import unsubscribe_url

    (contact,) = add_contacts(runtime, 1)
    settings = runtime.settings
    url = unsubscribe_url(
        settings, settings.signing_keys()[0], message_id="m" * 32, contact_id=contact
    )
    assert url.startswith(f"{settings.base_url}/u/")
    response = client.post(
        url.removeprefix(settings.base_url), data={"List-Unsubscribe": "One-Click"}
    )
    assert response.status_code == 200
    with runtime.session() as session:
        stored = session.get(Contact, contact)
        assert stored is not None and stored.status == "unsubscribed"
