"""``/v1/contacts`` and ``/v1/segments``."""

from __future__ import annotations

import zoneinfo
from typing import Annotated, Any, Literal

import msgspec
import sqlalchemy as sa
from litestar import Controller, Request, delete, get, patch, post
from litestar.params import Parameter
from pydantic import ValidationError as PydanticValidationError
from sqlmodel import Session, col, select

from postwise.contacts.normalize import normalize_email
from postwise.contacts.segments import (
    count_segment,
    get_segment,
    iter_segment_ids,
    set_consent_purpose,
    validate_rules,
)
from postwise.contacts.service import (
    MAX_ATTRIBUTES,
    ContactData,
    contact_dict,
    get_contact,
    upsert_contact,
)
from postwise.db.models import Campaign, Contact, ContactStatus, ContactTag, Segment, SegmentMember
from postwise.errors import ConflictError, NotFoundError, ValidationError
from postwise.runtime import Runtime
from postwise.server.dto import Body, Email, IdField, Name
from postwise.server.pagination import After, Limit, next_after

__all__ = ["ContactsController", "SegmentsController"]


_ZONES = sorted(zoneinfo.available_timezones())
_AttributeName = Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=r"^[^.]*$")]


class ContactPatch(Body):
    """Fields of a contact to change; absent or null fields stay as they are."""

    first_name: Annotated[str, msgspec.Meta(max_length=200, examples=["Ann"])] | None = None
    last_name: Annotated[str, msgspec.Meta(max_length=200)] | None = None
    #: An IANA time zone.
    timezone: (
        Annotated[str, msgspec.Meta(extra_json_schema={"enum": _ZONES}, examples=["Europe/Paris"])]
        | None
    ) = None
    #: ISO 3166-1 alpha-2.
    country: Annotated[str, msgspec.Meta(pattern="^[A-Za-z]{2}$", examples=["FR"])] | None = None
    status: ContactStatus | None = None
    #: Replaces the contact's tags.
    tags: (
        Annotated[
            list[Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=r"\S")]],
            msgspec.Meta(max_length=100, examples=[["vip", "beta"]]),
        ]
        | None
    ) = None
    #: Merged into the stored attributes: at most 100 names and 16 KiB as JSON in all.
    attributes: (
        Annotated[
            dict[
                Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=r"^[^.]*$")], Any
            ],
            msgspec.Meta(max_length=MAX_ATTRIBUTES, examples=[{"plan": "pro", "seats": 3}]),
        ]
        | None
    ) = None
    #: Must be the contact's (it cannot change).
    email: Email | None = None


class ContactIn(ContactPatch, kw_only=True):
    """A contact, matched by its normalised email: created, or updated when it exists."""

    email: Email


def _parse_contact(body: Any, *, partial_email: str | None = None) -> ContactData:
    if isinstance(body, msgspec.Struct):
        body = {k: v for k, v in msgspec.structs.asdict(body).items() if v is not None}
    if not isinstance(body, dict):
        raise ValidationError("the body must be a JSON object")
    if partial_email is not None:
        body = {**body, "email": body.get("email", partial_email)}
    try:
        return ContactData.model_validate(body)
    except PydanticValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or None
        message = first["msg"].removeprefix("Value error, ")
        if first["type"] == "extra_forbidden":
            message = "unknown field; allowed: " + ", ".join(ContactData.model_fields)
        raise ValidationError(message, field=where) from None


def _tags(session: Session, contact_id: int) -> list[str]:
    return sorted(session.exec(select(ContactTag.tag).where(ContactTag.contact_id == contact_id)))


class ContactsController(Controller):
    path = "/v1/contacts"
    tags = ["contacts"]

    @post("/", sync_to_thread=True)
    def upsert(
        self,
        request: Request[Any, Any, Any],
        session: Session,
        runtime: Runtime,
        data: ContactIn,
    ) -> dict[str, Any]:
        """Create a contact, or update the one with the same normalised email."""
        contact, created = upsert_contact(
            session, _parse_contact(data), source="api", plugins=runtime.plugins
        )
        assert contact.id is not None
        return {"created": created, "contact": contact_dict(contact, _tags(session, contact.id))}

    @get("/", sync_to_thread=True)
    def list_contacts(
        self,
        session: Session,
        after: After = 0,
        limit: Limit = 100,
        email: Annotated[
            str | None,
            Parameter(
                max_length=254,
                schema_extra={"format": "email"},
                description="Only the contact with this address (normalised).",
            ),
        ] = None,
    ) -> dict[str, Any]:
        """Contacts in id order with their tags, paged by ``after`` (keyset pagination)."""
        query = select(Contact).where(col(Contact.id) > after)
        if email is not None and (not email or email != email.strip()):
            raise ValidationError(
                "must be an email address without surrounding blanks", field="email"
            )
        if email:
            query = query.where(Contact.email == normalize_email(email))
        rows = list(session.exec(query.order_by(col(Contact.id)).limit(limit)))
        tags: dict[int, list[str]] = {}
        if rows:
            pairs = session.exec(
                select(ContactTag.contact_id, ContactTag.tag)
                .where(col(ContactTag.contact_id).in_([c.id for c in rows]))
                .order_by(col(ContactTag.tag))
            )
            for contact_id, tag in pairs:
                tags.setdefault(contact_id, []).append(tag)
        return {
            "contacts": [contact_dict(c, tags.get(c.id or 0, [])) for c in rows],
            "next_after": next_after(rows, limit),
        }

    @get("/{contact_id:int}", sync_to_thread=True)
    def show(self, session: Session, contact_id: int) -> dict[str, Any]:
        contact = get_contact(session, contact_id)
        return contact_dict(contact, _tags(session, contact_id))

    @patch("/{contact_id:int}", sync_to_thread=True, opt={"problems": [409]})
    def update(
        self, session: Session, runtime: Runtime, contact_id: int, data: ContactPatch
    ) -> dict[str, Any]:
        """Change fields of a contact; the email cannot change (create another contact)."""
        contact = get_contact(session, contact_id)
        if data.email is not None and normalize_email(data.email) != contact.email:
            raise ConflictError(
                f"contact {contact_id} has email {contact.email!r}; an email cannot change "
                "(create another contact)"
            )
        parsed = _parse_contact(data, partial_email=contact.email)
        contact, _ = upsert_contact(session, parsed, source="api", plugins=runtime.plugins)
        return contact_dict(contact, _tags(session, contact_id))


class SegmentIn(Body):
    """A rule-based segment (``rules``, see docs/segments.md) or a static list (``contact_ids``)."""

    name: Annotated[Name, msgspec.Meta(examples=["vips"])]
    kind: Literal["rules", "static"] = "rules"
    #: The rule tree (rule segments): ``{"tag": "vip"}``, ``{"all": [...]}``, ...
    rules: Annotated[dict[str, Any], msgspec.Meta(examples=[{"tag": "vip"}])] | None = None
    #: The members of a static list.
    contact_ids: Annotated[list[IdField], msgspec.Meta(max_length=10_000)] | None = None
    #: A consent purpose every marketing send to the segment needs (``"newsletter"``).
    consent_purpose: (
        Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_.-]{0,49}$", examples=["newsletter"])]
        | None
    ) = None


_Purpose = Annotated[
    str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_.-]{0,49}$", examples=["newsletter"])
]


class SegmentPatch(Body):
    """What ``PATCH /v1/segments/{name}`` changes."""

    #: The consent purpose sends to the segment need; ``null`` removes it.
    consent_purpose: (
        Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_.-]{0,49}$", examples=["newsletter"])]
        | msgspec.UnsetType
        | None
    ) = msgspec.UNSET


def _segment_dict(segment: Segment, *, count: int | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "id": segment.id,
        "name": segment.name,
        "kind": segment.kind,
        "rules": segment.rules,
        "consent_purpose": segment.consent_purpose,
    }
    if count is not None:
        body["count"] = count
    return body


class SegmentsController(Controller):
    path = "/v1/segments"
    tags = ["segments"]

    @post("/", sync_to_thread=True)
    def create(self, session: Session, data: SegmentIn) -> dict[str, Any]:
        """Create a rule-based segment (``rules``) or a static list (``contact_ids``).

        With ``consent_purpose``, every marketing send to it needs the contact's valid consent
        for that purpose."""
        if not data.name.strip() or len(data.name) > 200:
            raise ValidationError("must be 1-200 characters", field="name")
        if session.exec(select(Segment).where(Segment.name == data.name)).first():
            raise ConflictError(f"a segment called {data.name!r} exists already")
        if data.kind not in ("rules", "static"):
            raise ValidationError("must be 'rules' or 'static'", field="kind")
        if data.kind == "rules":
            if not data.rules:
                raise ValidationError("a rule segment needs rules", field="rules")
            validate_rules(data.rules, session=session)
        segment = Segment(name=data.name, kind=data.kind, rules=data.rules or {})
        set_consent_purpose(segment, data.consent_purpose)
        session.add(segment)
        session.flush()
        if data.kind == "static" and data.contact_ids:
            add_members(session, segment, data.contact_ids)
        return _segment_dict(segment, count=count_segment(session, segment))

    @get("/", sync_to_thread=True)
    def list_segments(self, session: Session) -> list[dict[str, Any]]:
        return [_segment_dict(s) for s in session.exec(select(Segment).order_by(col(Segment.name)))]

    @get("/{name:str}", sync_to_thread=True)
    def show(self, session: Session, name: str) -> dict[str, Any]:
        segment = get_segment(session, name)
        return _segment_dict(segment, count=count_segment(session, segment))

    @patch("/{name:str}", sync_to_thread=True)
    def update(self, session: Session, name: str, data: SegmentPatch) -> dict[str, Any]:
        """Change a segment's ``consent_purpose`` (``null`` removes it).

        Campaigns dispatched afterwards follow it; messages already queued keep the purpose
        they were queued with."""
        segment = get_segment(session, name)
        if data.consent_purpose is not msgspec.UNSET:
            set_consent_purpose(segment, data.consent_purpose)
        session.add(segment)
        session.flush()
        return _segment_dict(segment, count=count_segment(session, segment))

    @get("/{name:str}/members", sync_to_thread=True)
    def members(
        self,
        session: Session,
        name: str,
        after: After = 0,
        limit: Annotated[int, Parameter(ge=1, le=10000)] = 1000,
    ) -> dict[str, Any]:
        """Member ids in id order, paged by ``after``."""
        segment = get_segment(session, name)
        extra = col(Contact.id) > after
        page = next(iter_segment_ids(session, segment, page_size=limit, extra=extra), [])
        return {"contact_ids": page, "next_after": page[-1] if len(page) == limit else None}

    @post("/{name:str}/members", sync_to_thread=True)
    def add(self, session: Session, name: str, data: list[int]) -> dict[str, Any]:
        segment = get_segment(session, name)
        return {"added": add_members(session, segment, data)}

    @delete("/{name:str}", sync_to_thread=True, status_code=204)
    def remove(self, session: Session, name: str) -> None:
        """Delete a segment no campaign uses (409 names the campaigns that do)."""
        segment = get_segment(session, name)
        users = list(
            session.exec(
                select(Campaign.id, Campaign.name)
                .where(Campaign.segment_id == segment.id)
                .order_by(col(Campaign.id))
                .limit(5)
            )
        )
        if users:
            named = ", ".join(f"{cid} ({cname!r})" for cid, cname in users)
            raise ConflictError(
                f"segment {segment.name!r} is used by campaign {named}; delete or change those "
                "campaigns first"
            )
        session.execute(sa.delete(SegmentMember).where(col(SegmentMember.segment_id) == segment.id))
        session.delete(segment)


def add_members(session: Session, segment: Segment, contact_ids: list[int]) -> int:
    """Add contacts to a static segment; unknown ids are an error naming them."""
    if segment.kind != "static":
        raise ConflictError(
            f"segment {segment.name!r} is rule-based: its members follow its rules; only a static "
            "list takes members"
        )
    ids = sorted(set(contact_ids))
    found = set(session.exec(select(Contact.id).where(col(Contact.id).in_(ids))))
    missing = [i for i in ids if i not in found]
    if missing:
        raise NotFoundError(f"no contacts with ids {missing[:20]}")
    present = set(
        session.exec(
            select(SegmentMember.contact_id).where(
                SegmentMember.segment_id == segment.id, col(SegmentMember.contact_id).in_(ids)
            )
        )
    )
    new = [i for i in ids if i not in present]
    for cid in new:
        assert segment.id is not None
        session.add(SegmentMember(segment_id=segment.id, contact_id=cid))
    return len(new)
