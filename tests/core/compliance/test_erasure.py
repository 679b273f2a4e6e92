"""Erasure removes a person from every store; export returns everything held about them."""

from __future__ import annotations

import json
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from litestar.testing import TestClient
from sqlmodel import select

from postwise.analytics.collector import Collector, open_sink
from postwise.apikeys import create_api_key
from postwise.compliance.bounces import classify_message
from postwise.compliance.erasure import erase_contact
from postwise.compliance.processing import apply_classification
from postwise.compliance.suppression import is_suppressed
from postwise.contacts.importer import import_contacts
from postwise.contacts.normalize import email_hash
from postwise.db.models import AuditRecord, CrmLink, Message, MessageStatus, SQLModel, Suppression
from postwise.delivery.dispatch import submit_send
from postwise.delivery.requests import SendRequest
from postwise.delivery.templates import create_template
from postwise.delivery.worker import drain
from postwise.devtools.sink import SmtpSink
from postwise.errors import NotFoundError
from postwise.runtime import Runtime
from postwise.server.app import create_app

EMAIL = "zebediah.quillfeather@example.org"
FIRST, LAST = "Zebediah", "Quillfeather"
NEEDLES = (EMAIL, FIRST.lower(), LAST.lower())
FIXTURES = Path(__file__).parent / "fixtures" / "bounces"
TEMPLATE_HTML = (
    "<p>Hello {{ first_name }}, your order {{ order_ref }} shipped.</p>"
    '<p>{{ postal_address }} <a href="{{ unsubscribe_url }}">Unsubscribe</a></p>'
)


def _database_hits(runtime: Runtime) -> dict[str, int]:
    """Rows per table in which any column, as text, holds the email or a name."""
    hits: dict[str, int] = {}
    with runtime.engine.connect() as connection:
        for table in SQLModel.metadata.sorted_tables:
            for row in connection.execute(sa.select(table)):
                text = " ".join(str(value) for value in row).lower()
                if any(needle in text for needle in NEEDLES):
                    hits[table.name] = hits.get(table.name, 0) + 1
    return hits


def _redis_values(client: Any, key: bytes) -> list[bytes]:
    kind = client.type(key)
    kind = kind.decode() if isinstance(kind, bytes) else kind
    if kind == "string":
        return [client.get(key)]
    if kind == "hash":
        values = []
        for field, value in client.hgetall(key).items():
            values.extend([field, value])
            if key.startswith(b"rq:job:") and field == b"data":
                # RQ stores job arguments compressed (JSON with postwise's serializer).
                values.append(zlib.decompress(value))
        return values
    if kind == "list":
        return list(client.lrange(key, 0, -1))
    if kind == "set":
        return list(client.smembers(key))
    if kind == "zset":
        return [member for member, _ in client.zrange(key, 0, -1, withscores=True)]
    if kind == "stream":
        return [
            json.dumps({k.decode(): v.decode() for k, v in fields.items()}).encode()
            for _id, fields in client.xrange(key)
        ]
    return []


def _redis_hits(runtime: Runtime) -> list[str]:
    """Keys whose name or value holds the email or a name."""
    client = runtime.redis
    found = []
    for key in client.scan_iter(count=1000):
        blobs = [key, *_redis_values(client, key)]
        text = b" ".join(b for b in blobs if b).decode("utf-8", "replace").lower()
        if any(needle in text for needle in NEEDLES):
            found.append(key.decode())
    return found


@pytest.fixture
def sink(tmp_path: Path) -> Iterator[SmtpSink]:
    server = SmtpSink(tmp_path / "outbox")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def world(make_settings: Any, sink: SmtpSink) -> Iterator[Runtime]:
    settings = make_settings(
        smtp_port=sink.port,
        smtp_starttls="off",
        unsubscribe_mailto="unsubscribe@example.com",
        frequency_cap="100/24h",
    )
    runtime = Runtime(settings)
    yield runtime
    runtime.close()


def _create_through_every_path(runtime: Runtime, tmp_path: Path) -> tuple[int, TestClient[Any]]:
    settings = runtime.settings
    # Import: the contact arrives from a CSV file with a tag.
    csv = tmp_path / "contacts.csv"
    csv.write_text(f"email,first_name,last_name,tags\n{EMAIL},{FIRST},{LAST},vip\n")
    with runtime.session() as session:
        assert import_contacts(session, csv).written
    # API: the product updates it, adds an attribute holding the name, a static segment.
    with runtime.session() as session:
        key = create_api_key(session, "erasure-test").key
    client = TestClient(app=create_app(runtime=runtime), raise_server_exceptions=False)
    client.__enter__()
    client.headers["Authorization"] = f"Bearer {key}"
    response = client.post(
        "/v1/contacts",
        json={
            "email": EMAIL.upper(),
            "attributes": {"nickname": f"{FIRST} the Bold"},
            "tags": ["vip", "beta"],
        },
    )
    assert response.status_code in (200, 201), response.text
    cid = response.json()["contact"]["id"]
    assert (
        client.post("/v1/segments", json={"name": "static-list", "kind": "static"}).status_code
        == 201
    )
    assert client.post("/v1/segments/static-list/members", json=[cid]).status_code in (200, 201)
    # Consent, with the IP and wording of the sign-up form.
    assert (
        client.post(
            f"/v1/contacts/{cid}/consent",
            json={"source": "signup-form", "ip": "203.0.113.77", "wording_version": "v2"},
        ).status_code
        == 201
    )
    # CRM link.
    with runtime.session() as session:
        session.add(CrmLink(contact_id=cid, system="hubspot", external_id="hs-5551"))
    # Sends: one delivered through SMTP, one still queued in RQ.
    with runtime.session() as session:
        template = create_template(
            session,
            settings,
            name="order",
            subject="Your order",
            html=TEMPLATE_HTML,
            variables=["order_ref"],
        )
        template_id = template.id
    assert template_id is not None
    sent = submit_send(
        runtime,
        SendRequest(
            contact_id=cid,
            template_id=template_id,
            dedupe_key="order-1",
            context={"order_ref": f"{LAST}-0001"},
        ),
    )
    assert sent.status == "queued", sent
    drain(runtime)
    queued = submit_send(
        runtime,
        SendRequest(
            contact_id=cid,
            template_id=template_id,
            dedupe_key="order-2",
            context={"order_ref": f"{LAST}-0002"},
        ),
    )
    assert queued.status == "queued", queued
    # A bounce reply that quotes the address, and a soft bounce counted in Redis.
    with runtime.session() as session:
        row = session.get(Message, sent.message_id)
        assert row is not None
        row.last_error = f"452 4.2.2 <{EMAIL}>: mailbox of {FIRST} {LAST} is full"
    soft = classify_message((FIXTURES / "postfix-mailbox-full.eml").read_bytes())
    from dataclasses import replace

    apply_classification(runtime, replace(soft, recipient=EMAIL))
    # Events: product events by address through the API, stored by the collector, and one
    # left on the stream (not yet collected).
    stored = client.post(
        "/v1/events",
        json=[
            {
                "event_id": "evt-1",
                "type": "purchase",
                "email": EMAIL,
                "properties": {"note": f"gift for {FIRST}"},
            },
            {"event_id": "evt-2", "type": "click", "message_id": sent.message_id},
        ],
    )
    assert stored.status_code == 202, stored.text
    collector = Collector(runtime, open_sink(runtime))
    collector.run(exit_when_idle=0.2)
    assert collector.stats.stored >= 3  # the two above and the delivery's "sent" event
    assert (
        client.post(
            "/v1/events",
            json={
                "event_id": "evt-3",
                "type": "visit",
                "email": EMAIL,
                "properties": {"page": f"/{LAST}"},
            },
        ).status_code
        == 202
    )
    return cid, client


def test_erasure_leaves_no_trace_in_any_store(
    world: Runtime, sink: SmtpSink, tmp_path: Path
) -> None:
    runtime = world
    cid, client = _create_through_every_path(runtime, tmp_path)
    try:
        before_db = _database_hits(runtime)
        assert {"contact", "message", "event"} <= set(before_db), before_db
        assert _redis_hits(runtime), "the stream should name the contact before erasure"
        assert sink.count == 1

        response = client.post(f"/v1/contacts/{cid}/erase")
        assert response.status_code == 200, response.text
        report = response.json()
        assert report["complete"], report["incomplete"]
        assert report["counts"]["contacts"] == 1 and report["counts"]["crm_links"] == 1
        assert report["counts"]["ledger_rows_skipped"] == 1

        assert _database_hits(runtime) == {}
        assert _redis_hits(runtime) == []
        with runtime.session() as session:
            assert all(
                m.contact_id is None and m.context is None for m in session.exec(select(Message))
            )
            statuses = sorted(m.status for m in session.exec(select(Message)))
            assert statuses == [MessageStatus.ACCEPTED, MessageStatus.SKIPPED]
            assert is_suppressed(session, EMAIL, transactional=True)
            entry = session.exec(
                select(Suppression).where(
                    Suppression.email_hash == email_hash(EMAIL), Suppression.reason == "erasure"
                )
            ).one()
            assert entry.scope == "all"
            [audit] = session.exec(select(AuditRecord).where(AuditRecord.action == "erase"))
            assert audit.subject_hash == email_hash(EMAIL)
        # The job queued before the erasure runs and sends nothing.
        drain(runtime)
        assert sink.count == 1
        assert client.get(f"/v1/contacts/{cid}/export").status_code == 404
        assert client.post(f"/v1/contacts/{cid}/erase").status_code == 404
    finally:
        client.__exit__(None, None, None)


def test_export_returns_everything_held(world: Runtime, tmp_path: Path) -> None:
    runtime = world
    cid, client = _create_through_every_path(runtime, tmp_path)
    try:
        response = client.get(f"/v1/contacts/{cid}/export")
        assert response.status_code == 200
        data = response.json()
        assert data["contact"]["email"] == EMAIL
        assert data["contact"]["attributes"]["nickname"] == f"{FIRST} the Bold"
        assert sorted(data["contact"]["tags"]) == ["beta", "vip"]
        assert data["segments"] == ["static-list"]
        assert data["consent"][0]["ip"] == "203.0.113.77"
        assert data["crm_links"] == [
            {
                "system": "hubspot",
                "external_id": "hs-5551",
                "remote_updated_at": None,
                "synced_at": None,
            }
        ]
        assert {m["context"]["order_ref"] for m in data["messages"]} == {
            f"{LAST}-0001",
            f"{LAST}-0002",
        }
        assert {"evt-1", "evt-2"} <= {e["event_id"] for e in data["events"]}
        json.dumps(data)
    finally:
        client.__exit__(None, None, None)


def test_erasing_an_address_without_a_contact_still_suppresses_it(runtime: Runtime) -> None:
    report = erase_contact(runtime, email="Nobody@Example.com", actor="test")
    assert report.contact_id is None and report.complete
    with runtime.session() as session:
        assert is_suppressed(session, "nobody@example.com", transactional=True)
        assert session.exec(select(AuditRecord)).one().subject_hash == email_hash(
            "nobody@example.com"
        )


def test_an_erasure_suppression_cannot_be_lifted(client: Any, runtime: Runtime) -> None:
    erase_contact(runtime, email="gone@example.com")
    listing = client.get("/v1/suppressions?reason=erasure").json()
    [entry] = listing["items"]
    lifted = client.delete(f"/v1/suppressions/{entry['id']}")
    assert lifted.status_code == 409 and "permanent" in lifted.json()["detail"]


def test_the_cli_erases_by_address_and_exports(runtime: Runtime, tmp_path: Path) -> None:
    from click.testing import CliRunner

    from postwise.cli import cli
    from postwise.db.models import Contact

    with runtime.session() as session:
        session.add(Contact(email=EMAIL, first_name=FIRST, last_name=LAST))
    settings = runtime.settings
    env = {
        "POSTWISE_DATA_DIR": str(settings.data_dir),
        "POSTWISE_DATABASE_URL": settings.resolved_database_url,
        "POSTWISE_REDIS_URL": settings.redis_url,
        "POSTWISE_SECRET_KEY": settings.secret_key.get_secret_value(),
    }
    runner = CliRunner()
    exported = runner.invoke(cli, ["privacy", "export", EMAIL], env=env)
    assert exported.exit_code == 0, exported.output
    assert json.loads(exported.output)["contact"]["last_name"] == LAST
    refused = runner.invoke(cli, ["privacy", "erase", EMAIL], env=env, input="n\n")
    assert refused.exit_code != 0
    erased = runner.invoke(cli, ["privacy", "erase", EMAIL, "--yes", "--json"], env=env)
    assert erased.exit_code == 0, erased.output
    assert json.loads(erased.output)["counts"]["contacts"] == 1
    assert _database_hits(runtime) == {}
    missing = runner.invoke(cli, ["privacy", "export", "--id", "999"], env=env)
    assert isinstance(missing.exception, NotFoundError)
    assert "does not exist" in str(missing.exception)
