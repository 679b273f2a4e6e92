"""Bounces and complaints become actions: suppression, unsubscribe, reputation; never a guess."""

from __future__ import annotations

import json
import mailbox
import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from imap_test_server import MailStore, running_imap_server
from sqlmodel import select

from postwise import hookimpl
from postwise.cli import cli
from postwise.compliance import reputation
from postwise.compliance.bounces import (
    BounceClassification,
    BounceKind,
    BounceReason,
    classify_message,
)
from postwise.compliance.processing import (
    ComplianceConsumer,
    apply_classification,
    process_mailbox,
    record_provider_feedback,
)
from postwise.compliance.suppression import is_suppressed
from postwise.db.models import Contact, ContactStatus, Message, MessageStatus, Suppression
from postwise.events import EVENT_STREAM, EventEnvelope, decode_event, encode_event
from postwise.runtime import Runtime

FIXTURES = Path(__file__).parent / "fixtures" / "bounces"


def _contact(runtime: Runtime, email: str, name: str = "Pat") -> int:
    with runtime.session() as session:
        contact = Contact(email=email, first_name=name)
        session.add(contact)
        session.flush()
        assert contact.id is not None
        return contact.id


def _status(runtime: Runtime, cid: int) -> str:
    with runtime.session() as session:
        contact = session.get(Contact, cid)
        assert contact is not None
        return contact.status


def _suppressed(runtime: Runtime, email: str, *, transactional: bool = False) -> bool:
    with runtime.session() as session:
        return is_suppressed(session, email, transactional=transactional)


def _stream(runtime: Runtime) -> list[EventEnvelope]:
    entries: Any = runtime.redis.xrange(EVENT_STREAM)
    return [decode_event(fields) for _id, fields in entries]


def _fixture(name: str) -> BounceClassification:
    return classify_message((FIXTURES / name).read_bytes())


def test_a_hard_bounce_suppresses_at_once_and_skips_unsent_mail(runtime: Runtime) -> None:
    cid = _contact(runtime, "bob@example.net")
    with runtime.session() as session:
        session.add(Message(id="m1", contact_id=cid, provider="smtp", transactional=True))
    classification = _fixture("postfix-user-unknown.eml")
    assert classification.kind is BounceKind.HARD
    outcome = apply_classification(runtime, classification, provider="smtp")
    assert outcome.action == "suppressed" and outcome.contact_id == cid
    assert _status(runtime, cid) == ContactStatus.BOUNCED
    assert _suppressed(runtime, "bob@example.net", transactional=True)
    with runtime.session() as session:
        row = session.get(Message, "m1")
        assert row is not None and row.status == MessageStatus.SKIPPED
        entry = session.exec(select(Suppression)).one()
        assert entry.reason == "hard_bounce" and "bob@example.net" not in (entry.detail or "")
    [event] = _stream(runtime)
    assert (event.type, event.contact_id, event.properties["kind"]) == ("bounce", cid, "hard")
    assert event.properties["recipient_domain"] == "example.net"
    assert "bob@example.net" not in str(event.to_dict())


def test_soft_bounces_suppress_only_after_the_configured_count(make_settings: Any) -> None:
    runtime = Runtime(make_settings(soft_bounce_limit=3, soft_bounce_window_days=5))
    try:
        from dataclasses import replace

        cid = _contact(runtime, "frank@example.net")
        fixture = _fixture("postfix-mailbox-full.eml")
        assert fixture.kind is BounceKind.SOFT
        # Three different messages soft-bounce (one count per message).
        first, second, third_message = (replace(fixture, message_id=f"m{i}") for i in range(3))
        actions = [
            apply_classification(runtime, bounce, event_id=f"s{i}").action
            for i, bounce in enumerate((first, second))
        ]
        assert actions == ["soft_counted", "soft_counted"]
        assert apply_classification(runtime, second, event_id="s1").action == "duplicate"
        assert not _suppressed(runtime, "frank@example.net")
        assert _status(runtime, cid) == ContactStatus.ACTIVE
        third = apply_classification(runtime, third_message, event_id="s3")
        assert third.action == "soft_suppressed"
        assert _suppressed(runtime, "frank@example.net", transactional=True)
        assert _status(runtime, cid) == ContactStatus.BOUNCED
    finally:
        runtime.close()


def test_soft_bounces_outside_the_window_do_not_count(make_settings: Any) -> None:
    runtime = Runtime(make_settings(soft_bounce_limit=2, soft_bounce_window_days=1))
    try:
        from dataclasses import replace

        from postwise.compliance.processing import soft_bounce_key
        from postwise.contacts.normalize import email_hash

        _contact(runtime, "frank@example.net")
        fixture = _fixture("postfix-mailbox-full.eml")
        old = replace(fixture, message_id="old-message")
        apply_classification(runtime, old, event_id="old")
        # Age the first bounce past the window: the sorted set is scored by time.
        key = soft_bounce_key(email_hash("frank@example.net"))
        assert runtime.redis.zadd(key, {"message:old-message": 1.0}, xx=True, ch=True) == 1
        new = replace(fixture, message_id="new-message")
        assert apply_classification(runtime, new, event_id="new").action == "soft_counted"
        assert not _suppressed(runtime, "frank@example.net")
    finally:
        runtime.close()


def test_repeated_delay_warnings_about_one_message_count_as_one_soft_bounce(
    make_settings: Any,
) -> None:
    # An MTA that keeps retrying sends a warning every few hours for the same message; with a
    # limit of 2 those must not add up to a suppression of a mailbox that may still take it.
    from dataclasses import replace

    runtime = Runtime(make_settings(soft_bounce_limit=2, soft_bounce_window_days=5))
    try:
        _contact(runtime, "dora@example.net")
        delayed = replace(_fixture("postfix-mailbox-full.eml"), message_id="msg-1")
        assert delayed.kind is BounceKind.SOFT
        actions = [
            apply_classification(runtime, delayed, event_id=f"w{i}").action for i in range(4)
        ]
        assert actions == ["soft_counted"] * 4
        assert not _suppressed(runtime, "dora@example.net")
        other = replace(delayed, message_id="msg-2")
        assert apply_classification(runtime, other, event_id="w9").action == "soft_suppressed"
    finally:
        runtime.close()


def test_a_block_feeds_reputation_and_never_suppresses_the_address(runtime: Runtime) -> None:
    cid = _contact(runtime, "grace@example.org")
    classification = _fixture("postfix-spamhaus-block.eml")
    assert classification.kind is BounceKind.BLOCK
    outcome = apply_classification(runtime, classification, provider="smtp")
    assert outcome.action == "reputation"
    assert not _suppressed(runtime, "grace@example.org")
    assert _status(runtime, cid) == ContactStatus.ACTIVE
    [stream] = reputation.report(
        runtime.redis, runtime.settings, streams=["recipient_domain:example.org"]
    )
    assert stream.counts["block"] == 1


@pytest.mark.parametrize(
    "reply",
    [
        "550 5.7.1 Client host rejected: cannot find your reverse hostname (no PTR record)",
        "553 5.1.8 <news@example.com>: Sender address rejected: Domain not found",
        "550 5.7.26 Unauthenticated email is not accepted due to the domain's DMARC policy",
        "550 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org",
        "554 5.7.1 Can't determine Purported Responsible Address",
    ],
)
def test_a_sender_side_refusal_never_suppresses_the_recipient_and_alerts(
    runtime: Runtime, reply: str
) -> None:
    from postwise.compliance.bounces import Side, classify_smtp_reply
    from postwise.compliance.bounces.reasons import REASONS
    from postwise.compliance.processing import counters

    cid = _contact(runtime, "ida@example.org")
    code, _, text = reply.partition(" ")
    found = classify_smtp_reply(int(code), text)
    assert REASONS[found.reason].side is Side.SENDER, found.explanation
    classification = BounceClassification(
        found.kind,
        found.reason,
        recipient="ida@example.org",
        status=found.status,
        diagnostic=found.diagnostic,
        permanent=True,
    )
    outcome = apply_classification(runtime, classification, provider="smtp")
    assert outcome.action == "reputation"
    assert not _suppressed(runtime, "ida@example.org")
    assert _status(runtime, cid) == ContactStatus.ACTIVE
    assert counters(runtime.redis)[f"alert:{found.reason.value}"] == 1


def test_an_esp_hard_bounce_for_a_sender_side_reason_does_not_suppress(runtime: Runtime) -> None:
    cid = _contact(runtime, "kay@example.org")
    outcome = record_provider_feedback(
        runtime,
        provider="sendgrid",
        kind="hard",
        recipient="kay@example.org",
        smtp_code=550,
        diagnostic="550 5.7.1 Service unavailable; Client host [192.0.2.1] blocked using "
        "zen.spamhaus.org",
        event_id="ev-rbl",
    )
    assert outcome.kind == "block" and outcome.action == "reputation"
    assert not _suppressed(runtime, "kay@example.org")
    assert _status(runtime, cid) == ContactStatus.ACTIVE
    # The same ESP's hard bounce for an unknown user still suppresses at once.
    hard = record_provider_feedback(
        runtime,
        provider="sendgrid",
        kind="hard",
        recipient="kay@example.org",
        diagnostic="550 5.1.1 The email account that you tried to reach does not exist",
        event_id="ev-nouser",
    )
    assert hard.action == "suppressed"


def test_an_undetermined_permanent_failure_suppresses_only_after_repeats(
    make_settings: Any,
) -> None:
    from dataclasses import replace

    from postwise.compliance.bounces import classify_smtp_reply

    runtime = Runtime(make_settings(undetermined_bounce_limit=3, soft_bounce_limit=1))
    try:
        cid = _contact(runtime, "jon@example.net")
        found = classify_smtp_reply(554, "Transaction failed")
        assert (found.kind, found.reason) == (BounceKind.SOFT, BounceReason.UNDETERMINED)
        bounce = replace(found, recipient="jon@example.net")
        actions = [
            apply_classification(
                runtime, replace(bounce, message_id=f"u{i}"), event_id=f"u{i}"
            ).action
            for i in range(3)
        ]
        # Not the soft rule (its limit of 1 would have suppressed at once): its own count.
        assert actions == [
            "undetermined_counted",
            "undetermined_counted",
            "undetermined_suppressed",
        ]
        assert _suppressed(runtime, "jon@example.net")
        assert _status(runtime, cid) == ContactStatus.BOUNCED
    finally:
        runtime.close()


def test_an_arf_complaint_unsubscribes_and_suppresses(runtime: Runtime) -> None:
    cid = _contact(runtime, "carol@yahoo.example.com")
    classification = _fixture("arf-yahoo-style-abuse.eml")
    assert classification.kind is BounceKind.COMPLAINT
    outcome = apply_classification(runtime, classification)
    assert outcome.action == "unsubscribed"
    assert _status(runtime, cid) == ContactStatus.COMPLAINED
    assert _suppressed(runtime, "carol@yahoo.example.com", transactional=True)
    with runtime.session() as session:
        reasons = sorted(s.reason for s in session.exec(select(Suppression)))
    assert reasons == ["complaint", "unsubscribe"]
    assert [e.type for e in _stream(runtime)] == ["complaint"]


@pytest.mark.parametrize("name", sorted(p.name for p in FIXTURES.glob("malformed-*.eml")))
def test_malformed_reports_change_nothing(runtime: Runtime, name: str) -> None:
    cid = _contact(runtime, "bob@example.net")
    classification = _fixture(name)
    assert classification.kind is BounceKind.UNKNOWN
    outcome = apply_classification(runtime, classification)
    assert outcome.action == "ignored" and outcome.reason
    assert _status(runtime, cid) == ContactStatus.ACTIVE
    with runtime.session() as session:
        assert session.exec(select(Suppression)).first() is None
    assert _stream(runtime) == []


def test_esp_reports_are_acted_on_once_per_provider_event(runtime: Runtime) -> None:
    cid = _contact(runtime, "dan@example.com")
    first = record_provider_feedback(
        runtime, provider="sendgrid", kind="complaint", recipient="Dan@Example.com", event_id="sg-1"
    )
    again = record_provider_feedback(
        runtime, provider="sendgrid", kind="complaint", recipient="dan@example.com", event_id="sg-1"
    )
    assert (first.action, again.action) == ("unsubscribed", "duplicate")
    assert _status(runtime, cid) == ContactStatus.COMPLAINED
    bounce = record_provider_feedback(
        runtime,
        provider="sendgrid",
        kind=None,
        recipient="dan@example.com",
        smtp_code=550,
        status="5.1.1",
        diagnostic="user unknown",
    )
    assert bounce.kind == "hard"
    unknown = record_provider_feedback(
        runtime, provider="sendgrid", kind="bounce", recipient="dan@example.com"
    )
    assert unknown.kind == "unknown" and unknown.action == "ignored"


def test_reports_resolve_the_contact_through_the_ledger(runtime: Runtime) -> None:
    cid = _contact(runtime, "erin@example.com")
    with runtime.session() as session:
        session.add(
            Message(id="ledger-7", contact_id=cid, provider="smtp", status=MessageStatus.ACCEPTED)
        )
    classification = BounceClassification(
        BounceKind.HARD,
        BounceReason.USER_UNKNOWN,
        recipient=None,
        status="5.1.1",
        message_id="ledger-7",
    )
    outcome = apply_classification(runtime, classification)
    assert outcome.contact_id == cid
    assert _suppressed(runtime, "erin@example.com")


@pytest.fixture
def real_runtime(make_settings: Any, real_redis_url: str) -> Iterator[Runtime]:
    runtime = Runtime(make_settings(redis_url=real_redis_url, reputation_min_volume=10))
    yield runtime
    runtime.close()


def _put(runtime: Runtime, event: EventEnvelope) -> None:
    runtime.redis.xadd(EVENT_STREAM, encode_event(event))  # type: ignore[arg-type]


def _event(event_id: str, type_: str, **kwargs: Any) -> EventEnvelope:
    return EventEnvelope(event_id=event_id, type=type_, occurred_at=datetime.now(UTC), **kwargs)


def test_the_consumer_acts_on_delivery_bounces_and_counts_volume(real_runtime: Runtime) -> None:
    runtime = real_runtime
    cid = _contact(runtime, "bob@example.net")
    for i in range(20):
        _put(runtime, _event(f"sent-{i}", "sent", contact_id=cid, provider="smtp"))
    _put(
        runtime,
        _event(
            "b-1",
            "bounce",
            contact_id=cid,
            provider="smtp",
            properties={
                "code": 550,
                "status": "5.1.1",
                "reason": "5.1.1 <bob@example.net>: user unknown",
            },
        ),
    )
    consumer = ComplianceConsumer(runtime, name="c1")
    assert consumer.run_once(block_ms=None) == 21
    # 1 hard bounce in 20 is 5 %: each of the three streams pauses, with an alert event that
    # the consumer reads next and leaves alone.
    assert consumer.run_once(block_ms=None) == 3
    assert consumer.run_once(block_ms=None) == 0
    alerts = [e for e in _stream(runtime) if e.type == "reputation_alert"]
    assert (
        sorted(e.properties["stream"] for e in alerts)
        == sorted(reputation.paused_streams(runtime.redis))
        == ["provider:smtp", "recipient_domain:example.net", "sending_domain:example.com"]
    )
    assert _suppressed(runtime, "bob@example.net")
    assert _status(runtime, cid) == ContactStatus.BOUNCED
    [provider] = reputation.report(runtime.redis, runtime.settings, streams=["provider:smtp"])
    assert provider.counts["sent"] == 20 and provider.counts["hard"] == 1
    [domain] = reputation.report(
        runtime.redis, runtime.settings, streams=["recipient_domain:example.net"]
    )
    assert domain.counts["sent"] == 20


def test_the_consumer_does_not_act_twice_on_reports_handled_at_arrival(
    real_runtime: Runtime,
) -> None:
    runtime = real_runtime
    _contact(runtime, "frank@example.net")
    outcome = apply_classification(runtime, _fixture("postfix-mailbox-full.eml"), provider="smtp")
    assert outcome.action == "soft_counted"
    ComplianceConsumer(runtime, name="c1").run_once(block_ms=None)
    [provider] = reputation.report(runtime.redis, runtime.settings, streams=["provider:smtp"])
    assert provider.counts["soft"] == 1


def test_entries_left_pending_by_a_crashed_consumer_are_reclaimed(real_runtime: Runtime) -> None:
    runtime = real_runtime
    cid = _contact(runtime, "bob@example.net")
    crashed = ComplianceConsumer(runtime, name="crashed")
    crashed.ensure_group()
    _put(
        runtime,
        _event("b-9", "bounce", contact_id=cid, properties={"kind": "hard", "status": "5.1.1"}),
    )
    # The crashed consumer read the entry and died before acknowledging it.
    runtime.redis.xreadgroup("compliance", "crashed", {EVENT_STREAM: ">"}, count=10)
    assert not _suppressed(runtime, "bob@example.net")
    survivor = ComplianceConsumer(runtime, name="survivor", claim_idle_ms=0)
    assert survivor.run_once(block_ms=None) == 1
    assert _suppressed(runtime, "bob@example.net")
    assert runtime.redis.xpending(EVENT_STREAM, "compliance")["pending"] == 0


def _maildir(tmp_path: Path, names: list[str]) -> Path:
    box = mailbox.Maildir(tmp_path / "bounces", create=True)
    for name in names:
        box.add((FIXTURES / name).read_bytes())
    return tmp_path / "bounces"


def test_the_bounce_mailbox_is_processed_and_acknowledged(runtime: Runtime, tmp_path: Path) -> None:
    hard = _contact(runtime, "bob@example.net")
    complainer = _contact(runtime, "carol@yahoo.example.com")
    away = _contact(runtime, "alice@contoso.example.com")
    path = _maildir(
        tmp_path,
        [
            "postfix-user-unknown.eml",
            "arf-yahoo-style-abuse.eml",
            "autoreply-exchange-ooo.eml",
            "malformed-truncated-dsn.eml",
        ],
    )
    run = process_mailbox(runtime, spec=str(path))
    assert run.read == 4
    assert run.by_kind == {"hard": 1, "complaint": 1, "auto_reply": 1, "unknown": 1}
    assert _status(runtime, hard) == ContactStatus.BOUNCED
    assert _status(runtime, complainer) == ContactStatus.COMPLAINED
    assert _status(runtime, away) == ContactStatus.ACTIVE
    assert process_mailbox(runtime, spec=str(path)).read == 0


def test_a_message_read_twice_after_a_crash_is_acted_on_once(
    runtime: Runtime, tmp_path: Path
) -> None:
    _contact(runtime, "frank@example.net")
    path = _maildir(tmp_path, ["postfix-mailbox-full.eml"])
    copy = tmp_path / "copy"
    shutil.copytree(path, copy)
    assert process_mailbox(runtime, spec=str(path)).by_action == {"soft_counted": 1}
    assert process_mailbox(runtime, spec=str(copy)).by_action == {"duplicate": 1}


def test_the_bounce_mailbox_can_be_read_over_imap(runtime: Runtime) -> None:
    cid = _contact(runtime, "bob@example.net")
    store = MailStore(username="bounces", password="secret")
    store.add("INBOX", (FIXTURES / "postfix-user-unknown.eml").read_bytes())
    with running_imap_server(store) as (host, port):
        run = process_mailbox(runtime, spec=f"imap://bounces:secret@{host}:{port}/INBOX")
    assert run.by_kind == {"hard": 1}
    assert _status(runtime, cid) == ContactStatus.BOUNCED
    assert all("\\Seen" in m.flags for m in store.folders["INBOX"])


class _Recorder:
    """A plugin that records what postwise_contact_changed tells it."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, dict[str, Any], str]] = []

    @hookimpl
    def postwise_contact_changed(
        self, contact_id: int, changes: dict[str, Any], source: str
    ) -> None:
        self.calls.append((contact_id, dict(changes), source))


def test_plugins_hear_of_status_changes(runtime: Runtime) -> None:
    recorder = _Recorder()
    assert runtime.plugins.register(recorder, "recorder")
    try:
        cid = _contact(runtime, "bob@example.net")
        apply_classification(runtime, _fixture("postfix-user-unknown.eml"))
        apply_classification(runtime, _fixture("postfix-user-unknown.eml"))
    finally:
        runtime.plugins.unregister("recorder")
    assert recorder.calls == [(cid, {"status": "bounced"}, "compliance")]


def test_the_suppressions_api(client: Any) -> None:
    added = client.post(
        "/v1/suppressions", json={"email": "Mallory@Example.com", "reason": "manual"}
    )
    assert added.status_code == 201
    entry = added.json()
    assert entry["scope"] == "all" and "mallory" not in json.dumps(entry).lower()
    check = client.post("/v1/suppressions/check", json={"email": "mallory@example.com"}).json()
    assert check["suppressed_all"] and check["suppressed_marketing"]
    assert client.get("/v1/suppressions").json()["items"][0]["id"] == entry["id"]
    bad = client.post("/v1/suppressions", json={"email": "not an address"})
    assert bad.status_code == 422 and bad.json()["field"] == "email"
    reason = client.post("/v1/suppressions", json={"email": "a@example.com", "reason": "erasure"})
    assert reason.status_code == 422 and reason.json()["field"] == "reason"
    assert client.get("/v1/suppressions?limit=0").status_code == 422
    assert client.delete(f"/v1/suppressions/{entry['id']}").status_code == 204
    assert client.delete(f"/v1/suppressions/{entry['id']}").status_code == 404
    assert not client.post("/v1/suppressions/check", json={"email": "mallory@example.com"}).json()[
        "suppressed_all"
    ]


def test_the_cli_runs_the_consumer_once(real_runtime: Runtime) -> None:
    runtime = real_runtime
    cid = _contact(runtime, "bob@example.net")
    _put(
        runtime,
        _event(
            "b-cli",
            "bounce",
            contact_id=cid,
            properties={"smtp_code": 550, "status": "5.1.1", "diagnostic": "user unknown"},
        ),
    )
    settings = runtime.settings
    env = {
        "POSTWISE_DATA_DIR": str(settings.data_dir),
        "POSTWISE_DATABASE_URL": settings.resolved_database_url,
        "POSTWISE_REDIS_URL": settings.redis_url,
        "POSTWISE_SECRET_KEY": settings.secret_key.get_secret_value(),
    }
    result = CliRunner().invoke(cli, ["reputation", "run", "--once"], env=env)
    assert result.exit_code == 0, result.output
    assert "handled 1 stream entries" in result.output
    assert _suppressed(runtime, "bob@example.net")
