"""The ``clickhouse`` analytics sink: events in a ClickHouse ``ReplacingMergeTree`` table.

Table layout (created on first use)::

    CREATE TABLE <database>.<table> (
        event_id String, type String,
        occurred_at DateTime('UTC'), received_at DateTime('UTC'),
        contact_id UInt32, message_id String, campaign_id UInt32, experiment_id UInt32,
        variant String, provider String, recipient_domain String,
        automated UInt8, value Float64, properties String,
        message_hash UInt64 MATERIALIZED cityHash64(message_id),
        occurred_us Int64 DEFAULT toInt64(toUInt32(occurred_at)) * 1000000)
    ENGINE = ReplacingMergeTree()
    PARTITION BY toYYYYMM(occurred_at)
    ORDER BY (type, occurred_at, event_id)

Absent ids are 0 and absent strings empty (ClickHouse's ``Nullable`` costs speed). ``value`` is
an event's numeric ``properties.value`` (conversions, purchases). ``occurred_at`` is to the
second (the sort and partition key; ClickHouse before 20.1 has no ``DateTime64``) and
``occurred_us`` is the same time in microseconds since the epoch, which the metrics compare so
that window edges fall as on PostgreSQL (a table created before it gets the column, filled to the
second, on first use). ``message_hash`` lets the
metrics count and group distinct messages by 8-byte integers instead of strings (two of 3
million messages share a 64-bit hash with a probability of about 2e-7).

Idempotency: before inserting a batch, the sink asks which of its event ids are already stored
in the batch's (type, time) range, which the sort key makes a narrow read, and inserts only the
others; the ``ReplacingMergeTree`` sort key ends with ``event_id`` so that two writers racing
on the same event still collapse to one row when parts merge, and the metric queries count
distinct messages, which duplicates cannot inflate.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from postwise.analytics.sinks import AnalyticsSink, StoredEvent
from postwise.errors import ConfigurationError
from postwise.options import parse_options
from postwise.settings import Settings

if TYPE_CHECKING:
    from postwise_clickhouse.metrics import ClickHouseMetrics

__all__ = ["COLUMNS", "ClickHouseSink", "clickhouse_sink_factory"]

COLUMNS = (
    "event_id",
    "type",
    "occurred_at",
    "received_at",
    "contact_id",
    "message_id",
    "campaign_id",
    "experiment_id",
    "variant",
    "provider",
    "recipient_domain",
    "automated",
    "value",
    "properties",
    "occurred_us",
)
_IDENT_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
_MUTATION_TIMEOUT = 60.0


def _identifier(value: str, name: str) -> str:
    if not value or not set(value) <= _IDENT_CHARS:
        raise ConfigurationError(
            f"clickhouse option {name}={value!r}: use letters, digits and underscores"
        )
    return value


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(when: datetime) -> int:
    """Microseconds since the epoch (a datetime parameter would be cut to the second)."""
    return (when - _EPOCH) // timedelta(microseconds=1)


def _value(event: StoredEvent) -> float:
    amount: Any = event.properties.get("value")
    return float(amount) if type(amount) in (int, float) else 0.0


def _row(event: StoredEvent, now: datetime) -> tuple[Any, ...]:
    return (
        event.event_id,
        event.type,
        event.occurred_at.astimezone(UTC),
        now,
        event.contact_id or 0,
        event.message_id or "",
        event.campaign_id or 0,
        event.experiment_id or 0,
        event.variant or "",
        event.provider or "",
        event.recipient_domain or "",
        1 if event.automated else 0,
        _value(event),
        json.dumps(dict(event.stored_properties), separators=(",", ":"), default=str),
        _micros(event.occurred_at),
    )


class ClickHouseSink(AnalyticsSink):
    """Events in ClickHouse, over the native protocol (``clickhouse-driver``)."""

    name: ClassVar[str] = "clickhouse"

    def __init__(
        self,
        *,
        host: str = "127.0.0.1",
        port: int = 9000,
        database: str = "postwise",
        table: str = "events",
        user: str = "default",
        password: str = "",
        connect_timeout: float = 5.0,
    ) -> None:
        from clickhouse_driver import Client

        self.database = _identifier(database, "database")
        self.table = f"{self.database}.{_identifier(table, 'table')}"
        self._client = Client(
            host=host,
            port=port,
            user=user,
            password=password,
            connect_timeout=connect_timeout,
            settings={"max_query_size": 10_000_000},
        )
        # A clickhouse-driver client is one connection: callers from several threads (the
        # server's workers) take turns.
        self._lock = threading.Lock()
        self._ready = False

    def execute(self, query: str, params: Any = None, **kwargs: Any) -> Any:
        """Run ``query`` on this sink's connection (creating the table on first use)."""
        with self._lock:
            if not self._ready:
                self._create_schema()
            return self._client.execute(query, params, **kwargs)

    def _create_schema(self) -> None:
        self._client.execute(f"CREATE DATABASE IF NOT EXISTS {self.database}")
        self._client.execute(
            f"""
            CREATE TABLE IF NOT EXISTS {self.table} (
                event_id String,
                type String,
                occurred_at DateTime('UTC'),
                received_at DateTime('UTC'),
                contact_id UInt32,
                message_id String,
                campaign_id UInt32,
                experiment_id UInt32,
                variant String,
                provider String,
                recipient_domain String,
                automated UInt8,
                value Float64,
                properties String,
                message_hash UInt64 MATERIALIZED cityHash64(message_id),
                occurred_us Int64 DEFAULT toInt64(toUInt32(occurred_at)) * 1000000
            )
            ENGINE = ReplacingMergeTree()
            PARTITION BY toYYYYMM(occurred_at)
            ORDER BY (type, occurred_at, event_id)
            """
        )
        database, table = self.table.split(".")
        [(has_micros,)] = self._client.execute(
            "SELECT count() FROM system.columns WHERE database = %(d)s AND table = %(t)s "
            "AND name = 'occurred_us'",
            {"d": database, "t": table},
        )
        if not has_micros:  # a table of an earlier release: its times to the second
            self._client.execute(
                f"ALTER TABLE {self.table} ADD COLUMN occurred_us Int64 "
                "DEFAULT toInt64(toUInt32(occurred_at)) * 1000000"
            )
        self._ready = True

    def recreate(self) -> None:
        """Drop the table and create it empty (benchmarks and tests)."""
        self.execute(f"DROP TABLE IF EXISTS {self.table}")
        with self._lock:
            self._create_schema()

    def write_batch(self, events: Sequence[StoredEvent]) -> int:
        return len(self.write_new(events))

    def write_new(self, events: Sequence[StoredEvent]) -> list[StoredEvent]:
        unique: dict[str, StoredEvent] = {}
        for event in events:
            unique.setdefault(event.event_id, event)
        if not unique:
            return []
        batch = list(unique.values())
        times = [e.occurred_at.astimezone(UTC).replace(microsecond=0) for e in batch]
        # The table name is a validated identifier; values go as parameters.
        query = (
            f"SELECT event_id FROM {self.table} WHERE type IN %(types)s "  # noqa: S608
            "AND occurred_at >= %(lo)s AND occurred_at <= %(hi)s AND event_id IN %(ids)s"
        )
        known = {
            row[0]
            for row in self.execute(
                query,
                {
                    "types": tuple({e.type for e in batch}),
                    "lo": min(times),
                    "hi": max(times),
                    "ids": tuple(unique),
                },
            )
        }
        new = [e for e in batch if e.event_id not in known]
        if new:
            now = datetime.now(UTC).replace(microsecond=0)
            self.execute(
                f"INSERT INTO {self.table} ({', '.join(COLUMNS)}) VALUES",
                [_row(e, now) for e in new],
            )
        return new

    def erase_contact(self, contact_id: int) -> int:
        """Delete the contact's events and wait until ClickHouse has applied the deletion."""
        [(count,)] = self.execute(
            f"SELECT count() FROM {self.table} WHERE contact_id = %(c)s",  # noqa: S608 - validated identifier
            {"c": contact_id},
        )
        if count:
            self.execute(
                f"ALTER TABLE {self.table} DELETE WHERE contact_id = %(c)s", {"c": contact_id}
            )
            self._wait_for_mutations()
        return int(count)

    def events_of_contact(self, contact_id: int) -> list[StoredEvent]:
        """The contact's events, oldest first; ``FINAL`` collapses copies not merged yet."""
        query = (
            "SELECT event_id, type, occurred_us, message_id, campaign_id, experiment_id, "  # noqa: S608 - validated identifier
            f"variant, provider, properties FROM {self.table} FINAL "
            "WHERE contact_id = %(c)s ORDER BY occurred_at, event_id"
        )
        rows = self.execute(query, {"c": contact_id})
        return [
            StoredEvent(
                event_id=event_id,
                type=kind,
                occurred_at=_EPOCH + timedelta(microseconds=occurred_at),
                contact_id=contact_id,
                message_id=message_id or None,
                campaign_id=campaign_id or None,
                experiment_id=experiment_id or None,
                variant=variant or None,
                provider=provider or None,
                properties=json.loads(properties) if properties else {},
            )
            for (event_id, kind, occurred_at, message_id, campaign_id, experiment_id, variant,
                 provider, properties) in rows
        ]  # fmt: skip

    def _wait_for_mutations(self) -> None:
        database, table = self.table.split(".")
        deadline = time.monotonic() + _MUTATION_TIMEOUT
        while time.monotonic() < deadline:
            [(running,)] = self.execute(
                "SELECT count() FROM system.mutations WHERE database = %(d)s AND table = %(t)s "
                "AND is_done = 0",
                {"d": database, "t": table},
            )
            if not running:
                return
            time.sleep(0.05)
        raise TimeoutError(
            f"ClickHouse has not finished deleting from {self.table} after "
            f"{_MUTATION_TIMEOUT:g} s; check system.mutations"
        )

    def metrics(self) -> ClickHouseMetrics:
        from postwise_clickhouse.metrics import ClickHouseMetrics

        return ClickHouseMetrics(self)

    def close(self) -> None:
        with self._lock:
            self._client.disconnect()


class ClickHouseOptions(BaseModel):
    """``provider_options.clickhouse``: where the sink connects."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str = Field(default="127.0.0.1", min_length=1)
    port: int = Field(default=9000, ge=1, le=65535, description="The native protocol's port.")
    database: str = "postwise"
    table: str = "events"
    user: str = "default"
    password: SecretStr = SecretStr("")
    connect_timeout: float = Field(default=5.0, gt=0, le=300)


def clickhouse_sink_factory(settings: Settings, options: Mapping[str, Any]) -> ClickHouseSink:
    """Build the sink from ``provider_options.clickhouse`` (host, port, database, table,
    user, password, connect_timeout)."""
    parsed = parse_options(ClickHouseOptions, options, prefix="provider_options.clickhouse")
    values = parsed.model_dump()
    values["password"] = parsed.password.get_secret_value()
    return ClickHouseSink(**values)
