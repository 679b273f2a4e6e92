"""Metric queries on the ``event`` table of the SQL database (PostgreSQL, SQLite).

The definitions are in :mod:`postwise.analytics.metrics`. Queries are shaped for the indexes
of migration 0003: a count of distinct messages reads one event type through a type-leading
index (index-only on PostgreSQL) and collapses duplicates on the way, instead of one pass with
``count(DISTINCT ...) FILTER (...)`` that sorts every row of every type.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
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
    DEAD_LETTER,
    DEFAULT_CONVERSION_TYPES,
    FUNNEL_FIELDS,
    FUNNEL_TYPES,
    OPEN,
    SENT,
    UNSUBSCRIBE,
    AttributionModel,
    AttributionReport,
    ClickThrough,
    DeliveryHealth,
    FunnelCounts,
    HealthKey,
    OpenRate,
    OpenRateReport,
    Scope,
    VariantKey,
    attribution_report,
    sort_key,
)
from postwise.contacts.segments import segment_condition
from postwise.db.models import Contact, Event, Segment

__all__ = ["SqlMetrics"]


def _member_of(members: Any, contact: Any) -> Any:
    return contact.in_(members)


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

    def _funnels(
        self,
        connection: Connection,
        scope: Scope,
        keys: Sequence[str],
        groups: Sequence[Callable[[Any], Any] | None],
    ) -> dict[tuple[Any, ...], list[FunnelCounts]]:
        """:class:`FunnelCounts` per value of ``keys`` (columns of the ``sent`` event), one per
        condition of ``groups`` on the message's contact (``None``: every message).

        The sends come first (``sent`` events in the scope); the other events are read only for
        those messages and joined onto them, so each count is a subset of the sends.
        """
        sends = (
            sa.select(
                _E.c.message_id,
                sa.func.max(_E.c.contact_id).label("contact_id"),
                *(sa.func.max(_E.c[k]).label(k) for k in keys),
            )
            .where(_E.c.type == SENT, _E.c.message_id.is_not(None), *self._where(scope))
            .group_by(_E.c.message_id)
            .subquery("sends")
        )

        def flag(condition: Any) -> Any:
            return sa.func.max(sa.case((condition, 1), else_=0))

        human = _E.c.automated.is_(False)
        machine = _E.c.automated.is_(True)
        later = (
            sa.select(
                _E.c.message_id,
                flag(_E.c.type == BOUNCE).label("bounced"),
                flag(sa.and_(_E.c.type == OPEN, human)).label("pixel"),
                flag(_E.c.type == OPEN).label("any_open"),
                flag(sa.and_(_E.c.type == CLICK, human)).label("click"),
                flag(sa.and_(_E.c.type == CLICK, machine)).label("scanner"),
                flag(_E.c.type == UNSUBSCRIBE).label("unsubscribed"),
                flag(_E.c.type == COMPLAINT).label("complained"),
            )
            .where(
                _E.c.type.in_(FUNNEL_TYPES),
                _E.c.message_id.in_(sa.select(sends.c.message_id)),
            )
            .group_by(_E.c.message_id)
            .subquery("later")
        )

        def of(name: str) -> Any:
            return sa.func.coalesce(later.c[name], 0)

        delivered = 1 - of("bounced")
        click = of("click")
        pixel = of("pixel")
        steps: list[Any] = [
            sa.literal(1),
            of("bounced"),
            delivered * sa.case((pixel + click > 0, 1), else_=0),
            delivered * click * (1 - pixel),
            delivered * sa.case((of("any_open") + click > 0, 1), else_=0),
            delivered * click,
            delivered * of("scanner"),
            delivered * of("unsubscribed"),
            delivered * of("complained"),
        ]
        assert len(steps) == len(FUNNEL_FIELDS)
        columns: list[Any] = []
        for group in groups:
            member = None if group is None else group(sends.c.contact_id)
            for step in steps:
                counted = step if member is None else sa.case((member, step), else_=0)
                columns.append(sa.func.coalesce(sa.func.sum(counted), 0))
        key_columns = [sends.c[k] for k in keys]
        query = (
            sa.select(*key_columns, *columns)
            .select_from(sends.outerjoin(later, later.c.message_id == sends.c.message_id))
            .group_by(*key_columns)
        )
        width = len(FUNNEL_FIELDS)
        result: dict[tuple[Any, ...], list[FunnelCounts]] = {}
        for row in connection.execute(query):
            values = [int(v) for v in row[len(keys) :]]
            result[tuple(row[: len(keys)])] = [
                FunnelCounts(*values[i * width : (i + 1) * width]) for i in range(len(groups))
            ]
        return result

    def open_rates(
        self,
        session: Session,
        segments: Sequence[Segment],
        scope: Scope,
        *,
        include_machine_opens: bool = False,
    ) -> OpenRateReport:
        """One pass for the overall funnel and every segment's."""

        groups: list[Callable[[Any], Any] | None] = [None]
        for segment in segments:
            members = sa.select(_C.c.id).where(segment_condition(session, segment))
            groups.append(functools.partial(_member_of, members))
        with self._connect() as connection:
            found = self._funnels(connection, scope, [], groups)
        counts = found.get((), [FunnelCounts()] * len(groups))
        labels = [None, *(segment.name for segment in segments)]
        rates = [
            OpenRate.of(label, c, include_machine_opens)
            for label, c in zip(labels, counts, strict=True)
        ]
        return OpenRateReport(include_machine_opens, rates[0], rates[1:])

    def click_through(self, by: VariantKey, scope: Scope) -> list[ClickThrough]:
        keys = ["campaign_id"] if by is VariantKey.CAMPAIGN else ["experiment_id", "variant"]
        with self._connect() as connection:
            found = self._funnels(connection, scope, keys, [None])
        result = []
        for key in sorted(found, key=sort_key):
            if key[0] is None:
                continue  # sends outside any campaign (or experiment)
            [counts] = found[key]
            if by is VariantKey.CAMPAIGN:
                result.append(ClickThrough.of(key[0], None, None, counts))
            else:
                result.append(ClickThrough.of(None, key[0], key[1], counts))
        return result

    def attribution(
        self,
        model: AttributionModel,
        window: timedelta,
        scope: Scope,
        conversion_types: Sequence[str] = DEFAULT_CONVERSION_TYPES,
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
            where = [
                conversion.c.type.in_(list(conversion_types)),
                conversion.c.contact_id.is_not(None),
            ]
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
        return attribution_report(
            model,
            window,
            scope,
            conversion_types,
            [(bool(r[0]), r[1], r[2], r[3], int(r[4]), float(r[5])) for r in grouped],
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
