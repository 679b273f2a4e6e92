"""Helpers of the analytics tests: contacts and ledger rows, signed tokens, stored events."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from postwise import tokens
from postwise.db.models import Contact, Event, Message
from postwise.runtime import Runtime
from postwise.settings import Settings


def add_contacts(runtime: Runtime, *emails: str) -> list[int]:
    """Create contacts; returns their ids in order."""
    with runtime.session() as session:
        contacts = [Contact(email=email) for email in emails]
        session.add_all(contacts)
        session.flush()
        return [int(c.id) for c in contacts if c.id is not None]


def add_message(
    runtime: Runtime,
    message_id: str,
    contact_id: int | None,
    *,
    sent_at: datetime | None = None,
    experiment_id: int | None = None,
    variant: str | None = None,
    provider: str = "smtp",
) -> None:
    """A ledger row, as the delivery layer leaves it after the provider accepted the message."""
    with runtime.session() as session:
        session.add(
            Message(
                id=message_id,
                contact_id=contact_id,
                experiment_id=experiment_id,
                variant=variant,
                provider=provider,
                status="accepted",
                sent_at=sent_at or datetime(2020, 1, 1, tzinfo=UTC),
            )
        )


def sign(settings: Settings, purpose: str, payload: dict[str, Any], ttl: float = 3600) -> str:
    return tokens.sign(purpose, payload, key=settings.signing_keys()[0], ttl=ttl)


def stored_events(runtime: Runtime) -> list[Event]:
    from sqlmodel import select

    with runtime.session() as session:
        return list(session.exec(select(Event).order_by(Event.id)))  # type: ignore[arg-type]


def stream_entries(runtime: Runtime, stream: str) -> list[tuple[bytes, dict[Any, Any]]]:
    """Every entry of ``stream`` (bytes ids and fields)."""
    entries: Any = runtime.redis.xrange(stream)
    return list(entries)
