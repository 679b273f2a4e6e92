"""The CRM webhook route, the /v1/crm API and the postwise crm commands."""

from __future__ import annotations

import json
from typing import Any

from click.testing import CliRunner
from crm_memory import SIGNATURE_HEADER, MemoryCrm, sign
from sqlmodel import select

from postwise.cli.crm import crm
from postwise.db.models import Contact, CrmLink
from postwise.delivery.worker import drain
from postwise.runtime import Runtime


def count_contacts(runtime: Runtime) -> int:
    with runtime.session() as session:
        return len(session.exec(select(Contact)).all())


def test_a_webhook_with_a_bad_or_missing_signature_gets_401_and_changes_nothing(
    client: Any, runtime: Runtime, memory_crm: MemoryCrm
) -> None:
    memory_crm.put("c1", "ada@example.com")
    body = json.dumps({"ids": ["c1"]}).encode()

    forged = client.post(
        "/hooks/crm/memory", content=body, headers={SIGNATURE_HEADER: sign(b"other")}
    )
    unsigned = client.post("/hooks/crm/memory", content=body)

    assert (forged.status_code, unsigned.status_code) == (401, 401)
    assert "signature" in forged.json()["detail"]
    assert count_contacts(runtime) == 0


def test_a_signed_webhook_applies_the_change_once(
    client: Any, runtime: Runtime, memory_crm: MemoryCrm
) -> None:
    memory_crm.put("c1", "ada@example.com", first_name="Ada")
    body = json.dumps({"ids": ["c1"]}).encode()
    headers = {SIGNATURE_HEADER: sign(body), "Authorization": ""}

    first = client.post("/hooks/crm/memory", content=body, headers=headers)
    again = client.post("/hooks/crm/memory", content=body, headers=headers)

    assert first.status_code == 200 and first.json()["created"] == 1
    assert again.status_code == 200 and again.json()["unchanged"] == 1
    assert count_contacts(runtime) == 1


def test_webhooks_of_an_unconfigured_crm_get_404_and_unreadable_bodies_400(
    client: Any,
) -> None:
    assert client.post("/hooks/crm/pipedrive", content=b"{}").status_code == 404
    body = b'{"ids": "c1"}'
    signed = {SIGNATURE_HEADER: sign(body)}
    response = client.post("/hooks/crm/memory", content=body, headers=signed)
    assert response.status_code == 400


def test_the_sync_api_polls_and_pushes_and_status_shows_it(
    client: Any, runtime: Runtime, memory_crm: MemoryCrm
) -> None:
    memory_crm.put("c1", "ada@example.com", unsubscribed=True)

    queued = client.post("/v1/crm/memory/sync", json={})
    assert queued.status_code == 202, queued.text
    url = queued.json()["status_url"]
    assert queued.headers["location"] == url
    assert client.get(url).json()["status"] == "queued"
    assert memory_crm.fetches == []  # nothing read from the CRM inside the request
    drain(runtime)  # a worker runs it
    done = client.get(url).json()
    status = client.get("/v1/crm/memory")
    listing = client.get("/v1/crm")

    assert done["status"] == "finished", done
    assert done["result"]["poll"]["created"] == 1
    assert done["result"]["push"]["pushed"] == 1
    assert client.get("/v1/crm/memory/sync/nope").status_code == 404
    assert client.get(url.replace("/memory/", "/other/")).status_code == 404
    body = status.json()
    assert (body["links"], body["pending_push"], body["installed"]) == (1, 0, True)
    assert body["last"]["poll"]["ok"] is True and body["last"]["push"]["pushed"] == 1
    assert [s["system"] for s in listing.json()["systems"]] == ["memory"]
    assert client.get("/v1/crm/pipedrive").status_code == 404


def test_the_crm_api_needs_an_api_key(client: Any) -> None:
    response = client.post("/v1/crm/memory/sync", json={}, headers={"Authorization": ""})
    assert response.status_code == 401


def test_cli_sync_push_and_status(runtime: Runtime, memory_crm: MemoryCrm) -> None:
    memory_crm.put("c1", "ada@example.com")
    runner = CliRunner()

    synced = runner.invoke(crm, ["sync", "memory", "--json"], obj={"runtime": runtime})
    pushed = runner.invoke(crm, ["push", "memory"], obj={"runtime": runtime})
    status = runner.invoke(crm, ["status", "--json"], obj={"runtime": runtime})
    once = runner.invoke(crm, ["run", "--once"], obj={"runtime": runtime})

    assert synced.exit_code == 0, synced.output
    assert json.loads(synced.output)["poll"]["created"] == 1
    assert pushed.exit_code == 0 and "push:" in pushed.output
    assert json.loads(status.output)["systems"][0]["links"] == 1
    assert json.loads(once.output)["memory"]["poll"]["unchanged"] == 1
    with runtime.session() as session:
        assert len(session.exec(select(CrmLink)).all()) == 1
