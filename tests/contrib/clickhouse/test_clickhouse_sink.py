"""The ClickHouse sink against a real server: the sink contract, the batch writer, erasure,
and metrics that agree with the SQL backend's on the same events."""

from __future__ import annotations

import random
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from clickhouse_helpers import HOST, PORT

from postwise.analytics.collector import Collector, CollectorConfig, open_sink
from postwise.analytics.ingest import ingest
from postwise.analytics.metrics import AttributionModel, HealthKey, Scope, VariantKey
from postwise.analytics.sinks import AnalyticsSink, StoredEvent
from postwise.analytics.sql_metrics import SqlMetrics
from postwise.analytics.sql_sink import SqlSink
from postwise.db.models import Contact, Segment, SegmentMember
from postwise.errors import ConfigurationError
from postwise.runtime import Runtime
from postwise.testing.contracts import AnalyticsSinkContract
from postwise_clickhouse.sink import ClickHouseSink, clickhouse_sink_factory


class TestClickHouseSinkContract(AnalyticsSinkContract):
    @pytest.fixture(autouse=True)
    def _database(self, clickhouse_database: str) -> None:
        self.database = clickhouse_database

    def make_sink(self) -> AnalyticsSink:
        return ClickHouseSink(host=HOST, port=PORT, database=self.database)

    def count_events(self, sink: AnalyticsSink, contact_id: int) -> int:
        assert isinstance(sink, ClickHouseSink)
        [(count,)] = sink.execute(
            f"SELECT count() FROM {sink.table} WHERE contact_id = %(c)s", {"c": contact_id}
        )
        return int(count)


def test_only_events_not_stored_before_are_inserted(ch_sink: ClickHouseSink) -> None:
    at = datetime(2025, 2, 1, 8, tzinfo=UTC)
    first = [StoredEvent(f"x{i}", "open", at + timedelta(seconds=i)) for i in range(10)]
    assert len(ch_sink.write_new(first)) == 10
    again = [*first[5:], StoredEvent("x10", "open", at), StoredEvent("x10", "open", at)]
    assert [e.event_id for e in ch_sink.write_new(again)] == ["x10"]
    [(rows,)] = ch_sink.execute(f"SELECT count() FROM {ch_sink.table}")
    assert rows == 11


def test_the_factory_rejects_unknown_options_and_bad_names(settings: Any) -> None:
    with pytest.raises(ConfigurationError, match="hots"):
        clickhouse_sink_factory(settings, {"hots": "x"})
    with pytest.raises(ConfigurationError, match="database"):
        clickhouse_sink_factory(settings, {"database": "x; DROP TABLE y"})
    with pytest.raises(ConfigurationError, match=r"provider_options\.clickhouse\.port: "):
        clickhouse_sink_factory(settings, {"port": 70000})


@pytest.fixture
def ch_runtime(make_settings: Any, clickhouse_database: str) -> Iterator[Runtime]:
    runtime = Runtime(
        make_settings(
            analytics_sink="clickhouse",
            provider_options={
                "clickhouse": {"host": HOST, "port": PORT, "database": clickhouse_database}
            },
        )
    )
    runtime.migrate()
    yield runtime
    runtime.close()


def test_the_batch_writer_fills_clickhouse_and_updates_engagement_once(
    ch_runtime: Runtime,
) -> None:
    runtime = ch_runtime
    with runtime.session() as session:
        contact = Contact(email="ch@example.com")
        session.add(contact)
        session.flush()
        contact_id = contact.id
    now = datetime.now(UTC).replace(microsecond=0)
    events: list[dict[str, Any]] = [
        {
            "event_id": f"c{i}",
            "type": "click",
            "contact_id": contact_id,
            "occurred_at": (now - timedelta(days=1, seconds=i)).isoformat(),
        }
        for i in range(1500)
    ]
    ingest(runtime, events[:1000])
    ingest(runtime, events[1000:])
    sink = open_sink(runtime)
    assert isinstance(sink, ClickHouseSink)
    stats = Collector(runtime, sink, config=CollectorConfig(flush_interval=0.05)).run(
        exit_when_idle=0.3
    )
    assert stats.stored == 1500
    # A redelivery of stored events adds no rows and no engagement.
    again = Collector(runtime, sink, config=CollectorConfig(flush_interval=0.05))
    duplicate = [
        StoredEvent(
            e["event_id"], "click", datetime.fromisoformat(e["occurred_at"]), contact_id=contact_id
        )
        for e in events[:10]
    ]
    assert again._store(duplicate) == 0
    [(rows,)] = sink.execute(f"SELECT count() FROM {sink.table}")
    assert rows == 1500
    with runtime.session() as session:
        stored = session.get(Contact, contact_id)
        assert stored is not None
        # 1500 clicks of weight 3, a day old at most: decay over hours is tiny.
        assert 1500 * 3 * 0.97 < stored.engagement_score <= 1500 * 3
    sink.close()


def test_erasing_a_contact_removes_its_events_from_clickhouse(ch_runtime: Runtime) -> None:
    from postwise.analytics.erasure import erase_contact_events

    sink = open_sink(ch_runtime)
    assert isinstance(sink, ClickHouseSink)
    at = datetime(2025, 2, 1, tzinfo=UTC)
    sink.write_batch([StoredEvent(f"e{i}", "open", at, contact_id=1 + i % 2) for i in range(6)])
    counts = erase_contact_events(ch_runtime, 1, sink=sink)
    assert counts["events"] == 3
    [(left,)] = sink.execute(f"SELECT count() FROM {sink.table} WHERE contact_id = 1")
    assert left == 0
    sink.close()


def test_a_contacts_export_reads_its_events_from_clickhouse(ch_runtime: Runtime) -> None:
    # The right of access: with the ClickHouse sink configured, the export's events come from
    # ClickHouse (the SQL event table is empty), with what was written, and none of others'.
    from postwise.compliance.erasure import export_contact

    with ch_runtime.session() as session:
        contact = Contact(email="access@example.com")
        other = Contact(email="other@example.com")
        session.add_all([contact, other])
        session.flush()
        cid, oid = contact.id, other.id
    assert cid is not None and oid is not None
    at = datetime(2025, 5, 1, 9, 30, tzinfo=UTC)
    sink = open_sink(ch_runtime)
    sink.write_batch(
        [
            StoredEvent("x1", "open", at, contact_id=cid, message_id="m1", campaign_id=3),
            StoredEvent("x2", "click", at + timedelta(minutes=5), contact_id=cid,
                        message_id="m1", campaign_id=3, properties={"url": "https://e.com/a"}),
            StoredEvent("x3", "open", at, contact_id=oid),
        ]
    )  # fmt: skip
    sink.close()
    data = export_contact(ch_runtime, contact_id=cid)
    assert "incomplete" not in data
    assert [(e["event_id"], e["type"]) for e in data["events"]] == [("x1", "open"), ("x2", "click")]
    assert data["events"][1]["properties"] == {"url": "https://e.com/a"}
    assert data["events"][1]["occurred_at"] == (at + timedelta(minutes=5)).isoformat()


def test_an_export_says_its_events_are_missing_when_clickhouse_is_down(
    make_settings: Any,
) -> None:
    from postwise.compliance.erasure import export_contact

    runtime = Runtime(
        make_settings(
            analytics_sink="clickhouse",
            provider_options={"clickhouse": {"host": "127.0.0.1", "port": 1, "database": "x"}},
        )
    )
    runtime.migrate()
    try:
        with runtime.session() as session:
            contact = Contact(email="down@example.com")
            session.add(contact)
            session.flush()
            cid = contact.id
        data = export_contact(runtime, contact_id=cid)
        assert data["events"] == []
        assert "events" in data["incomplete"]
        assert data["contact"]["email"] == "down@example.com"
    finally:
        runtime.close()


def _dataset(seed: int = 7) -> list[StoredEvent]:
    """Messages to 40 contacts in 3 campaigns (one with an A/B test), with opens (some by
    machines), clicks (some by scanners), bounces, complaints, failures and conversions."""
    rng = random.Random(seed)
    t0 = datetime(2025, 4, 1, tzinfo=UTC)
    events: list[StoredEvent] = []

    def add(kind: str, at: datetime, **fields: Any) -> None:
        events.append(StoredEvent(f"d{len(events)}", kind, at, **fields))

    for m in range(400):
        contact = 1 + m % 40
        campaign = 1 + m % 3
        common: dict[str, Any] = {
            "contact_id": contact,
            "message_id": f"msg{m}",
            "campaign_id": campaign,
            "provider": "smtp" if m % 4 else "sendgrid",
        }
        if campaign == 1:
            common.update(experiment_id=5, variant="ab"[m % 2])
        domain = {"recipient_domain": ["gmail.com", "example.org", "yahoo.com"][m % 3]}
        sent_at = t0 + timedelta(hours=m)
        roll = rng.random()
        if roll < 0.05:
            add("bounce", sent_at, properties=domain, **common)
            continue
        if roll < 0.08:
            add("dead_letter", sent_at, **common)
            continue
        add("sent", sent_at, properties=domain, **common)
        for _ in range(rng.choice([0, 0, 1, 2, 3])):
            machine = rng.random() < 0.3
            add(
                "open",
                sent_at + timedelta(minutes=rng.randint(1, 3000)),
                properties={"machine_open": True} if machine else {},
                **common,
            )
        if rng.random() < 0.3:
            scanner = rng.random() < 0.2
            add(
                "click",
                sent_at + timedelta(minutes=rng.randint(1, 5000)),
                properties={"scanner": True} if scanner else {},
                **common,
            )
        if rng.random() < 0.03:
            add("complaint", sent_at + timedelta(days=1), contact_id=contact, message_id=f"msg{m}")
        if rng.random() < 0.02:
            add("bounce", sent_at + timedelta(hours=3), properties=domain, **common)
    for c in range(60):
        add(
            "conversion",
            t0 + timedelta(hours=rng.randint(0, 500)),
            contact_id=1 + c % 40,
            properties={"value": rng.choice([5, 12.5, 40])},
        )
    return events


def test_clickhouse_metrics_equal_the_sql_metrics_on_the_same_events(
    ch_sink: ClickHouseSink, runtime: Runtime
) -> None:
    events = _dataset()
    assert len(ch_sink.write_new(events)) == len(events)
    with runtime.session() as session:
        session.add_all([Contact(id=c, email=f"u{c}@example.com") for c in range(1, 41)])
        segment = Segment(name="evens", kind="static")
        session.add(segment)
        session.flush()
        assert segment.id is not None
        session.add_all(
            [SegmentMember(segment_id=segment.id, contact_id=c) for c in range(2, 41, 2)]
        )
    SqlSink(runtime.engine).write_new(events)
    sql, ch = SqlMetrics(runtime.engine), ch_sink.metrics()
    t0 = datetime(2025, 4, 1, tzinfo=UTC)
    scopes = [
        Scope(),
        Scope(campaign_id=1),
        Scope(since=t0 + timedelta(days=3), until=t0 + timedelta(days=12)),
    ]
    with runtime.session() as session:
        chosen = session.get(Segment, segment.id)
        assert chosen is not None
        segments = [chosen]
        for scope in scopes:
            for machine in (False, True):
                assert ch.open_rates(session, segments, scope, include_machine_opens=machine) == (
                    sql.open_rates(session, segments, scope, include_machine_opens=machine)
                )
    for scope in [*scopes, Scope(experiment_id=5)]:
        for by in VariantKey:
            assert ch.click_through(by, scope) == sql.click_through(by, scope)
        for key in HealthKey:
            assert ch.delivery_health(key, scope) == sql.delivery_health(key, scope)
        for model in AttributionModel:
            for window in (timedelta(days=7), timedelta(days=1)):
                expected = sql.attribution(model, window, scope)
                assert expected.conversions > 0 or scope.until is not None
                assert ch.attribution(model, window, scope) == expected
