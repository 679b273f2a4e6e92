"""Unsubscribing takes effect at once, by function, by mail and by complaint."""

from __future__ import annotations

import email.policy
import re
from email.message import EmailMessage
from email.parser import BytesParser
from pathlib import Path
from typing import Any

from litestar.testing import TestClient
from sqlmodel import select

from postwise import tokens
from postwise.compliance import consent
from postwise.compliance.processing import process_raw_report
from postwise.compliance.suppression import is_suppressed
from postwise.compliance.unsubscribe import (
    process_unsubscribe_mail,
    unsubscribe,
    unsubscribe_email,
)
from postwise.contacts.normalize import email_hash
from postwise.db.models import AuditRecord, Contact, ContactStatus, Message, MessageStatus
from postwise.delivery.dispatch import submit_send
from postwise.delivery.requests import SendRequest
from postwise.delivery.templates import create_template
from postwise.delivery.worker import drain
from postwise.devtools.sink import SmtpSink
from postwise.runtime import Runtime
from postwise.server.app import create_app
from postwise.settings import Settings

MARKETING_HTML = (
    "<p>Hello {{ first_name }}.</p>"
    '<p>{{ postal_address }} <a href="{{ unsubscribe_url }}">Unsubscribe</a></p>'
)


def _contact(runtime: Runtime, email: str = "bob@example.com") -> int:
    with runtime.session() as session:
        contact = Contact(email=email, first_name="Bob")
        session.add(contact)
        session.flush()
        assert contact.id is not None
        return contact.id


def _ledger(
    runtime: Runtime,
    cid: int,
    mid: str,
    *,
    transactional: bool = False,
    status: str = MessageStatus.QUEUED,
) -> None:
    with runtime.session() as session:
        session.add(
            Message(
                id=mid, contact_id=cid, provider="smtp", status=status, transactional=transactional
            )
        )


def _mail(*, sender: str, to: str, subject: str, body: str = "please remove me") -> bytes:
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    message["Message-ID"] = "<u1@client.example>"
    message.set_content(body)
    return message.as_bytes()


def test_unsubscribe_takes_effect_at_once_and_is_idempotent(runtime: Runtime) -> None:
    cid = _contact(runtime)
    _ledger(runtime, cid, "m-queued")
    _ledger(runtime, cid, "m-retrying", status=MessageStatus.RETRYING)
    _ledger(runtime, cid, "m-receipt", transactional=True)
    _ledger(runtime, cid, "m-sent", status=MessageStatus.ACCEPTED)
    with runtime.session() as session:
        consent.grant_consent(session, runtime.settings, cid, source="form")
        assert unsubscribe(session, cid, source="one-click", message_id="m-sent") is True
    with runtime.session() as session:
        assert unsubscribe(session, cid, source="one-click") is False
        contact = session.get(Contact, cid)
        assert contact is not None and contact.status == ContactStatus.UNSUBSCRIBED
        assert not consent.has_valid_consent(session, cid)
        assert is_suppressed(session, "bob@example.com")
        statuses = {m.id: m.status for m in session.exec(select(Message))}
        assert statuses == {
            "m-queued": "skipped",
            "m-retrying": "skipped",
            "m-receipt": "queued",
            "m-sent": "accepted",
        }
        audits = session.exec(select(AuditRecord).where(AuditRecord.action == "unsubscribe")).all()
        assert len(audits) == 1
        assert audits[0].subject_hash == email_hash("bob@example.com")
        assert "bob" not in str(audits[0].details).lower()


def test_an_unknown_address_is_suppressed_so_an_import_cannot_mail_it(runtime: Runtime) -> None:
    with runtime.session() as session:
        assert unsubscribe_email(session, "Stranger@Example.com", source="mailto") is True
        assert unsubscribe_email(session, "stranger@example.com", source="mailto") is False
        assert is_suppressed(session, "stranger@example.com")


def test_a_mailto_unsubscribe_with_a_signed_token_finds_the_contact(
    runtime: Runtime, settings: Settings
) -> None:
    cid = _contact(runtime)
    _ledger(runtime, cid, "m-42", status=MessageStatus.ACCEPTED)
    token = tokens.sign("unsubscribe", {"m": "m-42"}, key=settings.signing_keys()[0], ttl=3600)
    raw = _mail(
        sender="someone-else@forwarder.example",
        to="unsubscribe@example.com",
        subject=f"unsubscribe {token}",
    )
    with runtime.session() as session:
        result = process_unsubscribe_mail(session, settings, raw)
    assert (result.matched_by, result.contact_id, result.changed) == ("token", cid, True)
    with runtime.session() as session:
        assert is_suppressed(session, "bob@example.com")


def test_a_mailto_unsubscribe_without_token_uses_the_sender(
    runtime: Runtime, settings: Settings
) -> None:
    cid = _contact(runtime)
    raw = _mail(sender="Bob <BOB@example.com>", to="unsubscribe@example.com", subject="Unsubscribe")
    with runtime.session() as session:
        result = process_unsubscribe_mail(session, settings, raw)
    assert (result.matched_by, result.contact_id, result.changed) == ("sender", cid, True)


def test_a_mailto_unsubscribe_from_nobody_known_changes_nothing(
    runtime: Runtime, settings: Settings
) -> None:
    _contact(runtime)
    raw = _mail(
        sender="eve@attacker.example",
        to="unsubscribe@example.com",
        subject="unsubscribe AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
    )
    with runtime.session() as session:
        result = process_unsubscribe_mail(session, settings, raw)
        assert (result.matched_by, result.changed) == ("none", False)
        assert not is_suppressed(session, "bob@example.com")


def test_the_mailbox_treats_mail_to_the_unsubscribe_address_as_unsubscribe(
    make_settings: object,
) -> None:
    settings = make_settings(unsubscribe_mailto="mailto:leave@lists.example.com")  # type: ignore[operator]
    runtime = Runtime(settings)
    try:
        cid = _contact(runtime)
        raw = _mail(sender="bob@example.com", to="leave@lists.example.com", subject="(none)")
        outcome = process_raw_report(runtime, raw)
        assert (outcome.kind, outcome.action, outcome.contact_id) == (
            "unsubscribe",
            "unsubscribed",
            cid,
        )
        auto_reply = _mail(
            sender="bob@example.com",
            to="leave@lists.example.com",
            subject="Out of office: unsubscribe",
        )
        auto = process_raw_report(
            runtime, auto_reply.replace(b"Subject:", b"Auto-Submitted: auto-replied\nSubject:", 1)
        )
        assert auto.kind == "auto_reply" and auto.action == "ignored"
    finally:
        runtime.close()


def test_a_one_click_unsubscribe_stops_mail_already_queued(
    make_settings: Any, tmp_path: Path
) -> None:
    sink = SmtpSink(tmp_path / "outbox")
    sink.start()
    runtime = Runtime(
        make_settings(smtp_port=sink.port, smtp_starttls="off", frequency_cap="100/24h")
    )
    try:
        cid = _contact(runtime)
        with runtime.session() as session:
            news = create_template(
                session, runtime.settings, name="news", subject="News", html=MARKETING_HTML
            ).id
            receipt = create_template(
                session,
                runtime.settings,
                name="receipt",
                subject="Receipt",
                html="<p>Thanks for your order.</p>",
                kind="transactional",
            ).id
        assert news is not None and receipt is not None
        submit_send(runtime, SendRequest(contact_id=cid, template_id=news, dedupe_key="n1"))
        drain(runtime)
        assert sink.count == 1
        queued = submit_send(
            runtime, SendRequest(contact_id=cid, template_id=news, dedupe_key="n2")
        )
        assert queued.status == "queued"
        # The recipient presses "unsubscribe" in the mail client: RFC 8058 one-click POST to
        # the https URL of the List-Unsubscribe header of the message they received.
        sink.flush()
        [eml] = sorted((tmp_path / "outbox").glob("*.eml"))
        header = BytesParser(policy=email.policy.default).parsebytes(eml.read_bytes())
        url = re.search(r"<(https?://[^>]+)>", str(header["List-Unsubscribe"]))
        assert url is not None
        with TestClient(app=create_app(runtime=runtime)) as client:
            path = url.group(1).removeprefix(runtime.settings.base_url)
            answer = client.post(path, content=b"List-Unsubscribe=One-Click")
        assert answer.status_code in (200, 202, 204), answer.text
        drain(runtime)
        assert sink.count == 1
        with runtime.session() as session:
            row = session.get(Message, queued.message_id)
            assert row is not None and row.status == MessageStatus.SKIPPED
        submit_send(runtime, SendRequest(contact_id=cid, template_id=receipt, dedupe_key="r1"))
        drain(runtime)
        assert sink.count == 2  # transactional mail still reaches an unsubscribed contact
    finally:
        runtime.close()
        sink.stop()
