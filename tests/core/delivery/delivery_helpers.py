"""Helpers for the delivery tests: seed contacts, templates, campaigns; read the ledger."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from sqlmodel import col

from postwise.db.models import (
    Campaign,
    ConsentRecord,
    Contact,
    Message,
    Segment,
    SegmentMember,
    Template,
    TemplateVersion,
)
from postwise.runtime import Runtime
from postwise.testing.smtp import FaultySmtpServer

HTML = (
    "<html><body><p>Hello {{ first_name | default('there') }}</p>"
    '<p><a href="https://www.example.com/offer">offer</a></p>'
    '<p><a href="{{ unsubscribe_url }}">unsubscribe</a> {{ postal_address }}</p></body></html>'
)


def delivery_overrides(server: FaultySmtpServer, **overrides: Any) -> dict[str, Any]:
    """Settings that point the SMTP provider at ``server`` and make retries quick."""
    values: dict[str, Any] = {
        "smtp_host": "127.0.0.1",
        "smtp_port": server.port,
        "smtp_starttls": "off",
        "smtp_timeout": 5.0,
        "retry_base_seconds": 0.05,
        "retry_max_seconds": 0.2,
        "frequency_cap": "off",
        "batch_size": 50,
    }
    values.update(overrides)
    return values


def add_contacts(
    runtime: Runtime,
    count: int,
    *,
    prefix: str = "user",
    domain: str = "example.org",
    **fields: Any,
) -> list[int]:
    """Insert ``count`` contacts; returns their ids."""
    with runtime.session() as session:
        contacts = [
            Contact(email=f"{prefix}{i}@{domain}", first_name=f"Name{i}", **fields)
            for i in range(count)
        ]
        session.add_all(contacts)
        session.flush()
        return [c.id for c in contacts if c.id is not None]


def add_template(
    runtime: Runtime,
    *,
    name: str = "newsletter",
    kind: str = "marketing",
    subject: str = "Hi {{ first_name | default('there') }}",
    html: str = HTML,
) -> int:
    with runtime.session() as session:
        template = Template(name=name, kind=kind, current_version=1)
        session.add(template)
        session.flush()
        assert template.id is not None
        session.add(TemplateVersion(template_id=template.id, version=1, subject=subject, html=html))
        return template.id


def add_segment(runtime: Runtime, name: str, contact_ids: Sequence[int]) -> int:
    with runtime.session() as session:
        segment = Segment(name=name, kind="static")
        session.add(segment)
        session.flush()
        assert segment.id is not None
        session.add_all(SegmentMember(segment_id=segment.id, contact_id=c) for c in contact_ids)
        return segment.id


def add_campaign(runtime: Runtime, template_id: int, **fields: Any) -> int:
    with runtime.session() as session:
        campaign = Campaign(name="campaign", template_id=template_id, **fields)
        session.add(campaign)
        session.flush()
        assert campaign.id is not None
        return campaign.id


def grant_consent(
    runtime: Runtime, contact_id: int, *, granted: bool = True, **fields: Any
) -> None:
    with runtime.session() as session:
        session.add(
            ConsentRecord(contact_id=contact_id, purpose="marketing", granted=granted, **fields)
        )


def statuses(runtime: Runtime, **where: Any) -> dict[str, str]:
    """Ledger status by message id."""
    query = sa.select(col(Message.id), col(Message.status))
    for name, value in where.items():
        query = query.where(getattr(Message, name) == value)
    with runtime.session() as session:
        return {row[0]: row[1] for row in session.execute(query)}


def ledger(runtime: Runtime, message_id: str) -> Message:
    with runtime.session() as session:
        row = session.get(Message, message_id)
        assert row is not None
        return row
