"""The built-in analytics sink ``sql``: events in the ``event`` table of the SQL database.

On PostgreSQL a batch is one ``INSERT ... SELECT FROM unnest(arrays) ON CONFLICT (event_id) DO
NOTHING RETURNING event_id`` (one statement and one round trip per batch, whatever its size),
followed in the same transaction by the engagement update of the contacts whose new events
count, so a batch is stored and scored exactly once or not at all. On SQLite the same runs as
``INSERT ... ON CONFLICT DO NOTHING RETURNING`` through SQLAlchemy.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine

from postwise.analytics.engagement import EngagementModel, apply_engagement
from postwise.analytics.sinks import AnalyticsSink, StoredEvent
from postwise.db.engine import create_db_engine
from postwise.db.models import Event
from postwise.settings import Settings

if TYPE_CHECKING:
    from postwise.analytics.metrics import MetricsBackend

__all__ = ["SqlSink", "sql_sink_factory"]

_TABLE = Event.__table__  # type: ignore[attr-defined]

_PG_INSERT = """
INSERT INTO event (event_id, type, occurred_at, received_at, contact_id, message_id,
                   campaign_id, experiment_id, variant, provider, properties, automated,
                   recipient_domain)
SELECT * FROM unnest(%s::text[], %s::text[], %s::timestamptz[], %s::timestamptz[], %s::int[],
                     %s::text[], %s::int[], %s::int[], %s::text[], %s::text[], %s::json[],
                     %s::bool[], %s::text[])
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id
"""


def _properties_json(properties: Mapping[str, Any]) -> str:
    return json.dumps(properties, separators=(",", ":"), default=str) if properties else "{}"


class SqlSink(AnalyticsSink):
    """Events in the SQL database (PostgreSQL in production, SQLite embedded)."""

    name: ClassVar[str] = "sql"
    maintains_engagement: ClassVar[bool] = True

    def __init__(
        self,
        engine: Engine,
        *,
        engagement: EngagementModel | None = None,
        owns_engine: bool = False,
    ) -> None:
        self.engine = engine
        self.engagement = engagement or EngagementModel()
        self._owns_engine = owns_engine

    def write_batch(self, events: Sequence[StoredEvent]) -> int:
        return len(self.write_new(events))

    def write_new(self, events: Sequence[StoredEvent]) -> list[StoredEvent]:
        """Store ``events`` and fold the new ones into engagement scores, in one transaction."""
        if not events:
            return []
        with self.engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                inserted = self._insert_postgresql(connection, events)
            else:
                inserted = self._insert_generic(connection, events)
            new = [event for event in events if event.event_id in inserted]
            # A batch may hold the same event id twice; only its first copy is the new one.
            seen: set[str] = set()
            unique = []
            for event in new:
                if event.event_id not in seen:
                    seen.add(event.event_id)
                    unique.append(event)
            apply_engagement(connection, self.engagement, unique)
        return unique

    def _insert_postgresql(self, connection: Connection, events: Sequence[StoredEvent]) -> set[str]:
        now = datetime.now(UTC)
        count = len(events)
        columns: list[list[Any]] = [
            [e.event_id for e in events],
            [e.type for e in events],
            [e.occurred_at for e in events],
            [now] * count,
            [e.contact_id for e in events],
            [e.message_id for e in events],
            [e.campaign_id for e in events],
            [e.experiment_id for e in events],
            [e.variant for e in events],
            [e.provider for e in events],
            [_properties_json(e.properties) for e in events],
            [e.automated for e in events],
            [e.recipient_domain for e in events],
        ]
        raw: Any = connection.connection.driver_connection
        with raw.cursor() as cursor:
            cursor.execute(_PG_INSERT, columns)
            return {row[0] for row in cursor.fetchall()}

    def _insert_generic(self, connection: Connection, events: Sequence[StoredEvent]) -> set[str]:
        now = datetime.now(UTC)
        rows = [
            {
                "event_id": e.event_id,
                "type": e.type,
                "occurred_at": e.occurred_at.astimezone(UTC),
                "received_at": now,
                "contact_id": e.contact_id,
                "message_id": e.message_id,
                "campaign_id": e.campaign_id,
                "experiment_id": e.experiment_id,
                "variant": e.variant,
                "provider": e.provider,
                "properties": dict(e.properties),
                "automated": e.automated,
                "recipient_domain": e.recipient_domain,
            }
            for e in events
        ]
        statement = (
            sqlite_insert(_TABLE)
            .on_conflict_do_nothing(index_elements=["event_id"])
            .returning(_TABLE.c.event_id)
        )
        inserted: set[str] = set()
        for row in connection.execute(statement, rows):
            inserted.add(row[0])
        return inserted

    def erase_contact(self, contact_id: int) -> int:
        with self.engine.begin() as connection:
            result = connection.execute(_TABLE.delete().where(_TABLE.c.contact_id == contact_id))
            return int(result.rowcount)

    def metrics(self) -> MetricsBackend:
        from postwise.analytics.sql_metrics import SqlMetrics

        return SqlMetrics(self.engine)

    def close(self) -> None:
        if self._owns_engine:
            self.engine.dispose()


def sql_sink_factory(settings: Settings, options: Mapping[str, Any]) -> SqlSink:
    """Build the ``sql`` sink on the configured database (``database_url``)."""
    engine = create_db_engine(settings.resolved_database_url)
    return SqlSink(engine, engagement=EngagementModel.from_settings(settings), owns_engine=True)
