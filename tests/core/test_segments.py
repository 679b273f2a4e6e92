"""Segments compile to SQL: attribute comparisons, tags, consent, status, time zone, nesting."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlmodel import Session

from postwise.contacts.segments import (
    contacts_in_segment,
    count_segment,
    iter_segment_ids,
    segments_of,
    validate_rules,
)
from postwise.db.models import ConsentRecord, Contact, ContactTag, Segment, SegmentMember, utcnow
from postwise.errors import ValidationError
from postwise.runtime import Runtime


@pytest.fixture
def people(runtime: Runtime) -> dict[str, int]:
    ids: dict[str, int] = {}
    with runtime.session() as session:
        for name, attrs, tz, status in [
            ("ann", {"plan": "pro", "ltv": 900, "beta": True}, "Europe/Paris", "active"),
            ("bob", {"plan": "free", "ltv": 20}, "America/New_York", "active"),
            ("cy", {"plan": "pro", "ltv": 50}, "Europe/Paris", "unsubscribed"),
            ("dee", {}, "UTC", "active"),
        ]:
            contact = Contact(
                email=f"{name}@example.com",
                attributes=attrs,
                timezone=tz,
                status=status,
                first_name=name.title(),
            )
            session.add(contact)
            session.flush()
            assert contact.id is not None
            ids[name] = contact.id
        session.add(ContactTag(contact_id=ids["ann"], tag="vip"))
        session.add(ContactTag(contact_id=ids["dee"], tag="vip"))
        now = utcnow()
        session.add(
            ConsentRecord(
                contact_id=ids["ann"], purpose="marketing", granted=True, at=now - timedelta(days=2)
            )
        )
        session.add(
            ConsentRecord(
                contact_id=ids["bob"], purpose="marketing", granted=True, at=now - timedelta(days=2)
            )
        )
        session.add(
            ConsentRecord(
                contact_id=ids["bob"],
                purpose="marketing",
                granted=False,
                at=now - timedelta(days=1),
            )
        )
    return ids


def _members(session: Session, rules: dict, name: str = "s") -> set[int]:
    segment = Segment(name=name, rules=rules)
    session.add(segment)
    session.flush()
    return {cid for page in iter_segment_ids(session, segment, page_size=2) for cid in page}


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        ({"field": "attributes.plan", "op": "eq", "value": "pro"}, {"ann", "cy"}),
        ({"field": "attributes.ltv", "op": "gte", "value": 50}, {"ann", "cy"}),
        ({"field": "attributes.ltv", "op": "lt", "value": 50}, {"bob"}),
        ({"field": "attributes.beta", "op": "eq", "value": True}, {"ann"}),
        ({"field": "attributes.plan", "op": "not_exists"}, {"dee"}),
        ({"field": "attributes.plan", "op": "in", "value": ["free", "team"]}, {"bob"}),
        (
            {"field": "email", "op": "ends_with", "value": "@example.com"},
            {"ann", "bob", "cy", "dee"},
        ),
        ({"field": "first_name", "op": "contains", "value": "o"}, {"bob"}),
        ({"tag": "vip"}, {"ann", "dee"}),
        ({"consent": "marketing"}, {"ann"}),
        ({"status": "active"}, {"ann", "bob", "dee"}),
        ({"timezone": ["Europe/Paris"]}, {"ann", "cy"}),
        ({"all": [{"tag": "vip"}, {"not": {"field": "attributes.plan", "op": "exists"}}]}, {"dee"}),
        (
            {"any": [{"tag": "vip"}, {"field": "attributes.plan", "op": "eq", "value": "free"}]},
            {"ann", "bob", "dee"},
        ),
    ],
)
def test_rules_select_the_right_contacts(
    runtime: Runtime, people: dict[str, int], rules: dict, expected: set[str]
) -> None:
    with runtime.session() as session:
        assert _members(session, rules) == {people[n] for n in expected}


def test_a_segment_can_build_on_another_and_cycles_are_rejected(
    runtime: Runtime, people: dict[str, int]
) -> None:
    with runtime.session() as session:
        session.add(Segment(name="vips", rules={"tag": "vip"}))
        session.flush()
        assert _members(session, {"all": [{"segment": "vips"}, {"status": "active"}]}) == {
            people["ann"],
            people["dee"],
        }
        loop = Segment(name="loop", rules={"segment": "loop"})
        session.add(loop)
        session.flush()
        with pytest.raises(ValidationError, match="refers back to itself"):
            count_segment(session, loop)


def test_static_segments_and_batch_membership(runtime: Runtime, people: dict[str, int]) -> None:
    with runtime.session() as session:
        static = Segment(name="picked", kind="static")
        session.add(static)
        session.flush()
        assert static.id is not None
        session.add(SegmentMember(segment_id=static.id, contact_id=people["bob"]))
        session.add(
            Segment(name="pros", rules={"field": "attributes.plan", "op": "eq", "value": "pro"})
        )
        session.flush()
        assert contacts_in_segment(session, "picked", people.values()) == {people["bob"]}
        memberships = segments_of(session, [people["ann"], people["bob"]])
        assert memberships == {people["ann"]: {"pros"}, people["bob"]: {"picked"}}


@pytest.mark.parametrize(
    ("rules", "field"),
    [
        (
            {"all": [{"tag": "x"}, {"field": "attributes.a", "op": "between", "value": 1}]},
            "rules.all[1].op",
        ),
        ({"any": []}, "rules.any"),
        ({"field": "shoe_size", "op": "eq", "value": 1}, "rules.field"),
        ({"field": "attributes.a", "op": "in", "value": "x"}, "rules.value"),
        ({"colour": "red"}, "rules"),
    ],
)
def test_invalid_rules_name_the_offending_path(rules: dict, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        validate_rules(rules)
    assert info.value.field == field
