"""The built-in analytics sink ``sql``: events in the ``event`` table of the SQL database.

On PostgreSQL a batch is copied (``COPY``) straight into ``event`` and the engagement update of
its contacts follows in the same transaction, so a batch is stored and scored exactly once or
not at all. That is the fast path, and the usual one: the ingestion API de-duplicates by event
id, so a batch meets an event stored already only when it is delivered again (a collector
died after its commit but before its acknowledgement). Then the unique index on ``event_id``
aborts the ``COPY``, the transaction is rolled back, and the batch goes the careful way: copied
into a session's staging table and moved with ``INSERT ... SELECT ... ON CONFLICT (event_id)
DO NOTHING RETURNING event_id``, and only the events that come back new are scored. On SQLite
the careful way is the only one, as ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` through
SQLAlchemy.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, ClassVar

import sqlalchemy as sa
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine

from postwise.analytics.engagement import EngagementModel, apply_engagement
from postwise.analytics.sinks import AnalyticsSink, StoredEvent
from postwise.db.engine import create_db_engine
from postwise.db.models import Event, as_utc
from postwise.settings import Settings

if TYPE_CHECKING:
    from postwise.analytics.metrics import MetricsBackend

__all__ = ["SqlSink", "sql_sink_factory"]

_TABLE = Event.__table__  # type: ignore[attr-defined]

_PG_COLUMNS = (
    "event_id, type, occurred_at, received_at, contact_id, message_id, campaign_id, "
    "experiment_id, variant, provider, properties, automated, recipient_domain"
)
# A batch is copied into a per-session staging table (COPY costs the client a fifth of what
# array parameters do), then moved with one INSERT ... ON CONFLICT.
_PG_STAGE = (
    "CREATE TEMP TABLE IF NOT EXISTS event_stage (event_id text, type text, "
    "occurred_at timestamptz, received_at timestamptz, contact_id int, message_id text, "
    "campaign_id int, experiment_id int, variant text, provider text, properties json, "
    "automated bool, recipient_domain text) ON COMMIT DELETE ROWS"
)
_PG_COPY = f"COPY event_stage ({_PG_COLUMNS}) FROM STDIN"
_PG_COPY_DIRECT = f"COPY event ({_PG_COLUMNS}) FROM STDIN"
_PG_MOVE = (
    f"INSERT INTO event ({_PG_COLUMNS}) SELECT {_PG_COLUMNS} FROM event_stage "  # noqa: S608
    "ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
)


def _sqlstate(exc: BaseException) -> str:
    """The SQLSTATE of a database error, raised by the driver or wrapped by SQLAlchemy."""
    orig = getattr(exc, "orig", None) or exc
    return str(getattr(orig, "sqlstate", "") or "")


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
        if self.engine.dialect.name == "postgresql":
            try:
                with self.engine.begin() as connection:
                    self._copy_postgresql(connection, events, _PG_COPY_DIRECT)
                    apply_engagement(connection, self.engagement, events)
                return list(events)
            except Exception as exc:
                # Class 23 (integrity): an event stored already, or the same id twice in the
                # batch. Anything else is not ours to sort out here.
                if not _sqlstate(exc).startswith("23"):
                    raise
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

    def _copy_postgresql(
        self, connection: Connection, events: Sequence[StoredEvent], statement: str
    ) -> None:
        now = datetime.now(UTC)
        raw: Any = connection.connection.driver_connection
        with raw.cursor() as cursor, cursor.copy(statement) as copy:
            for e in events:
                copy.write_row(
                    (
                        e.event_id,
                        e.type,
                        e.occurred_at,
                        now,
                        e.contact_id,
                        e.message_id,
                        e.campaign_id,
                        e.experiment_id,
                        e.variant,
                        e.provider,
                        _properties_json(e.stored_properties),
                        e.automated,
                        e.recipient_domain,
                    )
                )

    def _insert_postgresql(self, connection: Connection, events: Sequence[StoredEvent]) -> set[str]:
        raw: Any = connection.connection.driver_connection
        with raw.cursor() as cursor:
            cursor.execute(_PG_STAGE)
        self._copy_postgresql(connection, events, _PG_COPY)
        with raw.cursor() as cursor:
            cursor.execute(_PG_MOVE)
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
                "properties": dict(e.stored_properties),
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

    def events_of_contact(self, contact_id: int) -> list[StoredEvent]:
        columns = _TABLE.c
        query = (
            sa.select(
                columns.event_id, columns.type, columns.occurred_at, columns.contact_id,
                columns.message_id, columns.campaign_id, columns.experiment_id,
                columns.variant, columns.provider, columns.properties,
            )
            .where(columns.contact_id == contact_id)
            .order_by(columns.occurred_at, columns.id)
        )  # fmt: skip
        with self.engine.connect() as connection:
            return [
                StoredEvent(
                    event_id=row.event_id,
                    type=row.type,
                    occurred_at=as_utc(row.occurred_at),
                    contact_id=row.contact_id,
                    message_id=row.message_id,
                    campaign_id=row.campaign_id,
                    experiment_id=row.experiment_id,
                    variant=row.variant,
                    provider=row.provider,
                    properties=row.properties or {},
                )
                for row in connection.execute(query)
            ]

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
