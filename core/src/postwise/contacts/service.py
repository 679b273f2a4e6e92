"""Creating, changing and reading contacts, with validation and the contact-changed hook."""

from __future__ import annotations

import json
import zoneinfo
from collections.abc import Mapping, Sequence
from functools import lru_cache
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlmodel import Session, col, select

from postwise.contacts.normalize import normalize_email
from postwise.db.models import Contact, ContactStatus, ContactTag, utcnow
from postwise.errors import ComplianceError, NotFoundError, ValidationError

if TYPE_CHECKING:
    from postwise.plugins import PluginHost

__all__ = [
    "ContactData",
    "contact_dict",
    "get_contact",
    "set_tags",
    "upsert_contact",
    "valid_timezone",
]


@lru_cache(maxsize=1024)
def valid_timezone(name: str) -> bool:
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


class ContactData(BaseModel):
    """A contact as the API and importers accept it."""

    model_config = ConfigDict(extra="forbid")

    email: str
    first_name: str | None = Field(default=None, max_length=200)
    last_name: str | None = Field(default=None, max_length=200)
    timezone: str | None = None
    country: str | None = Field(default=None, min_length=2, max_length=2)
    status: ContactStatus | None = None
    tags: list[str] | None = None
    attributes: dict[str, Any] | None = None

    @field_validator("email")
    @classmethod
    def _email(cls, value: str) -> str:
        try:
            return normalize_email(value)
        except ValidationError as exc:
            raise ValueError(str(exc).removeprefix("email: ")) from None

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str | None) -> str | None:
        if value is not None and not valid_timezone(value):
            raise ValueError(f"{value!r} is not an IANA time zone such as 'Europe/Paris'")
        return value

    @field_validator("country")
    @classmethod
    def _country(cls, value: str | None) -> str | None:
        return value.upper() if value else value

    @field_validator("tags")
    @classmethod
    def _tags(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        cleaned = sorted({t.strip() for t in value if t.strip()})
        if any(len(t) > 100 for t in cleaned):
            raise ValueError("tags are at most 100 characters")
        return cleaned

    @field_validator("attributes")
    @classmethod
    def _attributes(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        for key in value:
            if not key or len(key) > 100 or "." in key:
                raise ValueError(f"attribute name {key!r} must be 1-100 characters without '.'")
        check_attributes_size(value)
        return value


#: Caps on a contact's attributes (after merging an update into the stored ones).
MAX_ATTRIBUTES = 100
MAX_ATTRIBUTES_BYTES = 16_384


def check_attributes_size(attributes: dict[str, Any]) -> None:
    """ValueError unless ``attributes`` fits the caps (100 names, 16 KiB as JSON)."""
    if len(attributes) > MAX_ATTRIBUTES:
        raise ValueError(f"a contact has at most {MAX_ATTRIBUTES} attributes")
    size = len(json.dumps(attributes, separators=(",", ":"), default=str).encode())
    if size > MAX_ATTRIBUTES_BYTES:
        raise ValueError(
            f"attributes take {size} bytes as JSON; at most {MAX_ATTRIBUTES_BYTES} are kept "
            "per contact (store large data elsewhere and keep a reference)"
        )


def get_contact(session: Session, contact_id: int) -> Contact:
    contact = session.get(Contact, contact_id)
    if contact is None:
        raise NotFoundError(f"no contact with id {contact_id}")
    return contact


def contact_dict(contact: Contact, tags: Sequence[str] = ()) -> dict[str, Any]:
    return {
        "id": contact.id,
        "email": contact.email,
        "first_name": contact.first_name,
        "last_name": contact.last_name,
        "timezone": contact.timezone,
        "country": contact.country,
        "status": contact.status,
        "tags": list(tags),
        "attributes": contact.attributes,
        "engagement_score": contact.engagement_score,
        "created_at": contact.created_at.isoformat() if contact.created_at else None,
        "updated_at": contact.updated_at.isoformat() if contact.updated_at else None,
    }


def set_tags(session: Session, contact_id: int, tags: Sequence[str]) -> None:
    session.execute(sa.delete(ContactTag).where(col(ContactTag.contact_id) == contact_id))
    for tag in tags:
        session.add(ContactTag(contact_id=contact_id, tag=tag))


def upsert_contact(
    session: Session,
    data: ContactData,
    *,
    source: str = "api",
    plugins: PluginHost | None = None,
) -> tuple[Contact, bool]:
    """Create the contact or update it by normalised email; returns (contact, created)."""
    contact = session.exec(select(Contact).where(Contact.email == data.email)).first()
    created = contact is None
    changes: dict[str, Any] = {}
    if contact is None:
        contact = Contact(email=data.email)
        changes["email"] = data.email
    if (
        not created
        and data.status is not None
        and contact.status not in (data.status, ContactStatus.ACTIVE)
    ):
        # Unsubscribes, bounces and complaints are the person's or the mailbox's word; an
        # operator or a CRM sync must not undo them. Resubscribing goes through consent.
        raise ComplianceError(
            f"contact {contact.id} is {contact.status}; its status cannot be changed by an "
            "update — the person can opt in again through a consent confirmation link"
        )
    for name in ("first_name", "last_name", "timezone", "country", "status"):
        value = getattr(data, name)
        if value is not None and getattr(contact, name) != value:
            setattr(contact, name, value)
            changes[name] = value
    if data.attributes:
        merged = {**contact.attributes, **data.attributes}
        try:
            check_attributes_size(merged)
        except ValueError as exc:
            raise ValidationError(str(exc), field="attributes") from None
        if merged != contact.attributes:
            contact.attributes = merged
            changes["attributes"] = data.attributes
    if changes:
        contact.updated_at = utcnow()
    session.add(contact)
    session.flush()
    assert contact.id is not None
    if data.tags is not None:
        current = sorted(
            session.exec(select(ContactTag.tag).where(ContactTag.contact_id == contact.id))
        )
        if current != data.tags:
            set_tags(session, contact.id, data.tags)
            changes["tags"] = data.tags
    if changes and plugins is not None:
        notify_changed(plugins, contact.id, changes, source)
    return contact, created


def notify_changed(
    plugins: PluginHost, contact_id: int, changes: Mapping[str, Any], source: str
) -> None:
    plugins.hook.postwise_contact_changed(contact_id=contact_id, changes=changes, source=source)
