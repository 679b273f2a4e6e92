"""The compliance gate: who may receive marketing and transactional mail, and why not."""

from __future__ import annotations

from datetime import timedelta

import fakeredis
from delivery_helpers import add_contacts, grant_consent

from postwise.compliance.gate import PAUSED_KEY, ComplianceGate, Pauses, Recipient, SkipReason
from postwise.contacts.normalize import email_hash
from postwise.db.models import ContactStatus, Suppression, utcnow
from postwise.runtime import Runtime


def _check(runtime: Runtime, recipients: list[Recipient], *, marketing: bool = True) -> dict:
    with runtime.session() as session:
        return ComplianceGate(runtime.settings).check(session, recipients, marketing=marketing)


def test_statuses_block_marketing_but_only_bounces_block_transactional(runtime: Runtime) -> None:
    recipients = [
        Recipient(1, "a@example.org", ContactStatus.ACTIVE),
        Recipient(2, "b@example.org", ContactStatus.UNSUBSCRIBED),
        Recipient(3, "c@example.org", ContactStatus.BOUNCED),
        Recipient(4, "d@example.org", ContactStatus.COMPLAINED),
    ]
    assert _check(runtime, recipients) == {
        2: SkipReason.UNSUBSCRIBED,
        3: SkipReason.BOUNCED,
        4: SkipReason.COMPLAINED,
    }
    assert _check(runtime, recipients, marketing=False) == {3: SkipReason.BOUNCED}


def test_suppressions_match_by_address_hash_and_scope(runtime: Runtime) -> None:
    with runtime.session() as session:
        session.add(Suppression(email_hash=email_hash("All@Example.org"), reason="hard_bounce"))
        session.add(
            Suppression(
                email_hash=email_hash("news@example.org"), scope="marketing", reason="unsubscribe"
            )
        )
    recipients = [
        Recipient(1, "all@example.org", ContactStatus.ACTIVE),
        Recipient(2, "news@example.org", ContactStatus.ACTIVE),
        Recipient(3, "fine@example.org", ContactStatus.ACTIVE),
    ]
    assert _check(runtime, recipients) == {1: SkipReason.SUPPRESSED, 2: SkipReason.SUPPRESSED}
    assert _check(runtime, recipients, marketing=False) == {1: SkipReason.SUPPRESSED}


def test_consent_regions_need_a_latest_granted_and_confirmed_record(make_settings) -> None:
    runtime = Runtime(make_settings(consent_regions=["DE"]))
    try:
        ids = add_contacts(runtime, 5, country="DE")
        granted, withdrawn, unconfirmed, never, elsewhere = ids
        earlier = utcnow() - timedelta(days=1)
        grant_consent(runtime, granted)
        grant_consent(runtime, withdrawn, at=earlier)
        grant_consent(runtime, withdrawn, granted=False)
        grant_consent(runtime, unconfirmed, confirmed=False)
        recipients = [
            Recipient(cid, f"user{i}@example.org", ContactStatus.ACTIVE, "DE")
            for i, cid in enumerate(ids[:4])
        ]
        recipients.append(Recipient(elsewhere, "x@example.org", ContactStatus.ACTIVE, "US"))
        assert _check(runtime, recipients) == {
            withdrawn: SkipReason.NO_CONSENT,
            unconfirmed: SkipReason.NO_CONSENT,
            never: SkipReason.NO_CONSENT,
        }
        assert _check(runtime, recipients, marketing=False) == {}
    finally:
        runtime.close()


def test_require_consent_applies_to_every_country(make_settings) -> None:
    runtime = Runtime(make_settings(require_consent=True))
    try:
        (contact,) = add_contacts(runtime, 1)
        recipient = Recipient(contact, "user0@example.org", ContactStatus.ACTIVE, None)
        assert _check(runtime, [recipient]) == {contact: SkipReason.NO_CONSENT}
        grant_consent(runtime, contact)
        assert _check(runtime, [recipient]) == {}
    finally:
        runtime.close()


def test_pauses_are_read_from_the_compliance_monitors_hash() -> None:
    client = fakeredis.FakeRedis(server=fakeredis.FakeServer())
    assert not Pauses.load(client)
    client.hset(
        PAUSED_KEY,
        mapping={
            "provider:smtp": '{"reason": "complaint rate 0.4%"}',
            "recipient_domain:gmail.com": '{"reason": "bounce rate 6%"}',
            "sending_domain:news.example.com": "manual",
        },
    )
    pauses = Pauses.load(client)
    assert pauses.provider("smtp") == "complaint rate 0.4%"
    assert pauses.provider("sendgrid") is None
    assert pauses.recipient_domain("Someone@Gmail.com") == "bounce rate 6%"
    assert pauses.recipient_domain("someone@example.org") is None
    assert pauses.sending_domain("News.Example.com") == "manual"
