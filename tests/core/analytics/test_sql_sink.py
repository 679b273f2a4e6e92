"""The built-in ``sql`` sink: the analytics-sink contract, on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from analytics_helpers import add_contacts

from postwise.analytics.sinks import AnalyticsSink, StoredEvent
from postwise.analytics.sql_sink import SqlSink, sql_sink_factory
from postwise.db.engine import create_db_engine
from postwise.db.models import Event
from postwise.runtime import Runtime
from postwise.settings import Settings
from postwise.testing.contracts import AnalyticsSinkContract


def _count(sink: AnalyticsSink, contact_id: int) -> int:
    assert isinstance(sink, SqlSink)
    with sink.engine.connect() as connection:
        query = sa.select(sa.func.count()).where(Event.__table__.c.contact_id == contact_id)  # type: ignore[attr-defined]
        return int(connection.execute(query).scalar_one())


class TestSqlSinkOnTheTestDatabase(AnalyticsSinkContract):
    """SQLite by default, PostgreSQL when POSTWISE_TEST_DATABASE_URL says so."""

    @pytest.fixture(autouse=True)
    def _settings(self, settings: Settings, runtime: Runtime) -> None:
        runtime.migrate()
        self.settings = settings

    def make_sink(self) -> AnalyticsSink:
        return sql_sink_factory(self.settings, {})

    def count_events(self, sink: AnalyticsSink, contact_id: int) -> int:
        return _count(sink, contact_id)


class TestSqlSinkOnPostgreSQL(AnalyticsSinkContract):
    """Always on PostgreSQL: the unnest/ON CONFLICT path."""

    @pytest.fixture(autouse=True)
    def _database(self, pg_url: str) -> Iterator[None]:
        self.engine = create_db_engine(pg_url)
        yield
        self.engine.dispose()

    def make_sink(self) -> AnalyticsSink:
        return SqlSink(self.engine)

    def count_events(self, sink: AnalyticsSink, contact_id: int) -> int:
        return _count(sink, contact_id)


def _event(event_id: str, **fields: Any) -> StoredEvent:
    base: dict[str, Any] = {"type": "open", "occurred_at": datetime(2025, 3, 1, 12, tzinfo=UTC)}
    base.update(fields)
    return StoredEvent(event_id, **base)


@pytest.fixture(params=["embedded", "postgresql"])
def sink(request: pytest.FixtureRequest, runtime: Runtime) -> Iterator[SqlSink]:
    if request.param == "postgresql":
        engine = create_db_engine(request.getfixturevalue("pg_url"))
    else:
        engine = runtime.engine
    yield SqlSink(engine)
    if request.param == "postgresql":
        engine.dispose()


def test_every_field_round_trips_and_flags_become_columns(sink: SqlSink) -> None:
    event = _event(
        "rt-1",
        type="click",
        contact_id=4,
        message_id="m" * 32,
        campaign_id=7,
        experiment_id=2,
        variant="b",
        provider="smtp",
        properties={"url": "https://example.com/ü", "scanner": True, "recipient_domain": "x.org"},
    )
    assert [e.event_id for e in sink.write_new([event])] == ["rt-1"]
    with sink.engine.connect() as connection:
        row = connection.execute(sa.select(Event.__table__)).mappings().one()  # type: ignore[attr-defined]
    occurred = row["occurred_at"]
    occurred = occurred if occurred.tzinfo else occurred.replace(tzinfo=UTC)
    assert occurred == event.occurred_at
    assert (row["contact_id"], row["message_id"], row["campaign_id"]) == (4, "m" * 32, 7)
    assert (row["experiment_id"], row["variant"], row["provider"]) == (2, "b", "smtp")
    assert row["properties"]["url"] == "https://example.com/ü"
    assert row["automated"] is True
    assert row["recipient_domain"] == "x.org"


def test_a_batch_with_the_same_event_twice_stores_it_once(sink: SqlSink) -> None:
    events = [_event("dup"), _event("dup"), _event("other")]
    assert sorted(e.event_id for e in sink.write_new(events)) == ["dup", "other"]


def test_engagement_is_updated_in_the_same_transaction_only_for_new_events(
    sink: SqlSink, runtime: Runtime, request: pytest.FixtureRequest
) -> None:
    if sink.engine is runtime.engine:
        [contact_id] = add_contacts(runtime, "e@example.com")
    else:
        with sink.engine.begin() as connection:
            contact_id = connection.execute(
                sa.text(
                    "INSERT INTO contact (email, timezone, status, attributes, "
                    "engagement_score, created_at, updated_at) VALUES ('e@example.com', "
                    "'UTC', 'active', '{}', 0, now(), now()) RETURNING id"
                )
            ).scalar_one()
    t0 = datetime(2025, 3, 1, tzinfo=UTC)
    events = [
        _event("g1", contact_id=contact_id, type="open", occurred_at=t0),
        _event("g2", contact_id=contact_id, type="click", occurred_at=t0 + timedelta(days=30)),
        _event(
            "g3",
            contact_id=contact_id,
            type="open",
            occurred_at=t0,
            properties={"machine_open": True},
        ),
    ]
    sink.write_new(events)
    sink.write_new(events)  # a redelivered batch adds nothing
    with sink.engine.connect() as connection:
        score, at = connection.execute(
            sa.text("SELECT engagement_score, engagement_updated_at FROM contact WHERE id = :i"),
            {"i": contact_id},
        ).one()
    # The open decayed by one half-life (30 days) plus the click; the machine open adds nothing.
    assert score == pytest.approx(0.5 * 1.0 + 3.0, rel=1e-9)
    at = at if isinstance(at, datetime) else datetime.fromisoformat(at)
    assert at.replace(tzinfo=UTC) == t0 + timedelta(days=30)


def test_a_batch_partly_stored_already_stores_and_returns_only_the_new_events(
    sink: SqlSink,
) -> None:
    # A redelivered batch (a collector died between commit and acknowledgement) that has
    # picked up new events: on PostgreSQL the direct COPY aborts and the careful path runs.
    assert len(sink.write_new([_event("p1"), _event("p2")])) == 2
    new = sink.write_new([_event("p2"), _event("p3"), _event("p1"), _event("p4")])
    assert sorted(e.event_id for e in new) == ["p3", "p4"]
    with sink.engine.connect() as connection:
        ids = connection.execute(sa.select(Event.__table__.c.event_id)).scalars().all()  # type: ignore[attr-defined]
    assert sorted(ids) == ["p1", "p2", "p3", "p4"]


def test_a_value_the_column_cannot_hold_is_raised_not_swallowed_by_the_fast_path(
    pg_url: str,
) -> None:
    # Only integrity errors (a stored id) send a batch the careful way; a data error must
    # reach the collector, which bisects the batch and dead-letters the bad event. (PostgreSQL
    # only: SQLite does not enforce VARCHAR lengths.)
    engine = create_db_engine(pg_url)
    sink = SqlSink(engine)
    with pytest.raises(Exception, match="too long") as raised:
        sink.write_new([_event("ok"), _event("bad", variant="v" * 101)])
    assert "DataError" in {cls.__name__ for cls in type(raised.value).__mro__}
    with sink.engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(Event)).scalar_one() == 0
    engine.dispose()
