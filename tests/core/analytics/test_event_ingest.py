"""Ingestion: POST /v1/events and postwise.track validate, de-duplicate and publish."""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from analytics_helpers import add_contacts, add_message, stream_entries

import postwise
from postwise import hookimpl
from postwise.analytics.ingest import MAX_PROPERTIES_BYTES, ingest, track
from postwise.errors import ValidationError
from postwise.events import EVENT_STREAM, decode_event
from postwise.runtime import Runtime


def stream_events(runtime: Runtime) -> list[Any]:
    return [decode_event(fields) for _, fields in stream_entries(runtime, EVENT_STREAM)]


def event(event_id: str, **fields: Any) -> dict[str, Any]:
    return {"event_id": event_id, "type": "purchase", **fields}


def test_a_single_event_is_accepted_and_published_to_the_stream(
    client: Any, runtime: Runtime
) -> None:
    response = client.post(
        "/v1/events",
        json=event(
            "e1", contact_id=3, occurred_at="2025-05-01T10:00:00+02:00", properties={"value": 9.5}
        ),
    )
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 1, "duplicates": [], "rejected": []}
    [published] = stream_events(runtime)
    assert published.event_id == "e1"
    assert published.contact_id == 3
    assert published.occurred_at == datetime(2025, 5, 1, 8, 0, tzinfo=UTC)
    assert published.properties == {"value": 9.5}


def test_a_batch_is_published_in_order(client: Any, runtime: Runtime) -> None:
    batch = [event(f"b{i}", contact_id=1) for i in range(250)]
    response = client.post("/v1/events", json=batch)
    assert response.status_code == 202
    assert response.json()["accepted"] == 250
    assert [e.event_id for e in stream_events(runtime)] == [f"b{i}" for i in range(250)]


def test_a_repeated_event_id_is_reported_as_duplicate_and_published_once(
    client: Any, runtime: Runtime
) -> None:
    assert client.post("/v1/events", json=[event("d1"), event("d2")]).status_code == 202
    response = client.post("/v1/events", json=[event("d2"), event("d3"), event("d3")])
    assert response.json() == {"accepted": 1, "duplicates": ["d2", "d3"], "rejected": []}
    assert [e.event_id for e in stream_events(runtime)] == ["d1", "d2", "d3"]


def test_events_need_an_api_key(client: Any) -> None:
    client.headers.pop("Authorization")
    assert client.post("/v1/events", json=event("x")).status_code == 401


@pytest.mark.parametrize(
    ("bad", "field", "words"),
    [
        ({"type": "purchase"}, "event_id", "required"),
        (event("x", type="has space"), "type", "letters"),
        (event("x", occurred_at="2025-05-01T10:00:00"), "occurred_at", "no timezone"),
        (event("x", occurred_at="yesterday"), "occurred_at", "ISO 8601"),
        (event("x", occurred_at="2099-01-01T00:00:00Z"), "occurred_at", "in the future"),
        (event("x", occurred_at="1990-01-01T00:00:00Z"), "occurred_at", "years ago"),
        (event("x", contact_id="7"), "contact_id", "positive integer"),
        (event("x", contact_id=True), "contact_id", "positive integer"),
        (event("x", properties=[1, 2]), "properties", "JSON object"),
        (event("x", properties={"blob": "a" * MAX_PROPERTIES_BYTES}), "properties", "limit"),
        (event("x", colour="red"), "colour", "unknown field"),
        (event("x", email="not-an-address"), "email", "not an email address"),
        (event("x", contact_id=1, email="a@example.com"), "email", "not both"),
        (event("x", type="conversion", properties={"value": "12"}), "properties.value", "number"),
    ],
)
def test_a_malformed_event_gets_422_with_index_field_and_reason(
    client: Any, runtime: Runtime, bad: dict[str, Any], field: str, words: str
) -> None:
    response = client.post("/v1/events", json=[event("ok-1"), bad])
    assert response.status_code == 422
    body = response.json()
    assert body["field"] == field
    assert body["index"] == 1
    [error] = body["errors"]
    assert error["index"] == 1
    assert error["field"] == field
    assert words in error["detail"]
    assert "nothing was stored" in body["detail"]
    assert stream_events(runtime) == []


def test_partial_acceptance_stores_the_valid_events_and_reports_the_rest(
    client: Any, runtime: Runtime
) -> None:
    batch = [event("p0"), event("p1", occurred_at="2025-01-01T00:00:00"), event("p2")]
    response = client.post("/v1/events?partial=true", json=batch)
    assert response.status_code == 202
    body = response.json()
    assert body["accepted"] == 2
    assert body["rejected"] == [
        {"index": 1, "field": "occurred_at", "error": body["rejected"][0]["error"]}
    ]
    assert "timezone" in body["rejected"][0]["error"]
    assert [e.event_id for e in stream_events(runtime)] == ["p0", "p2"]


def test_a_batch_over_1000_events_is_rejected_whole(client: Any, runtime: Runtime) -> None:
    response = client.post("/v1/events", json=[event(f"x{i}") for i in range(1001)])
    assert response.status_code == 422
    assert "at most 1000" in response.json()["detail"]
    assert runtime.redis.xlen(EVENT_STREAM) == 0


@pytest.mark.parametrize("body", [b"{not json", b"[]", b"42", b""])
def test_a_body_that_is_not_events_is_a_422(client: Any, body: bytes) -> None:
    response = client.post("/v1/events", content=body, headers={"Content-Type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"]


def test_email_is_resolved_to_the_contact_id_and_not_stored(client: Any, runtime: Runtime) -> None:
    [contact_id] = add_contacts(runtime, "ann@example.com")
    response = client.post("/v1/events", json=event("r1", email=" Ann@EXAMPLE.com"))
    assert response.status_code == 202
    [published] = stream_events(runtime)
    assert published.contact_id == contact_id
    raw = stream_entries(runtime, EVENT_STREAM)[0][1][b"e"]
    assert b"example.com" not in raw.lower()


def test_an_unknown_email_is_rejected(client: Any) -> None:
    response = client.post("/v1/events", json=event("r2", email="nobody@example.com"))
    assert response.status_code == 422
    assert response.json()["field"] == "email"
    assert "no contact has this address" in response.json()["detail"]


def test_message_events_are_completed_from_the_ledger(runtime: Runtime) -> None:
    [contact_id] = add_contacts(runtime, "bo@mail.example.org")
    add_message(runtime, "m-1", contact_id, experiment_id=4, variant="b", provider="sendgrid")
    ingest(runtime, [{"event_id": "c1", "type": "conversion", "message_id": "m-1"}])
    [published] = stream_events(runtime)
    assert published.contact_id == contact_id
    assert (published.experiment_id, published.variant, published.provider) == (4, "b", "sendgrid")
    assert published.properties["recipient_domain"] == "mail.example.org"


def test_track_records_in_process_and_is_idempotent(runtime: Runtime) -> None:
    first = postwise.track("signup", runtime=runtime, event_id="t1", contact_id=5)
    again = track("signup", runtime=runtime, event_id="t1", contact_id=5)
    assert first.accepted
    assert not again.accepted
    [published] = stream_events(runtime)
    assert (published.type, published.contact_id) == ("signup", 5)


def test_track_raises_a_validation_error_naming_the_field(runtime: Runtime) -> None:
    with pytest.raises(ValidationError) as caught:
        track("signup", runtime=runtime, occurred_at=datetime(2025, 1, 1))
    assert caught.value.field == "occurred_at"


def test_events_within_the_clock_tolerance_are_accepted(runtime: Runtime) -> None:
    soon = datetime.now(UTC) + timedelta(minutes=2)
    assert track("ping", runtime=runtime, occurred_at=soon).accepted


def test_the_event_tracked_hook_sees_every_new_event(runtime: Runtime) -> None:
    seen: list[Mapping[str, Any]] = []

    class Observer:
        @hookimpl
        def postwise_event_tracked(self, event: Mapping[str, Any]) -> None:
            seen.append(event)

    runtime.plugins.register(Observer(), "observer")
    try:
        ingest(runtime, [event("h1"), event("h2")])
        ingest(runtime, [event("h2")])
    finally:
        runtime.plugins.unregister("observer")
    assert [e["event_id"] for e in seen] == ["h1", "h2"]
    json.dumps(seen)  # plugins get plain JSON-ready data


def test_the_stream_stays_bounded(make_settings: Any) -> None:
    runtime = Runtime(make_settings(event_stream_maxlen=1000))
    try:
        for start in range(0, 5000, 1000):
            ingest(runtime, [event(f"s{i}") for i in range(start, start + 1000)])
        # MAXLEN ~ trims whole macro nodes: a little over the limit, never unbounded.
        assert runtime.redis.xlen(EVENT_STREAM) < 2000
    finally:
        runtime.close()
