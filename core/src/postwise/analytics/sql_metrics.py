"""Metric queries on the ``event`` table of the SQL database (PostgreSQL, SQLite).

The definitions are in :mod:`postwise.analytics.metrics`. Queries are shaped for the indexes
of migration 0003: a count of distinct messages reads one event type through a type-leading
index (index-only on PostgreSQL) and collapses duplicates on the way, instead of one pass with
``count(DISTINCT ...) FILTER (...)`` that sorts every row of every type.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session

from postwise.analytics.metrics import (
    BOUNCE,
    CLICK,
    COMPLAINT,
    CONVERSION,
    DEAD_LETTER,
    OPEN,
    SENT,
    AttributionModel,
    AttributionReport,
    AttributionRow,
    ClickThrough,
    DeliveryHealth,
    HealthKey,
    OpenRate,
    OpenRateReport,
    Scope,
    VariantKey,
    ratio,
    sort_key,
)
from postwise.contacts.segments import segment_condition
from postwise.db.models import Contact, Event, Segment

__all__ = ["SqlMetrics"]

_E = Event.__table__  # type: ignore[attr-defined]
_C = Contact.__table__  # type: ignore[attr-defined]


class SqlMetrics:
    """Metric queries on the ``event`` table (PostgreSQL or SQLite).

    Queries are shaped for the indexes of migration 0003: each count of distinct messages reads
    one event type through a type-leading index (index-only on PostgreSQL), instead of one
    pass with ``count(DISTINCT ...) FILTER`` that sorts every row.
    """

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    @contextmanager
    def _connect(self) -> Iterator[Connection]:
        with self.engine.connect() as connection:
            if connection.dialect.name == "postgresql":
                # Distinct counts over millions of events hash or sort in memory; the default
                # 4 MB would spill them to disk.
                connection.exec_driver_sql("SET LOCAL work_mem = '128MB'")
            yield connection
            connection.rollback()

    def _where(self, scope: Scope, *, time: bool = True) -> list[Any]:
        where: list[Any] = []
        if scope.campaign_id is not None:
            where.append(_E.c.campaign_id == scope.campaign_id)
        if scope.experiment_id is not None:
            where.append(_E.c.experiment_id == scope.experiment_id)
        if time and scope.since is not None:
            where.append(_E.c.occurred_at >= scope.since)
        if time and scope.until is not None:
            where.append(_E.c.occurred_at < scope.until)
        return where

    def _distinct_messages(
        self,
        connection: Connection,
        event_type: str,
        where: Sequence[Any],
        keys: Sequence[Any] = (),
        automated: bool | None = None,
    ) -> dict[tuple[Any, ...], int]:
        """Distinct messages with an event of ``event_type``, grouped by ``keys``."""
        conditions = [_E.c.type == event_type, _E.c.message_id.is_not(None), *where]
        if automated is not None:
            conditions.append(_E.c.automated.is_(automated))
        inner = sa.select(*keys, _E.c.message_id).where(*conditions).distinct().subquery()
        outer_keys = [inner.c[k.name] for k in keys]
        query = sa.select(*outer_keys, sa.func.count()).select_from(inner).group_by(*outer_keys)
        return {tuple(row[:-1]): int(row[-1]) for row in connection.execute(query)}

    def open_rates(
        self,
        session: Session,
        segments: Sequence[Segment],
        scope: Scope,
        *,
        include_machine_opens: bool = False,
    ) -> OpenRateReport:
        """One pass for the overall rate and every segment: a row per message (was it sent,
        opened by a person, opened at all, and whose is it), then counts per segment."""

        def flag(condition: Any) -> Any:
            return sa.func.max(sa.case((condition, 1), else_=0))

        messages = (
            sa.select(
                sa.func.max(_E.c.contact_id).label("contact_id"),
                flag(_E.c.type == SENT).label("sent"),
                flag(sa.and_(_E.c.type == OPEN, _E.c.automated.is_(False))).label("human"),
                flag(_E.c.type == OPEN).label("anyone"),
            )
            .where(_E.c.type.in_([SENT, OPEN]), _E.c.message_id.is_not(None), *self._where(scope))
            .group_by(_E.c.message_id)
            .subquery()
        )
        groups: list[tuple[str | None, Any]] = [(None, None)]
        for segment in segments:
            members = sa.select(_C.c.id).where(segment_condition(session, segment))
            groups.append((segment.name, messages.c.contact_id.in_(members)))
        columns = []
        for _, member in groups:
            for flag_name in ("sent", "human", "anyone"):
                counted: Any = messages.c[flag_name]
                if member is not None:
                    counted = sa.case((member, counted), else_=0)
                columns.append(sa.func.coalesce(sa.func.sum(counted), 0))
        with self._connect() as connection:
            counts = [int(v) for v in connection.execute(sa.select(*columns)).one()]
        rates = []
        for i, (label, _) in enumerate(groups):
            sent, human, anyone = counts[3 * i : 3 * i + 3]
            opened = anyone if include_machine_opens else human
            rates.append(OpenRate(label, sent, human, anyone, ratio(opened, sent)))
        return OpenRateReport(include_machine_opens, rates[0], rates[1:])

    def click_through(self, by: VariantKey, scope: Scope) -> list[ClickThrough]:
        where = self._where(scope)
        if by is VariantKey.CAMPAIGN:
            keys = [_E.c.campaign_id]
            where.append(_E.c.campaign_id.is_not(None))
        else:
            keys = [_E.c.experiment_id, _E.c.variant]
            where.append(_E.c.experiment_id.is_not(None))
        with self._connect() as connection:
            sent = self._distinct_messages(connection, SENT, where, keys)
            human = self._distinct_messages(connection, CLICK, where, keys, automated=False)
            scanner = self._distinct_messages(connection, CLICK, where, keys, automated=True)
        result = []
        for key in sorted(set(sent) | set(human) | set(scanner), key=sort_key):
            campaign, experiment, variant = (
                (key[0], None, None) if by is VariantKey.CAMPAIGN else (None, key[0], key[1])
            )
            n_sent = sent.get(key, 0)
            n_human = human.get(key, 0)
            result.append(
                ClickThrough(
                    campaign,
                    experiment,
                    variant,
                    n_sent,
                    n_human,
                    scanner.get(key, 0),
                    ratio(n_human, n_sent),
                )
            )
        return result

    def attribution(
        self, model: AttributionModel, window: timedelta, scope: Scope
    ) -> AttributionReport:
        conversion = _E.alias("conversion")
        click = _E.alias("touch")
        with self._connect() as connection:
            if connection.dialect.name == "postgresql":
                earliest = conversion.c.occurred_at - window
                value = sa.case(
                    (
                        sa.func.json_typeof(conversion.c.properties.op("->")("value")) == "number",
                        sa.cast(conversion.c.properties.op("->>")("value"), sa.Float),
                    ),
                    else_=None,
                )
            else:
                earliest = sa.func.strftime(
                    "%Y-%m-%d %H:%M:%f",
                    conversion.c.occurred_at,
                    f"-{window.total_seconds():.3f} seconds",
                )
                raw_value = sa.func.json_extract(conversion.c.properties, "$.value")
                value = sa.case(
                    (
                        sa.func.json_type(conversion.c.properties, "$.value").in_(
                            ["integer", "real"]
                        ),
                        raw_value,
                    ),
                    else_=None,
                )
            order = (
                [click.c.occurred_at.desc(), click.c.id.desc()]
                if model is AttributionModel.LAST_CLICK
                else [click.c.occurred_at.asc(), click.c.id.asc()]
            )
            touch_where = [
                click.c.contact_id == conversion.c.contact_id,
                click.c.type == CLICK,
                click.c.automated.is_(False),
                click.c.occurred_at <= conversion.c.occurred_at,
                click.c.occurred_at >= earliest,
            ]
            where = [conversion.c.type == CONVERSION, conversion.c.contact_id.is_not(None)]
            if scope.since is not None:
                where.append(conversion.c.occurred_at >= scope.since)
            if scope.until is not None:
                where.append(conversion.c.occurred_at < scope.until)
            keys = ("campaign_id", "experiment_id", "variant")
            if connection.dialect.name == "postgresql":
                # A lateral probe per conversion, answered from the contact index alone
                # (it includes what the probe returns).
                touch = (
                    sa.select(click.c.id, *(click.c[k] for k in keys))
                    .where(*touch_where)
                    .order_by(*order)
                    .limit(1)
                    .lateral("touch_row")
                )
                credited = (
                    sa.select(
                        touch.c.id.label("touch_id"),
                        *(touch.c[k] for k in keys),
                        value.label("value"),
                    )
                    .select_from(conversion.outerjoin(touch, sa.true()))
                    .where(*where)
                    .subquery()
                )
            else:
                touch_id = (
                    sa.select(click.c.id)
                    .where(*touch_where)
                    .order_by(*order)
                    .limit(1)
                    .scalar_subquery()
                )
                conversions = (
                    sa.select(touch_id.label("touch_id"), value.label("value"))
                    .where(*where)
                    .subquery()
                )
                attributed = _E.alias("attributed")
                credited = (
                    sa.select(
                        conversions.c.touch_id,
                        *(attributed.c[k] for k in keys),
                        conversions.c.value,
                    )
                    .select_from(
                        conversions.outerjoin(attributed, attributed.c.id == conversions.c.touch_id)
                    )
                    .subquery()
                )
            untouched = sa.case((credited.c.touch_id.is_(None), 1), else_=0).label("untouched")
            group = [untouched, *(credited.c[k] for k in keys)]
            query = sa.select(
                *group,
                sa.func.count(),
                sa.func.coalesce(sa.func.sum(credited.c.value), 0.0),
            ).group_by(*group)
            grouped: list[Any] = list(connection.execute(query).all())
        rows: list[AttributionRow] = []
        total = unattributed = 0
        total_value = 0.0
        for is_untouched, campaign_id, experiment_id, variant, count, amount in grouped:
            total += int(count)
            total_value += float(amount)
            if is_untouched:
                unattributed += int(count)
                continue
            if scope.campaign_id is not None and campaign_id != scope.campaign_id:
                continue
            if scope.experiment_id is not None and experiment_id != scope.experiment_id:
                continue
            rows.append(
                AttributionRow(campaign_id, experiment_id, variant, int(count), float(amount))
            )
        rows.sort(key=lambda r: (-r.conversions, sort_key((r.campaign_id, r.variant))))
        return AttributionReport(
            model=model.value,
            window_days=window.total_seconds() / 86400,
            conversions=total,
            attributed=total - unattributed,
            unattributed=unattributed,
            value=round(total_value, 6),
            rows=rows,
        )

    def delivery_health(self, by: HealthKey, scope: Scope) -> list[DeliveryHealth]:
        column = _E.c.provider if by is HealthKey.PROVIDER else _E.c.recipient_domain
        where = [
            _E.c.type.in_([SENT, BOUNCE, DEAD_LETTER, COMPLAINT]),
            _E.c.message_id.is_not(None),
            *self._where(scope),
        ]

        def flag(event_type: str) -> Any:
            return sa.func.max(sa.case((_E.c.type == event_type, 1), else_=0))

        # One row per message first: its key comes from whichever of its events carries one,
        # so a complaint reported without a provider still lands with its message's provider.
        per_message = (
            sa.select(
                sa.func.max(column).label("key"),
                flag(SENT).label("accepted"),
                flag(BOUNCE).label("bounced"),
                flag(DEAD_LETTER).label("failed"),
                flag(COMPLAINT).label("complained"),
            )
            .where(*where)
            .group_by(_E.c.message_id)
            .subquery()
        )
        attempted = sa.func.sum(
            sa.case(
                (
                    (per_message.c.accepted + per_message.c.bounced + per_message.c.failed) > 0,
                    1,
                ),
                else_=0,
            )
        )
        query = sa.select(
            per_message.c.key,
            attempted,
            sa.func.sum(per_message.c.accepted),
            sa.func.sum(per_message.c.bounced),
            sa.func.sum(per_message.c.failed),
            sa.func.sum(per_message.c.complained * per_message.c.accepted),
        ).group_by(per_message.c.key)
        with self._connect() as connection:
            rows = connection.execute(query).all()
        return [
            DeliveryHealth.of(
                key,
                attempted=int(n_attempted or 0),
                accepted=int(n_accepted or 0),
                bounced=int(n_bounced or 0),
                failed=int(n_failed or 0),
                complained=int(n_complained or 0),
            )
            for key, n_attempted, n_accepted, n_bounced, n_failed, n_complained in sorted(
                rows, key=lambda r: sort_key((r[0],))
            )
        ]
