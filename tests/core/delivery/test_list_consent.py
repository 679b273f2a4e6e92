"""Per-list consent: marketing to a list with a consent purpose needs that consent, checked at
dispatch and again by the worker right before sending, on SQLite and on PostgreSQL."""

from __future__ import annotations

import shutil
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from delivery_helpers import add_campaign, add_contacts, add_template, ledger
from rq import Queue

from postwise.compliance import consent
from postwise.compliance.gate import ComplianceGate, Recipient, SkipReason
from postwise.contacts.segments import set_consent_purpose
from postwise.db.models import Segment, SegmentMember
from postwise.delivery.dispatch import dispatch_campaign, submit_send
from postwise.delivery.ledger import campaign_message_id
from postwise.delivery.queue import enqueue_batches, queue_name
from postwise.delivery.requests import SendRequest, SubmitStatus
from postwise.delivery.worker import drain
from postwise.errors import ValidationError
from postwise.events import EVENT_STREAM, EventEnvelope, encode_event
from postwise.runtime import Runtime
from postwise.testing.smtp import FaultySmtpServer
from postwise.triggers.engine import TriggerEngine
from postwise.triggers.store import TriggerStore

MakeRuntime = Callable[..., Runtime]

#: The consent situations a list's purpose tells apart, in the order the contacts are made.
PEOPLE = (
    "granted",
    "granted_again",
    "unconfirmed",
    "withdrawn",
    "other_purpose",
    "no_record",
)
SENT_TO = {"granted", "granted_again"}


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """This test's database on each backend, whatever mode the suite runs in."""
    if request.param == "postgresql":
        url: str = request.getfixturevalue("pg_url")
        return url
    template: Path = request.getfixturevalue("sqlite_template")
    target = tmp_path / "list-consent.sqlite3"
    shutil.copy(template, target)
    return f"sqlite:///{target}"


@pytest.fixture
def on_backend(make_runtime: MakeRuntime, database: str) -> MakeRuntime:
    """Runtimes on the parametrised backend, sending to the test's SMTP server."""

    def make(**overrides: Any) -> Runtime:
        return make_runtime(database_url=database, **overrides)

    return make


def _email(index: int) -> str:
    return f"p{index}@example.org"


def _people(runtime: Runtime, purpose: str = "newsletter") -> dict[str, int]:
    """One contact per consent situation, recorded through the consent ledger."""
    ids = dict(zip(PEOPLE, add_contacts(runtime, len(PEOPLE), prefix="p"), strict=True))
    settings = runtime.settings
    with runtime.session() as session:
        consent.grant_consent(session, settings, ids["granted"], purpose, source="signup-form")
        consent.grant_consent(session, settings, ids["granted_again"], purpose, source="form")
        consent.withdraw_consent(session, ids["granted_again"], purpose, source="link")
        consent.grant_consent(session, settings, ids["granted_again"], purpose, source="form")
        consent.grant_consent(
            session, settings, ids["unconfirmed"], purpose, source="form", double_opt_in=True
        )
        consent.grant_consent(session, settings, ids["withdrawn"], purpose, source="form")
        consent.withdraw_consent(session, ids["withdrawn"], purpose, source="link")
        consent.grant_consent(session, settings, ids["other_purpose"], "marketing", source="form")
    return ids


def _list(runtime: Runtime, name: str, contact_ids: list[int], purpose: str | None) -> int:
    with runtime.session() as session:
        segment = Segment(name=name, kind="static")
        set_consent_purpose(segment, purpose)
        session.add(segment)
        session.flush()
        assert segment.id is not None
        session.add_all(SegmentMember(segment_id=segment.id, contact_id=c) for c in contact_ids)
        return segment.id


def _received(server: FaultySmtpServer) -> Counter[str]:
    return Counter(m.rcpt_tos[0] for m in server.accepted)


def _emails(names: set[str]) -> set[str]:
    """The addresses of the ``PEOPLE`` called ``names``."""
    return {_email(PEOPLE.index(name)) for name in names}


def _withdraw(runtime: Runtime, contact_id: int, purpose: str) -> None:
    with runtime.session() as session:
        consent.withdraw_consent(session, contact_id, purpose, source="link")


def test_a_campaign_to_a_consent_list_sends_only_to_contacts_with_that_consent(
    on_backend: MakeRuntime, smtp_server: FaultySmtpServer
) -> None:
    runtime = on_backend()
    ids = _people(runtime)
    segment = _list(runtime, "newsletter-list", list(ids.values()), "newsletter")
    campaign = add_campaign(runtime, add_template(runtime), segment_id=segment)
    report = dispatch_campaign(runtime, campaign)
    assert report.queued == 2
    assert dict(report.skipped) == {"no_consent": 4}
    for name, contact_id in ids.items():
        row = ledger(runtime, campaign_message_id(campaign, contact_id))
        assert row.consent_purpose == "newsletter"
        expected = ("queued", None) if name in SENT_TO else ("skipped", "no_consent")
        assert (row.status, row.last_error) == expected, name
    drain(runtime)
    assert _received(smtp_server) == Counter(_emails(SENT_TO))


def test_a_withdrawal_after_queueing_stops_the_send(
    on_backend: MakeRuntime, smtp_server: FaultySmtpServer
) -> None:
    runtime = on_backend()
    ids = _people(runtime)
    segment = _list(runtime, "newsletter-list", list(ids.values()), "newsletter")
    campaign = add_campaign(runtime, add_template(runtime), segment_id=segment)
    assert dispatch_campaign(runtime, campaign).queued == 2
    _withdraw(runtime, ids["granted_again"], "newsletter")
    drain(runtime)
    assert _received(smtp_server) == Counter(_emails({"granted"}))
    row = ledger(runtime, campaign_message_id(campaign, ids["granted_again"]))
    assert (row.status, row.last_error) == ("skipped", "no_consent")


def test_a_list_without_a_purpose_sends_as_before(
    on_backend: MakeRuntime, smtp_server: FaultySmtpServer
) -> None:
    runtime = on_backend()
    ids = _people(runtime)
    segment = _list(runtime, "plain-list", list(ids.values()), None)
    campaign = add_campaign(runtime, add_template(runtime), segment_id=segment)
    report = dispatch_campaign(runtime, campaign)
    assert (report.queued, dict(report.skipped)) == (len(PEOPLE), {})
    assert ledger(runtime, campaign_message_id(campaign, ids["no_record"])).consent_purpose is None
    drain(runtime)
    assert _received(smtp_server) == Counter(_emails(set(PEOPLE)))


def test_transactional_mail_to_a_consent_list_goes_out(
    on_backend: MakeRuntime, smtp_server: FaultySmtpServer
) -> None:
    runtime = on_backend()
    ids = _people(runtime)
    segment = _list(runtime, "newsletter-list", list(ids.values()), "newsletter")
    notice = add_template(runtime, name="service-notice", kind="transactional")
    campaign = add_campaign(runtime, notice, segment_id=segment)
    report = dispatch_campaign(runtime, campaign)
    assert (report.queued, dict(report.skipped)) == (len(PEOPLE), {})
    drain(runtime)
    assert _received(smtp_server) == Counter(_emails(set(PEOPLE)))


def test_list_consent_adds_to_the_regional_rule(
    make_runtime: MakeRuntime, smtp_server: FaultySmtpServer
) -> None:
    runtime = make_runtime(consent_regions=["DE"])
    german_newsletter_only, german_both, american_newsletter_only = (
        add_contacts(runtime, 1, prefix="de-news", country="DE")
        + add_contacts(runtime, 1, prefix="de-both", country="DE")
        + add_contacts(runtime, 1, prefix="us-news", country="US")
    )
    with runtime.session() as session:
        for contact_id in (german_newsletter_only, german_both, american_newsletter_only):
            consent.grant_consent(session, runtime.settings, contact_id, "newsletter", source="t")
        consent.grant_consent(session, runtime.settings, german_both, "marketing", source="t")
    segment = _list(
        runtime,
        "newsletter-list",
        [german_newsletter_only, german_both, american_newsletter_only],
        "newsletter",
    )
    campaign = add_campaign(runtime, add_template(runtime), segment_id=segment)
    report = dispatch_campaign(runtime, campaign)
    assert (report.queued, dict(report.skipped)) == (2, {"no_consent": 1})
    drain(runtime)
    assert set(_received(smtp_server)) == {"de-both0@example.org", "us-news0@example.org"}


def test_a_batch_mixing_purposes_judges_each_message_by_its_own(
    on_backend: MakeRuntime, smtp_server: FaultySmtpServer
) -> None:
    runtime = on_backend()
    both, news_only = add_contacts(runtime, 2, prefix="mix")
    with runtime.session() as session:
        for contact_id in (both, news_only):
            consent.grant_consent(session, runtime.settings, contact_id, "newsletter", source="t")
            consent.grant_consent(session, runtime.settings, contact_id, "offers", source="t")
    template = add_template(runtime)
    news = add_campaign(
        runtime, template, segment_id=_list(runtime, "news", [both, news_only], "newsletter")
    )
    offers = add_campaign(
        runtime, template, segment_id=_list(runtime, "offers", [both, news_only], "offers")
    )
    assert dispatch_campaign(runtime, news).queued == 2
    assert dispatch_campaign(runtime, offers).queued == 2
    _withdraw(runtime, news_only, "offers")
    # Instead of the campaigns' own batches, one batch holding both campaigns' messages, the
    # same contacts in each (as the sweeper's re-enqueued batches can): take the queued jobs
    # off the queue's list, then enqueue the mixed batch.
    runtime.redis.delete(Queue(queue_name("smtp"), connection=runtime.redis).key)
    mixed = [
        campaign_message_id(c, contact) for c in (news, offers) for contact in (both, news_only)
    ]
    enqueue_batches(runtime, "smtp", [mixed])
    drain(runtime)
    assert _received(smtp_server) == Counter({"mix0@example.org": 2, "mix1@example.org": 1})
    assert ledger(runtime, campaign_message_id(news, news_only)).status == "accepted"
    row = ledger(runtime, campaign_message_id(offers, news_only))
    assert (row.status, row.last_error) == ("skipped", "no_consent")


def test_a_send_request_can_name_the_consent_it_needs(
    delivery: Runtime, smtp_server: FaultySmtpServer
) -> None:
    with_consent, without = add_contacts(delivery, 2, prefix="single")
    with delivery.session() as session:
        consent.grant_consent(session, delivery.settings, with_consent, "newsletter", source="t")
    template = add_template(delivery)

    def send(contact_id: int, key: str, purpose: str = "newsletter") -> Any:
        request = SendRequest(
            contact_id=contact_id, template_id=template, dedupe_key=key, consent_purpose=purpose
        )
        return submit_send(delivery, request)

    refused = send(without, "a")
    assert (refused.status, refused.reason) == (SubmitStatus.SKIPPED, "no_consent")
    first, second = send(with_consent, "b"), send(with_consent, "c")
    assert first.status == second.status == SubmitStatus.QUEUED
    assert ledger(delivery, first.message_id).consent_purpose == "newsletter"
    drain(delivery)
    assert _received(smtp_server) == Counter({"single0@example.org": 2})
    third = send(with_consent, "d")
    assert third.status == SubmitStatus.QUEUED
    _withdraw(delivery, with_consent, "newsletter")
    drain(delivery)
    assert len(smtp_server.accepted) == 2
    row = ledger(delivery, third.message_id)
    assert (row.status, row.last_error) == ("skipped", "no_consent")
    with pytest.raises(ValidationError) as error:
        send(with_consent, "e", purpose="Not A Purpose")
    assert error.value.field == "consent_purpose"


def test_a_send_for_a_campaign_needs_what_its_list_needs(
    delivery: Runtime, smtp_server: FaultySmtpServer
) -> None:
    # A trigger's enrol_campaign action submits sends carrying the campaign id: the list's
    # purpose applies to them as it does to the campaign's own dispatch.
    with_consent, without = add_contacts(delivery, 2, prefix="enrol")
    with delivery.session() as session:
        consent.grant_consent(session, delivery.settings, with_consent, "newsletter", source="t")
    segment = _list(delivery, "enrol-list", [with_consent, without], "newsletter")
    template = add_template(delivery)
    campaign = add_campaign(delivery, template, segment_id=segment)

    def send(contact_id: int) -> Any:
        request = SendRequest(
            contact_id=contact_id, template_id=template, dedupe_key=f"enrol:{contact_id}",
            campaign_id=campaign, reason="trigger",
        )  # fmt: skip
        return submit_send(delivery, request)

    refused = send(without)
    assert (refused.status, refused.reason) == (SubmitStatus.SKIPPED, "no_consent")
    queued = send(with_consent)
    assert queued.status == SubmitStatus.QUEUED
    assert ledger(delivery, queued.message_id).consent_purpose == "newsletter"
    drain(delivery)
    assert _received(smtp_server) == Counter({"enrol0@example.org": 1})


def test_a_send_for_a_campaign_cannot_need_another_purpose_than_its_list(
    delivery: Runtime,
) -> None:
    (contact,) = add_contacts(delivery, 1, prefix="two")
    segment = _list(delivery, "two-purposes", [contact], "newsletter")
    template = add_template(delivery)
    campaign = add_campaign(delivery, template, segment_id=segment)
    request = SendRequest(
        contact_id=contact, template_id=template, dedupe_key="two", campaign_id=campaign,
        consent_purpose="events",
    )  # fmt: skip
    with pytest.raises(ValidationError) as error:
        submit_send(delivery, request)
    assert error.value.field == "consent_purpose" and "'newsletter'" in str(error.value)
    # The same purpose as the list's is fine (and still enforced).
    same = SendRequest(
        contact_id=contact, template_id=template, dedupe_key="two", campaign_id=campaign,
        consent_purpose="newsletter",
    )  # fmt: skip
    assert submit_send(delivery, same).reason == "no_consent"
    # A trigger cannot combine enrol_campaign with a consent purpose of its own.
    with delivery.session() as session, pytest.raises(ValidationError) as refused:
        TriggerStore(session, delivery).create(
            {
                "name": "enrol-with-purpose",
                "event_type": "signup",
                "action": {
                    "type": "enrol_campaign",
                    "campaign_id": campaign,
                    "consent_purpose": "events",
                },
            }
        )
    assert "set it on the list" in str(refused.value)


def test_the_gate_answers_a_page_of_mixed_purposes_with_one_consent_query(
    runtime: Runtime,
) -> None:
    granted, other, nothing = add_contacts(runtime, 3, prefix="g")
    with runtime.session() as session:
        consent.grant_consent(session, runtime.settings, granted, "newsletter", source="t")
        consent.grant_consent(session, runtime.settings, granted, "offers", source="t")
        consent.grant_consent(session, runtime.settings, other, "offers", source="t")
    recipients = [
        Recipient(granted, "g0@example.org", "active", None, "newsletter"),
        Recipient(granted, "g0@example.org", "active", None, "offers"),
        Recipient(other, "g1@example.org", "active", None, "newsletter"),
        Recipient(other, "g1@example.org", "active", None, "offers"),
        Recipient(nothing, "g2@example.org", "active", None, None),
    ]
    gate = ComplianceGate(runtime.settings)
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        statements.append(statement)

    sa.event.listen(runtime.engine, "before_cursor_execute", record)
    try:
        with runtime.session() as session:
            verdicts = gate.check_each(session, recipients, marketing=True)
            by_contact = gate.check(session, recipients, marketing=True)
            per_call = gate.check(session, recipients[4:], marketing=True, consent_purpose="offers")
            transactional = gate.check(
                session, recipients, marketing=False, consent_purpose="offers"
            )
    finally:
        sa.event.remove(runtime.engine, "before_cursor_execute", record)
    assert verdicts == [None, None, SkipReason.NO_CONSENT, None, None]
    assert by_contact == {other: SkipReason.NO_CONSENT}
    assert per_call == {nothing: SkipReason.NO_CONSENT}
    assert transactional == {}
    consent_queries = [s for s in statements if "consent_record" in s]
    # check_each, check and the per-call check: one each; transactional mail asks none.
    assert len(consent_queries) == 3


def test_a_trigger_action_can_require_a_consent_purpose(
    delivery: Runtime, smtp_server: FaultySmtpServer
) -> None:
    template = add_template(delivery)
    receipt = add_template(delivery, name="receipt", kind="transactional")
    with_consent, without = add_contacts(delivery, 2, prefix="trig")
    with delivery.session() as session:
        consent.grant_consent(session, delivery.settings, with_consent, "newsletter", source="t")
        store = TriggerStore(session, delivery)
        trigger = store.create(
            {
                "name": "welcome-series",
                "event_type": "signup",
                "action": {
                    "type": "send_template",
                    "template_id": template,
                    "consent_purpose": "newsletter",
                },
            }
        )
        assert trigger.action["consent_purpose"] == "newsletter"
        # A bad purpose name, and a purpose on a transactional send (which needs no consent).
        for n, (bad_template, purpose) in enumerate(((template, "No!"), (receipt, "newsletter"))):
            action = {
                "type": "send_template",
                "template_id": bad_template,
                "consent_purpose": purpose,
            }
            with pytest.raises(ValidationError) as error:
                store.create({"name": f"bad-{n}", "event_type": "signup", "action": action})
            assert error.value.field == "action.consent_purpose"
    for contact_id in (with_consent, without):
        envelope = EventEnvelope(
            event_id=uuid.uuid4().hex,
            type="signup",
            occurred_at=datetime.now(UTC),
            contact_id=contact_id,
            properties={},
        )
        delivery.redis.xadd(EVENT_STREAM, encode_event(envelope))
    engine = TriggerEngine(delivery, consumer="list-consent", block_ms=10)
    try:
        engine.ensure_group("0")
        engine.reload()
        idle = 0
        while idle < 2:
            idle = idle + 1 if engine.step() == 0 else 0
    finally:
        engine.close()
    drain(delivery)
    assert set(_received(smtp_server)) == {"trig0@example.org"}
