"""Engagement out to a CRM: only what changed, in batches (postwise.crm.engagement)."""

from __future__ import annotations

from datetime import timedelta

import pytest
from crm_memory import MemoryCrm
from sqlmodel import select

from postwise.compliance.unsubscribe import unsubscribe
from postwise.crm.engagement import pending_count, push_engagement
from postwise.crm.sync import poll
from postwise.db.models import Contact, CrmLink, Event, utcnow
from postwise.runtime import Runtime


def contact_id(runtime: Runtime, external_id: str) -> int:
    with runtime.session() as session:
        link = session.exec(select(CrmLink).where(CrmLink.external_id == external_id)).one()
        return link.contact_id


def engage(runtime: Runtime, cid: int, score: float, *, ago: timedelta = timedelta(0)) -> None:
    """Set the score as the analytics batch writer keeps it (as of the latest engagement)."""
    with runtime.session() as session:
        contact = session.get(Contact, cid)
        assert contact is not None
        contact.engagement_score = score
        contact.engagement_updated_at = utcnow() - ago
        session.add(contact)


@pytest.fixture
def three_linked(runtime: Runtime, memory_crm: MemoryCrm) -> dict[str, int]:
    for n in (1, 2, 3):
        memory_crm.put(f"c{n}", f"person{n}@example.com")
    poll(runtime, "memory")
    return {f"c{n}": contact_id(runtime, f"c{n}") for n in (1, 2, 3)}


def test_only_contacts_with_engagement_or_an_unsubscribe_are_pushed(
    runtime: Runtime, memory_crm: MemoryCrm, three_linked: dict[str, int]
) -> None:
    engage(runtime, three_linked["c1"], 4.0)
    with runtime.session() as session:
        unsubscribe(session, three_linked["c2"], source="test")

    report = push_engagement(runtime, "memory")

    assert report.pushed == 2
    assert set(memory_crm.pushed) == {"c1", "c2"}
    assert memory_crm.pushed["c1"]["engagement_score"] == pytest.approx(4.0, abs=0.01)
    assert memory_crm.pushed["c1"]["unsubscribed"] is False
    assert memory_crm.pushed["c2"]["unsubscribed"] is True


def test_a_second_push_sends_nothing_and_new_engagement_sends_only_that_contact(
    runtime: Runtime, memory_crm: MemoryCrm, three_linked: dict[str, int]
) -> None:
    engage(runtime, three_linked["c1"], 4.0)
    engage(runtime, three_linked["c2"], 2.0)
    push_engagement(runtime, "memory")
    assert pending_count(runtime, "memory") == 0

    again = push_engagement(runtime, "memory")
    assert (again.pushed, again.batches, len(memory_crm.pushes)) == (0, 0, 1)

    engage(runtime, three_linked["c2"], 5.0)
    third = push_engagement(runtime, "memory")
    assert third.pushed == 1
    assert [u.external_id for u in memory_crm.pushes[-1]] == ["c2"]


def test_last_open_and_click_leave_out_machine_opens(
    runtime: Runtime, memory_crm: MemoryCrm, three_linked: dict[str, int]
) -> None:
    cid = three_linked["c1"]
    human_open = utcnow() - timedelta(hours=3)
    click = utcnow() - timedelta(hours=2)
    with runtime.session() as session:
        session.add(Event(event_id="o1", type="open", occurred_at=human_open, contact_id=cid))
        session.add(
            Event(event_id="o2", type="open", occurred_at=utcnow(), contact_id=cid, automated=True)
        )
        session.add(Event(event_id="k1", type="click", occurred_at=click, contact_id=cid))
    engage(runtime, cid, 4.0)

    push_engagement(runtime, "memory")

    pushed = memory_crm.pushed["c1"]
    assert abs(pushed["last_open_at"] - human_open) < timedelta(seconds=1)
    assert abs(pushed["last_click_at"] - click) < timedelta(seconds=1)


def test_pushes_go_in_batches_of_the_connectors_size(
    runtime: Runtime, memory_crm: MemoryCrm, three_linked: dict[str, int]
) -> None:
    memory_crm.batch_size = 2
    for cid in three_linked.values():
        engage(runtime, cid, 1.0)

    report = push_engagement(runtime, "memory")

    assert (report.pushed, report.batches) == (3, 2)
    assert [len(batch) for batch in memory_crm.pushes] == [2, 1]


def test_a_record_gone_from_the_crm_is_unlinked_and_a_refused_one_stays_pending(
    runtime: Runtime, memory_crm: MemoryCrm, three_linked: dict[str, int]
) -> None:
    for cid in three_linked.values():
        engage(runtime, cid, 1.0)
    memory_crm.missing.add("c1")
    memory_crm.refusing.add("c2")

    report = push_engagement(runtime, "memory")

    assert (report.pushed, report.unlinked, report.failed) == (1, 1, 1)
    assert any("record c2: property is read-only" in e for e in report.errors)
    with runtime.session() as session:
        remaining = {link.external_id for link in session.exec(select(CrmLink))}
    assert remaining == {"c2", "c3"}
    memory_crm.refusing.clear()
    assert push_engagement(runtime, "memory").pushed == 1


def test_a_decayed_score_is_refreshed_in_the_crm(
    runtime: Runtime, memory_crm: MemoryCrm, three_linked: dict[str, int]
) -> None:
    engage(runtime, three_linked["c1"], 8.0, ago=timedelta(days=1))
    push_engagement(runtime, "memory")
    first = memory_crm.pushed["c1"]["engagement_score"]
    # Ten days later (the default half-life is 30 days) the score has decayed by about 20%.
    with runtime.session() as session:
        link = session.exec(select(CrmLink).where(CrmLink.external_id == "c1")).one()
        link.pushed_at = utcnow() - timedelta(days=10)
        session.add(link)
    engage(runtime, three_linked["c1"], 8.0, ago=timedelta(days=11))

    report = push_engagement(runtime, "memory")

    assert report.pushed == 1
    assert memory_crm.pushed["c1"]["engagement_score"] < first * 0.85
