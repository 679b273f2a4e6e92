"""Contacts in from a CRM: polls and their conflict rules (postwise.crm.sync)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from crm_memory import MemoryCrm, MemoryPlugin
from sqlmodel import select

from postwise.compliance.consent import MARKETING, current_consent
from postwise.compliance.erasure import erase_contact
from postwise.compliance.suppression import is_suppressed
from postwise.contacts.service import ContactData, upsert_contact
from postwise.crm.sync import POLL_OVERLAP, RunLock, poll
from postwise.db.models import Contact, ContactStatus, CrmLink, CrmSyncState, utcnow
from postwise.errors import ConflictError
from postwise.runtime import Runtime


def contact_by_email(runtime: Runtime, email: str) -> Contact | None:
    with runtime.session() as session:
        return session.exec(select(Contact).where(Contact.email == email)).first()


def links(runtime: Runtime) -> dict[str, int]:
    with runtime.session() as session:
        return {link.external_id: link.contact_id for link in session.exec(select(CrmLink))}


def test_new_crm_contacts_are_created_linked_and_announced(
    runtime: Runtime, memory_crm: MemoryCrm, memory_plugin: MemoryPlugin
) -> None:
    memory_crm.put("c1", "Ada@Example.COM", first_name="Ada", country="gb", plan="pro")
    memory_crm.put("c2", "grace@example.com", last_name="Hopper", timezone="America/New_York")

    report = poll(runtime, "memory")

    assert (report.received, report.created, report.updated) == (2, 2, 0)
    ada = contact_by_email(runtime, "ada@example.com")
    assert ada is not None
    assert (ada.first_name, ada.country, ada.attributes) == ("Ada", "GB", {"plan": "pro"})
    grace = contact_by_email(runtime, "grace@example.com")
    assert grace is not None and grace.timezone == "America/New_York"
    assert links(runtime) == {"c1": ada.id, "c2": grace.id}
    assert {source for _, _, source in memory_plugin.changes} == {"crm:memory"}


def test_rerunning_a_poll_changes_nothing(runtime: Runtime, memory_crm: MemoryCrm) -> None:
    memory_crm.put("c1", "ada@example.com", first_name="Ada")
    poll(runtime, "memory")
    before = contact_by_email(runtime, "ada@example.com")

    again = poll(runtime, "memory")
    full = poll(runtime, "memory", full=True)

    assert (again.received, again.unchanged, again.created, again.updated) == (1, 1, 0, 0)
    assert (full.unchanged, full.created, full.updated) == (1, 0, 0)
    after = contact_by_email(runtime, "ada@example.com")
    assert before is not None and after is not None
    assert after.updated_at == before.updated_at


def test_the_next_poll_starts_at_the_cursor_less_the_overlap(
    runtime: Runtime, memory_crm: MemoryCrm
) -> None:
    record = memory_crm.put("c1", "ada@example.com")
    first = poll(runtime, "memory")
    poll(runtime, "memory")

    assert memory_crm.fetches == [None, record.updated_at - POLL_OVERLAP]
    assert first.cursor == record.updated_at.isoformat()
    with runtime.session() as session:
        state = session.get(CrmSyncState, "memory")
        assert state is not None and state.last_polled_at is not None


def test_a_field_changed_only_in_the_crm_takes_the_crm_value(
    runtime: Runtime, memory_crm: MemoryCrm
) -> None:
    memory_crm.put("c1", "ada@example.com", first_name="Ada", last_name="Byron")
    poll(runtime, "memory")
    memory_crm.put("c1", "ada@example.com", last_name="Lovelace")

    report = poll(runtime, "memory")

    ada = contact_by_email(runtime, "ada@example.com")
    assert report.updated == 1
    assert ada is not None and (ada.first_name, ada.last_name) == ("Ada", "Lovelace")


def test_a_field_changed_only_in_postwise_keeps_its_value_when_the_crm_changes_another(
    runtime: Runtime, memory_crm: MemoryCrm
) -> None:
    memory_crm.put("c1", "ada@example.com", first_name="Ada", last_name="Byron")
    poll(runtime, "memory")
    with runtime.session() as session:
        upsert_contact(session, ContactData(email="ada@example.com", first_name="Augusta"))
    # The CRM's record changes later than the local edit, but not the first name.
    memory_crm.put("c1", "ada@example.com", at=utcnow() + timedelta(days=1), last_name="King")

    report = poll(runtime, "memory")

    ada = contact_by_email(runtime, "ada@example.com")
    assert ada is not None and (ada.first_name, ada.last_name) == ("Augusta", "King")
    assert report.conflicts == 0


def test_a_field_changed_on_both_sides_goes_to_the_later_writer(
    runtime: Runtime, memory_crm: MemoryCrm
) -> None:
    memory_crm.put("c1", "ada@example.com", first_name="Ada", at=utcnow() - timedelta(days=2))
    memory_crm.put("c2", "bob@example.com", first_name="Bob", at=utcnow() - timedelta(days=2))
    poll(runtime, "memory")
    with runtime.session() as session:
        upsert_contact(session, ContactData(email="ada@example.com", first_name="Local Ada"))
        upsert_contact(session, ContactData(email="bob@example.com", first_name="Local Bob"))
    # Ada's CRM edit is older than postwise's (made before it, fetched after); Bob's is newer.
    memory_crm.put("c1", "ada@example.com", first_name="CRM Ada", at=utcnow() - timedelta(days=1))
    memory_crm.put("c2", "bob@example.com", first_name="CRM Bob", at=utcnow() + timedelta(days=1))

    report = poll(runtime, "memory")

    ada = contact_by_email(runtime, "ada@example.com")
    bob = contact_by_email(runtime, "bob@example.com")
    assert ada is not None and ada.first_name == "Local Ada"
    assert bob is not None and bob.first_name == "CRM Bob"
    assert report.conflicts == 1
    # The CRM's losing value is remembered as seen: the next poll does not re-apply it.
    assert poll(runtime, "memory", full=True).conflicts == 0
    ada = contact_by_email(runtime, "ada@example.com")
    assert ada is not None and ada.first_name == "Local Ada"


def test_an_existing_contact_is_linked_by_email_not_duplicated(
    runtime: Runtime, memory_crm: MemoryCrm
) -> None:
    with runtime.session() as session:
        existing, _ = upsert_contact(session, ContactData(email="ada@example.com"))
    memory_crm.put("c1", "ADA@example.com", first_name="Ada")

    report = poll(runtime, "memory")

    assert (report.created, report.updated) == (0, 1)
    assert links(runtime) == {"c1": existing.id}


def test_a_record_deleted_in_the_crm_is_unlinked_and_the_contact_kept(
    runtime: Runtime, memory_crm: MemoryCrm
) -> None:
    memory_crm.put("c1", "ada@example.com")
    poll(runtime, "memory")
    memory_crm.delete("c1")

    report = poll(runtime, "memory")

    assert report.unlinked == 1
    assert links(runtime) == {}
    assert contact_by_email(runtime, "ada@example.com") is not None
    assert poll(runtime, "memory").unlinked == 0


def test_an_opt_out_in_the_crm_unsubscribes_and_clearing_it_does_not_resubscribe(
    runtime: Runtime, memory_crm: MemoryCrm
) -> None:
    memory_crm.put("c1", "ada@example.com", unsubscribed=False)
    poll(runtime, "memory")
    memory_crm.put("c1", "ada@example.com", unsubscribed=True)

    report = poll(runtime, "memory")

    assert report.unsubscribed == 1
    ada = contact_by_email(runtime, "ada@example.com")
    assert ada is not None and ada.status == ContactStatus.UNSUBSCRIBED
    with runtime.session() as session:
        assert is_suppressed(session, "ada@example.com")
        consent = current_consent(session, ada.id, MARKETING)
        assert consent is not None and not consent.granted and consent.source == "crm:memory"

    memory_crm.put("c1", "ada@example.com", unsubscribed=False)
    poll(runtime, "memory")
    ada = contact_by_email(runtime, "ada@example.com")
    assert ada is not None and ada.status == ContactStatus.UNSUBSCRIBED


def test_postwise_owned_properties_are_never_taken_from_the_crm(
    runtime: Runtime, memory_crm: MemoryCrm
) -> None:
    memory_crm.put("c1", "ada@example.com", unsubscribed=True)
    poll(runtime, "memory")
    memory_crm.put("c1", "ada@example.com", status="active", engagement_score=99.0)

    report = poll(runtime, "memory")

    ada = contact_by_email(runtime, "ada@example.com")
    assert ada is not None
    assert ada.status == ContactStatus.UNSUBSCRIBED
    assert ada.engagement_score == 0.0
    assert "status" not in ada.attributes and "engagement_score" not in ada.attributes
    assert any("'status' is postwise's own" in e for e in report.errors)


def test_invalid_values_are_reported_and_the_rest_still_syncs(
    runtime: Runtime, memory_crm: MemoryCrm
) -> None:
    memory_crm.put("bad", "not an address", first_name="Nobody")
    memory_crm.put("c2", "bob@example.com", first_name="Bob", country="Germany")

    report = poll(runtime, "memory")

    assert (report.invalid, report.created) == (1, 1)
    assert any("record bad: no valid email address" in e for e in report.errors)
    assert any("record c2: invalid country" in e for e in report.errors)
    bob = contact_by_email(runtime, "bob@example.com")
    assert bob is not None and (bob.first_name, bob.country) == ("Bob", None)
    assert all("@" not in e for e in report.errors)


def test_a_changed_address_moves_the_contact_unless_another_contact_has_it(
    runtime: Runtime, memory_crm: MemoryCrm
) -> None:
    memory_crm.put("c1", "ada@example.com")
    memory_crm.put("c2", "bob@example.com")
    poll(runtime, "memory")
    ada_id = links(runtime)["c1"]
    memory_crm.put("c1", "ada@new.example")
    memory_crm.put("c2", "ada@new.example")

    report = poll(runtime, "memory")

    moved = contact_by_email(runtime, "ada@new.example")
    assert moved is not None and moved.id == ada_id
    assert contact_by_email(runtime, "bob@example.com") is not None
    assert report.conflicts == 1
    assert links(runtime)["c2"] != ada_id


def test_an_erased_person_is_not_recreated_from_the_crm(
    runtime: Runtime, memory_crm: MemoryCrm
) -> None:
    memory_crm.put("c1", "ada@example.com", first_name="Ada")
    poll(runtime, "memory")
    ada = contact_by_email(runtime, "ada@example.com")
    assert ada is not None

    erase_contact(runtime, contact_id=ada.id, actor="test")
    assert links(runtime) == {}
    memory_crm.put("c1", "ada@example.com", first_name="Ada L.")
    report = poll(runtime, "memory", full=True)

    assert report.skipped_erased == 1
    assert contact_by_email(runtime, "ada@example.com") is None
    assert links(runtime) == {}


def test_only_one_poll_of_a_crm_runs_at_a_time(runtime: Runtime, memory_crm: MemoryCrm) -> None:
    memory_crm.put("c1", "ada@example.com")
    with RunLock(runtime, "memory", "poll"), pytest.raises(ConflictError, match="already running"):
        poll(runtime, "memory")
    assert poll(runtime, "memory").created == 1


def test_closing_the_runtime_closes_the_crm_connectors_it_built(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Connectors hold HTTP clients (HubSpot, Salesforce): a closed runtime must not leak them,
    # and a connector that fails to close must not keep the rest of the runtime open.
    from crm_memory import MemoryConnector

    from postwise.crm.sync import connector_for

    closed: list[object] = []

    def close(self: MemoryConnector) -> None:
        closed.append(self)
        raise RuntimeError("socket already gone")

    monkeypatch.setattr(MemoryConnector, "close", close)
    connector = connector_for(runtime, "memory")
    assert connector_for(runtime, "memory") is connector  # built once per runtime
    runtime.redis.ping()
    runtime.close()
    assert closed == [connector]
    runtime.close()  # closing twice closes nothing twice
    assert closed == [connector]
    # The runtime builds a fresh connector if it is used again.
    assert connector_for(runtime, "memory") is not connector
