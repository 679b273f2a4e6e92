"""The ledger keeps an HTTP API's status apart from the SMTP reply code, and ``GET /v1/sends/{id}``
shows both."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from delivery_helpers import add_contacts, add_template
from esp_fakes import PROVIDER, EspApi, use_esp

from postwise.delivery.worker import drain
from postwise.runtime import Runtime
from postwise.settings import Settings
from postwise.testing.http import Reply
from postwise.testing.smtp import FaultySmtpServer


@pytest.fixture
def esp() -> Iterator[EspApi]:
    with EspApi() as api:
        yield api


@pytest.fixture
def settings(make_settings: Any, smtp_server: FaultySmtpServer) -> Settings:
    """The app's runtime sends through the ESP fake by default, and has SMTP as well."""
    result: Settings = make_settings(
        provider=PROVIDER,
        smtp_port=smtp_server.port,
        smtp_starttls="off",
        frequency_cap="off",
        max_attempts=2,
        retry_base_seconds=1.0,  # RQ schedules in whole seconds
        retry_max_seconds=1.0,
    )
    return result


def _send(client: Any, runtime: Runtime, key: str, **extra: Any) -> str:
    (contact,) = add_contacts(runtime, 1, prefix=key)
    template = add_template(runtime, name=f"t-{key}")
    body = {"contact_id": contact, "template_id": template, "dedupe_key": key, **extra}
    response = client.post("/v1/sends", json=body)
    assert response.status_code == 202, response.text
    message_id: str = response.json()["message_id"]
    return message_id


def test_an_esp_answer_is_recorded_as_its_http_status_never_as_an_smtp_code(
    client: Any, runtime: Runtime, esp: EspApi
) -> None:
    use_esp(runtime, esp)
    esp.reply(Reply(429, {"Retry-After": "1"}, {"status": "error"}))
    message_id = _send(client, runtime, "throttled")
    drain(runtime, wait_for_scheduled=False)
    waiting = client.get(f"/v1/sends/{message_id}").json()
    assert (waiting["status"], waiting["attempts"]) == ("queued", 0)
    assert (waiting["last_http_status"], waiting["last_code"]) == (429, None)
    drain(runtime)
    shown = client.get(f"/v1/sends/{message_id}").json()
    assert (shown["status"], shown["attempts"]) == ("accepted", 1)
    assert (shown["last_http_status"], shown["last_code"]) == (200, None)
    assert shown["provider_message_id"].startswith("esp-")


def test_a_refusal_by_the_esp_keeps_its_status_in_the_dead_letter(
    client: Any, runtime: Runtime, esp: EspApi
) -> None:
    use_esp(runtime, esp)
    esp.reply(Reply(503, body={"status": "error"}), Reply(503, body={"status": "error"}))
    message_id = _send(client, runtime, "refused")
    drain(runtime)
    shown = client.get(f"/v1/sends/{message_id}").json()
    assert (shown["status"], shown["attempts"]) == ("dead", 2)
    assert (shown["last_http_status"], shown["last_code"]) == (503, None)


def test_an_smtp_reply_is_recorded_as_its_code_without_an_http_status(
    client: Any, runtime: Runtime, smtp_server: FaultySmtpServer
) -> None:
    message_id = _send(client, runtime, "smtp", provider="smtp")
    drain(runtime)
    assert len(smtp_server.accepted) == 1
    shown = client.get(f"/v1/sends/{message_id}").json()
    assert shown["status"] == "accepted"
    assert (shown["last_code"], shown["last_http_status"]) == (250, None)
