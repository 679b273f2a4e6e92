"""``postwise_event_tracked`` sees every event any producer puts on the stream.

The hook promises every event; each producer publishes through ``postwise.streams.publish``,
so product events (ingestion), email events (a delivery settlement), bounces (compliance acting
on a provider's report) and reputation alerts all reach it — and reach it exactly as they are
on the stream.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from delivery_helpers import add_campaign, add_contacts, add_template

from postwise import hookimpl
from postwise.analytics.ingest import track
from postwise.compliance import reputation
from postwise.compliance.processing import record_provider_feedback
from postwise.delivery.dispatch import dispatch_campaign
from postwise.delivery.worker import drain
from postwise.errors import ValidationError
from postwise.events import EVENT_STREAM, EventEnvelope, decode_event
from postwise.runtime import Runtime
from postwise.streams import publish
from postwise.testing.smtp import FaultySmtpServer


class Observer:
    def __init__(self) -> None:
        self.seen: list[Mapping[str, Any]] = []

    @hookimpl
    def postwise_event_tracked(self, event: Mapping[str, Any]) -> None:
        self.seen.append(event)


@pytest.fixture
def observer(delivery: Runtime) -> Iterator[Observer]:
    watching = Observer()
    delivery.plugins.register(watching, "observer")
    yield watching
    delivery.plugins.unregister("observer")


def _on_stream(runtime: Runtime) -> list[dict[str, Any]]:
    entries: Any = runtime.redis.xrange(EVENT_STREAM)
    return [decode_event(fields).to_dict() for _id, fields in entries]


def test_product_email_bounce_and_reputation_events_all_fire_the_hook(
    make_runtime: Any, smtp_server: FaultySmtpServer
) -> None:
    runtime: Runtime = make_runtime(reputation_min_volume=1)
    watching = Observer()
    runtime.plugins.register(watching, "observer")
    smtp_server.reject_recipients("user1@example.org")
    contacts = add_contacts(runtime, 3)

    # A product event, through ingestion.
    track("signup", runtime=runtime, event_id="product-1", contact_id=contacts[0])
    # Email events: a campaign's settlement publishes sent and bounce events.
    dispatch_campaign(runtime, add_campaign(runtime, add_template(runtime)))
    drain(runtime)
    # A bounce reported by an ESP webhook, acted on by compliance.
    record_provider_feedback(
        runtime,
        provider="smtp",
        kind="hard",
        recipient="user2@example.org",
        event_id="esp-bounce-1",
    )
    # Reputation: enough complaints over the volume pause the stream and alert.
    reputation.record(runtime, "sent", provider="smtp", count=10)
    paused = reputation.record(runtime, "complaint", provider="smtp", count=5)
    assert "provider:smtp" in paused

    types = [event["type"] for event in watching.seen]
    assert "signup" in types
    assert types.count("sent") == 2
    # One bounce from the settlement (user1), one from the webhook (user2).
    assert types.count("bounce") == 2
    assert "reputation_alert" in types
    # The hook saw exactly what is on the stream, event for event.
    assert watching.seen == _on_stream(runtime)
    json.dumps(watching.seen)


def test_a_republished_event_is_not_tracked_twice(delivery: Runtime, observer: Observer) -> None:
    event = EventEnvelope("again-1", "signup", datetime.now(UTC), contact_id=1)
    assert publish(delivery, [event]) == [True]
    assert publish(delivery, [event]) == [False]
    assert [e["event_id"] for e in observer.seen] == ["again-1"]
    assert delivery.redis.xlen(EVENT_STREAM) == 1


def test_a_malformed_event_from_a_producer_publishes_nothing(
    delivery: Runtime, observer: Observer
) -> None:
    good = EventEnvelope("ok-1", "signup", datetime.now().astimezone())
    naive = EventEnvelope("naive-1", "signup", datetime(2025, 1, 1))
    with pytest.raises(ValidationError) as caught:
        publish(delivery, [good, naive])
    assert caught.value.field == "occurred_at"
    spaced = EventEnvelope("has space", "signup", datetime.now().astimezone())
    with pytest.raises(ValidationError):
        publish(delivery, [spaced])
    assert delivery.redis.xlen(EVENT_STREAM) == 0
    assert observer.seen == []
