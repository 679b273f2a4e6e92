"""The consent ledger: grants, withdrawals, double opt-in through signed links, and the API."""

from __future__ import annotations

from typing import Any

import pytest

from postwise import tokens
from postwise.compliance import consent
from postwise.compliance.suppression import is_suppressed
from postwise.db.models import Contact, ContactStatus
from postwise.errors import ConflictError, NotFoundError, ValidationError
from postwise.runtime import Runtime


def _contact(runtime: Runtime, email: str = "ann@example.com", **fields: Any) -> int:
    with runtime.session() as session:
        contact = Contact(email=email, **fields)
        session.add(contact)
        session.flush()
        assert contact.id is not None
        return contact.id


def _token(url: str) -> str:
    return url.split("/c/", 1)[1].removesuffix("/withdraw")


def test_a_grant_records_time_source_ip_and_wording(runtime: Runtime) -> None:
    cid = _contact(runtime)
    with runtime.session() as session:
        grant = consent.grant_consent(
            session,
            runtime.settings,
            cid,
            "marketing",
            source="signup-form",
            ip="203.0.113.9",
            wording_version="v3",
        )
        assert grant.confirmation_url is None
        assert consent.has_valid_consent(session, cid)
    record = grant.record
    assert (record.granted, record.confirmed) == (True, True)
    assert (record.source, record.ip, record.wording_version) == (
        "signup-form",
        "203.0.113.9",
        "v3",
    )
    assert record.at.tzinfo is not None


def test_the_latest_record_is_in_force_even_within_one_clock_tick(runtime: Runtime) -> None:
    cid = _contact(runtime)
    with runtime.session() as session:
        for _ in range(3):
            consent.grant_consent(session, runtime.settings, cid, source="api")
            consent.withdraw_consent(session, cid, source="api")
        consent.grant_consent(session, runtime.settings, cid, source="api")
        history = consent.consent_history(session, cid)
        times = [r.at for r in history]
        assert times == sorted(times) and len(set(times)) == len(times)
        assert consent.has_valid_consent(session, cid)
        consent.withdraw_consent(session, cid, source="api")
        assert not consent.has_valid_consent(session, cid)


def test_withdrawing_marketing_unsubscribes_and_suppresses_for_marketing(runtime: Runtime) -> None:
    cid = _contact(runtime)
    with runtime.session() as session:
        consent.grant_consent(session, runtime.settings, cid, source="api")
        consent.withdraw_consent(session, cid, source="api")
        contact = session.get(Contact, cid)
        assert contact is not None and contact.status == ContactStatus.UNSUBSCRIBED
        assert is_suppressed(session, "ann@example.com")
        assert not is_suppressed(session, "ann@example.com", transactional=True)


def test_double_opt_in_counts_only_after_the_link_is_confirmed(runtime: Runtime) -> None:
    cid = _contact(runtime)
    settings = runtime.settings
    with runtime.session() as session:
        grant = consent.grant_consent(
            session,
            settings,
            cid,
            source="form",
            ip="198.51.100.4",
            wording_version="w1",
            double_opt_in=True,
        )
        assert grant.confirmation_url is not None
        assert grant.confirmation_url.startswith(f"{settings.base_url}/c/")
        assert not consent.has_valid_consent(session, cid)
    with runtime.session() as session:
        confirmed = consent.confirm_consent(
            session, settings, _token(grant.confirmation_url), ip="198.51.100.5"
        )
        assert confirmed.confirmed and confirmed.granted
        assert (confirmed.source, confirmed.ip, confirmed.wording_version) == (
            "double-opt-in",
            "198.51.100.5",
            "w1",
        )
        assert consent.has_valid_consent(session, cid)
    with runtime.session() as session:
        again = consent.confirm_consent(session, settings, _token(grant.confirmation_url))
        assert again.id == confirmed.id
        assert len(consent.consent_history(session, cid)) == 2


def test_a_confirmation_link_does_nothing_after_a_withdrawal(runtime: Runtime) -> None:
    cid = _contact(runtime)
    with runtime.session() as session:
        grant = consent.grant_consent(
            session, runtime.settings, cid, source="form", double_opt_in=True
        )
        consent.withdraw_consent(session, cid, source="api")
    assert grant.confirmation_url is not None
    with runtime.session() as session, pytest.raises(ConflictError):
        consent.confirm_consent(session, runtime.settings, _token(grant.confirmation_url))
    with runtime.session() as session:
        assert not consent.has_valid_consent(session, cid)


def test_tampered_expired_and_foreign_tokens_are_refused(runtime: Runtime) -> None:
    cid = _contact(runtime)
    settings = runtime.settings
    with runtime.session() as session:
        grant = consent.grant_consent(session, settings, cid, source="form", double_opt_in=True)
    assert grant.confirmation_url is not None
    token = _token(grant.confirmation_url)
    tampered = token[:-2] + ("AA" if token[-2:] != "AA" else "BB")
    unsubscribe_token = tokens.sign(
        "unsubscribe",
        {"r": grant.record.id, "c": cid, "p": "marketing"},
        key=settings.signing_keys()[0],
        ttl=60,
    )
    expired = tokens.sign(
        "confirm-consent",
        {"r": grant.record.id, "c": cid, "p": "marketing"},
        key=settings.signing_keys()[0],
        ttl=1,
        now=0,
    )
    for bad in (tampered, unsubscribe_token, expired, "garbage"):
        with runtime.session() as session, pytest.raises(tokens.InvalidToken):
            consent.confirm_consent(session, settings, bad)
    with runtime.session() as session:
        assert not consent.has_valid_consent(session, cid)


def test_confirming_resubscribes_an_unsubscribed_contact(runtime: Runtime) -> None:
    cid = _contact(runtime)
    with runtime.session() as session:
        consent.withdraw_consent(session, cid, source="api")
        assert is_suppressed(session, "ann@example.com")
        grant = consent.grant_consent(
            session, runtime.settings, cid, source="form", double_opt_in=True
        )
    assert grant.confirmation_url is not None
    with runtime.session() as session:
        consent.confirm_consent(session, runtime.settings, _token(grant.confirmation_url))
    with runtime.session() as session:
        contact = session.get(Contact, cid)
        assert contact is not None and contact.status == ContactStatus.ACTIVE
        assert not is_suppressed(session, "ann@example.com")


def test_a_single_opt_in_grant_does_not_lift_an_unsubscribe(runtime: Runtime) -> None:
    cid = _contact(runtime)
    with runtime.session() as session:
        consent.withdraw_consent(session, cid, source="api")
        consent.grant_consent(session, runtime.settings, cid, source="import")
    with runtime.session() as session:
        assert is_suppressed(session, "ann@example.com")


def test_bad_input_is_rejected_with_the_field(runtime: Runtime) -> None:
    cid = _contact(runtime)
    with runtime.session() as session:
        with pytest.raises(ValidationError) as bad_ip:
            consent.grant_consent(session, runtime.settings, cid, source="x", ip="not-an-ip")
        assert bad_ip.value.field == "ip"
        with pytest.raises(ValidationError) as bad_purpose:
            consent.grant_consent(session, runtime.settings, cid, "Marketing Emails!", source="x")
        assert bad_purpose.value.field == "purpose"
        with pytest.raises(NotFoundError):
            consent.grant_consent(session, runtime.settings, cid + 100, source="x")


def test_the_api_grants_lists_and_withdraws_in_one_call(client: Any, runtime: Runtime) -> None:
    cid = _contact(runtime)
    granted = client.post(
        f"/v1/contacts/{cid}/consent",
        json={
            "purpose": "marketing",
            "source": "web",
            "ip": "192.0.2.1",
            "wording_version": "2024-01",
        },
    )
    assert granted.status_code == 201, granted.text
    body = granted.json()
    assert body["record"]["granted"] and body["record"]["confirmed"]
    assert "/c/" in body["withdrawal_url"] and body["withdrawal_url"].endswith("/withdraw")
    ledger = client.get(f"/v1/contacts/{cid}/consent").json()
    assert ledger["marketing_consent"] is True
    assert ledger["current"]["marketing"]["ip"] == "192.0.2.1"
    withdrawn = client.delete(f"/v1/contacts/{cid}/consent/marketing")
    assert withdrawn.status_code == 200
    assert withdrawn.json()["record"]["granted"] is False
    assert client.get(f"/v1/contacts/{cid}/consent").json()["marketing_consent"] is False


def test_the_api_answers_bad_input_with_4xx(client: Any, runtime: Runtime) -> None:
    cid = _contact(runtime)
    bad_ip = client.post(f"/v1/contacts/{cid}/consent", json={"ip": "999.1.1.1"})
    assert bad_ip.status_code == 422 and bad_ip.json()["field"] == "ip"
    wrong_type = client.post(f"/v1/contacts/{cid}/consent", json={"granted": "maybe"})
    assert 400 <= wrong_type.status_code < 500
    missing = client.get(f"/v1/contacts/{cid + 50}/consent")
    assert missing.status_code == 404 and "does not exist" in missing.json()["detail"]


def test_the_public_link_confirms_only_on_post(client: Any, runtime: Runtime) -> None:
    cid = _contact(runtime)
    body = client.post(f"/v1/contacts/{cid}/consent", json={"double_opt_in": True}).json()
    path = body["confirmation_url"].removeprefix(runtime.settings.base_url)
    page = client.get(path, headers={"Authorization": ""})
    assert page.status_code == 200 and '<form method="post"' in page.text
    with runtime.session() as session:
        assert not consent.has_valid_consent(session, cid)
    done = client.post(path, headers={"Authorization": ""})
    assert done.status_code == 200 and "confirmed" in done.text
    with runtime.session() as session:
        assert consent.has_valid_consent(session, cid)
        history = consent.consent_history(session, cid)
        assert [(r.confirmed, r.source) for r in history] == [
            (False, "api"),
            (True, "double-opt-in"),
        ]
    assert client.get(path[:-3] + "xyz").status_code == 404


def test_the_public_withdrawal_link_withdraws_in_one_click(client: Any, runtime: Runtime) -> None:
    cid = _contact(runtime)
    url = client.post(f"/v1/contacts/{cid}/consent", json={}).json()["withdrawal_url"]
    path = url.removeprefix(runtime.settings.base_url)
    assert client.get(path).status_code == 200
    assert client.post(path).status_code == 200
    assert client.post(path).status_code == 200
    with runtime.session() as session:
        assert not consent.has_valid_consent(session, cid)
        contact = session.get(Contact, cid)
        assert contact is not None and contact.status == ContactStatus.UNSUBSCRIBED
