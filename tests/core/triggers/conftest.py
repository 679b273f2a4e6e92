"""Fixtures of the trigger tests: templates, contacts, triggers and events on the test's runtime."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest

from postwise.db.models import Contact, Template, TemplateVersion
from postwise.events import EVENT_STREAM, EventEnvelope, encode_event
from postwise.runtime import Runtime
from postwise.triggers.store import TriggerStore

_ids = itertools.count(1)


@pytest.fixture
def template_id(runtime: Runtime) -> int:
    """A template called ``welcome``."""
    with runtime.session() as session:
        template = Template(name="welcome")
        session.add(template)
        session.flush()
        assert template.id is not None
        session.add(
            TemplateVersion(
                template_id=template.id,
                version=1,
                subject="Hello {{ contact.first_name }}",
                html="<p>Hello</p>",
                text="Hello",
            )
        )
        return template.id


@pytest.fixture
def make_contact(runtime: Runtime) -> Callable[..., int]:
    def make(**fields: Any) -> int:
        fields.setdefault("email", f"person{next(_ids)}-{uuid.uuid4().hex[:6]}@example.com")
        if "engagement_score" in fields:
            # A score is as of its update time; give it one so it is read undecayed.
            fields.setdefault("engagement_updated_at", datetime.now(UTC))
        with runtime.session() as session:
            contact = Contact(**fields)
            session.add(contact)
            session.flush()
            assert contact.id is not None
            return contact.id

    return make


@pytest.fixture
def make_trigger(runtime: Runtime, template_id: int) -> Callable[..., int]:
    """Create a trigger; the definition defaults to sending ``welcome`` on ``signup``."""

    def make(**definition: Any) -> int:
        definition.setdefault("name", f"trigger-{next(_ids)}")
        definition.setdefault("event_type", "signup")
        definition.setdefault("action", {"type": "send_template", "template": "welcome"})
        with runtime.session() as session:
            trigger = TriggerStore(session, runtime).create(definition)
            assert trigger.id is not None
            return trigger.id

    return make


@pytest.fixture
def publish(runtime: Runtime) -> Callable[..., str]:
    """Publish an event on the stream the way POST /v1/events does; returns its id."""

    def send(
        event_type: str,
        contact_id: int,
        *,
        event_id: str | None = None,
        occurred_at: datetime | None = None,
        stream: str = EVENT_STREAM,
        **properties: Any,
    ) -> str:
        event_id = event_id or uuid.uuid4().hex
        envelope = EventEnvelope(
            event_id=event_id,
            type=event_type,
            occurred_at=occurred_at or datetime.now(UTC),
            contact_id=contact_id,
            properties=properties,
        )
        runtime.redis.xadd(stream, encode_event(envelope))
        return event_id

    return send
