"""The metrics of :mod:`postwise.analytics.metrics`, computed inside ClickHouse.

Same definitions as the SQL backend: counts of distinct messages (``uniqExact`` of the
message id's 64-bit hash), machine opens
and scanner clicks apart, attribution to the last (or first) human click of the contact within
the window, delivery health per message then per provider or domain. Segment membership is
decided in the state database and sent along as an external table of contact ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlmodel import Session

from postwise.analytics.metrics import (
    DEFAULT_CONVERSION_TYPES,
    FUNNEL_FIELDS,
    FUNNEL_TYPES,
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
from postwise.db.models import Segment

if TYPE_CHECKING:
    from postwise_clickhouse.sink import ClickHouseSink

__all__ = ["ClickHouseMetrics"]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _micros(when: datetime) -> int:
    """``when`` in microseconds since the epoch (the driver would cut a datetime parameter to
    the second)."""
    return (when - _EPOCH) // timedelta(microseconds=1)


def _scope(scope: Scope, params: dict[str, Any], *, time: bool = True) -> str:
    where = []
    if scope.campaign_id is not None:
        where.append("campaign_id = %(campaign_id)s")
        params["campaign_id"] = scope.campaign_id
    if scope.experiment_id is not None:
        where.append("experiment_id = %(experiment_id)s")
        params["experiment_id"] = scope.experiment_id
    if time and scope.since is not None:
        # The second-precision key column narrows the read; the microseconds decide.
        where.append("occurred_at >= toDateTime(%(since_s)s) AND occurred_us >= %(since)s")
        params["since"] = _micros(scope.since)
        params["since_s"] = params["since"] // 1_000_000
    if time and scope.until is not None:
        where.append("occurred_at <= toDateTime(%(until_s)s) AND occurred_us < %(until)s")
        params["until"] = _micros(scope.until)
        params["until_s"] = params["until"] // 1_000_000
    return "".join(f" AND {clause}" for clause in where)


def _none(value: Any) -> Any:
    return None if value in (0, "") else value


class ClickHouseMetrics:
    """Metric queries over a :class:`ClickHouseSink`'s table."""

    def __init__(self, sink: ClickHouseSink) -> None:
        self.sink = sink
        self.table = sink.table

    def _funnels(
        self, scope: Scope, keys: Sequence[str], groups: Sequence[list[int] | None]
    ) -> dict[tuple[Any, ...], list[FunnelCounts]]:
        """:class:`FunnelCounts` per value of ``keys`` (columns of the ``sent`` event), one per
        group of contacts (``None``: every message); the same construction as the SQL
        backend's: the sends first, then only their other events, joined onto them."""
        params: dict[str, Any] = {}
        where = _scope(scope, params)
        external = []
        steps = [
            "1",
            "bounced",
            "delivered AND (pixel OR click)",
            "delivered AND click AND NOT pixel",
            "delivered AND (any_open OR click)",
            "delivered AND click",
            "delivered AND scanner",
            "delivered AND unsubscribed",
            "delivered AND complained",
        ]
        assert len(steps) == len(FUNNEL_FIELDS)
        columns: list[str] = []
        for i, members in enumerate(groups):
            condition = "1" if members is None else f"key_contact IN members{i}"
            if members is not None:
                external.append(
                    {
                        "name": f"members{i}",
                        "structure": [("contact_id", "UInt32")],
                        "data": [{"contact_id": c} for c in members],
                    }
                )
            columns.extend(f"countIf(({step}) AND {condition})" for step in steps)
        # Keys are renamed so that the scope's conditions still read the event's own columns.
        key_list = "".join(f"key_{k}, " for k in keys)
        key_select = "".join(f"any({k}) AS key_{k}, " for k in keys)
        group_by = f"GROUP BY {', '.join(f'key_{k}' for k in keys)}" if keys else ""
        rows = self.sink.execute(
            f"""
            SELECT {key_list}{", ".join(columns)}
            FROM (
                SELECT *, NOT bounced AS delivered
                FROM (
                    SELECT message_hash, {key_select}any(contact_id) AS key_contact
                    FROM {self.table}
                    WHERE type = 'sent' AND message_hash != cityHash64(''){where}
                    GROUP BY message_hash
                ) AS sends
                LEFT JOIN (
                    SELECT message_hash,
                           max(type = 'bounce') AS bounced,
                           max(type = 'open' AND automated = 0) AS pixel,
                           max(type = 'open') AS any_open,
                           max(type = 'click' AND automated = 0) AS click,
                           max(type = 'click' AND automated = 1) AS scanner,
                           max(type = 'unsubscribe') AS unsubscribed,
                           max(type = 'complaint') AS complained
                    FROM {self.table}
                    WHERE type IN %(later)s AND message_hash IN (
                        SELECT message_hash FROM {self.table}
                        WHERE type = 'sent' AND message_hash != cityHash64(''){where}
                    )
                    GROUP BY message_hash
                ) AS later USING (message_hash)
            )
            {group_by}
            """,  # noqa: S608 - names are fixed identifiers; values go as parameters
            {**params, "later": FUNNEL_TYPES},
            external_tables=external or None,
        )
        width = len(FUNNEL_FIELDS)
        result: dict[tuple[Any, ...], list[FunnelCounts]] = {}
        for row in rows:
            values = [int(v) for v in row[len(keys) :]]
            if not values[0] and not keys:
                continue  # no sends at all: the aggregate still returns a row of zeros
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
        from postwise.contacts.segments import iter_segment_ids

        groups: list[list[int] | None] = [None]
        for segment in segments:
            groups.append([cid for page in iter_segment_ids(session, segment) for cid in page])
        counts = self._funnels(scope, [], groups).get((), [FunnelCounts()] * len(groups))
        labels = [None, *(segment.name for segment in segments)]
        rates = [
            OpenRate.of(label, c, include_machine_opens)
            for label, c in zip(labels, counts, strict=True)
        ]
        return OpenRateReport(include_machine_opens, rates[0], rates[1:])

    def click_through(self, by: VariantKey, scope: Scope) -> list[ClickThrough]:
        keys = ["campaign_id"] if by is VariantKey.CAMPAIGN else ["experiment_id", "variant"]
        result = []
        for key, [counts] in self._funnels(scope, keys, [None]).items():
            if not key[0]:
                continue  # sends outside any campaign (or experiment)
            if by is VariantKey.CAMPAIGN:
                result.append(ClickThrough.of(key[0], None, None, counts))
            else:
                result.append(ClickThrough.of(None, key[0], _none(key[1]), counts))
        return sorted(result, key=lambda r: sort_key((r.campaign_id, r.experiment_id, r.variant)))

    def attribution(
        self,
        model: AttributionModel,
        window: timedelta,
        scope: Scope,
        conversion_types: Sequence[str] = DEFAULT_CONVERSION_TYPES,
    ) -> AttributionReport:
        # Times in microseconds, so the window's edge is as exact as on PostgreSQL.
        params: dict[str, Any] = {
            "window": int(window / timedelta(microseconds=1)),
            "conversion_types": tuple(conversion_types),
        }
        conversion_time = ""
        click_time = ""
        if scope.since is not None:
            params["since"] = _micros(scope.since)
            params["clicks_since"] = _micros(scope.since - window)
            conversion_time += " AND occurred_us >= %(since)s"
            click_time += " AND occurred_us >= %(clicks_since)s"
        if scope.until is not None:
            params["until"] = _micros(scope.until)
            conversion_time += " AND occurred_us < %(until)s"
            click_time += " AND occurred_us < %(until)s"
        order = "-c.1" if model is AttributionModel.LAST_CLICK else "c.1"
        rows = self.sink.execute(
            f"""
            SELECT untouched, touch.2, touch.3, touch.4, count(), sum(conversion.2)
            FROM (
                SELECT conversion,
                       arrayFilter(
                           c -> c.1 <= conversion.1 AND c.1 >= conversion.1 - %(window)s, clicks
                       ) AS candidates,
                       length(candidates) = 0 AS untouched,
                       if(untouched, (toInt64(0), toUInt32(0), toUInt32(0), ''),
                          arraySort(c -> {order}, candidates)[1]) AS touch
                FROM (
                    SELECT contact_id,
                           groupArrayIf(
                               (occurred_us, campaign_id, experiment_id, variant),
                               type = 'click') AS clicks,
                           groupArrayIf((occurred_us, value),
                                        type != 'click') AS conversions
                    FROM {self.table}
                    WHERE contact_id != 0
                      AND ((type IN %(conversion_types)s{conversion_time})
                           OR (type = 'click' AND automated = 0{click_time}))
                    GROUP BY contact_id
                    HAVING length(conversions) > 0
                )
                ARRAY JOIN conversions AS conversion
            )
            GROUP BY untouched, touch.2, touch.3, touch.4
            """,  # noqa: S608 - names are fixed identifiers; values go as parameters
            params,
        )
        return attribution_report(
            model,
            window,
            scope,
            conversion_types,
            [
                (bool(untouched), _none(campaign), _none(experiment), _none(variant), n, amount)
                for untouched, campaign, experiment, variant, n, amount in rows
            ],
        )

    def delivery_health(self, by: HealthKey, scope: Scope) -> list[DeliveryHealth]:
        column = "provider" if by is HealthKey.PROVIDER else "recipient_domain"
        params: dict[str, Any] = {}
        where = _scope(scope, params)
        rows = self.sink.execute(
            f"""
            SELECT key,
                   countIf(accepted OR bounced OR failed),
                   sum(accepted), sum(bounced), sum(failed), sum(complained AND accepted)
            FROM (
                SELECT message_hash,
                       anyIf({column}, {column} != '') AS key,
                       max(type = 'sent') AS accepted,
                       max(type = 'bounce') AS bounced,
                       max(type = 'dead_letter') AS failed,
                       max(type = 'complaint') AS complained
                FROM {self.table}
                WHERE type IN ('sent', 'bounce', 'dead_letter', 'complaint')
                  AND message_hash != cityHash64(''){where}
                GROUP BY message_hash
            )
            GROUP BY key
            """,  # noqa: S608 - names are fixed identifiers; values go as parameters
            params,
        )
        return [
            DeliveryHealth.of(
                _none(key),
                attempted=attempted,
                accepted=accepted,
                bounced=bounced,
                failed=failed,
                complained=complained,
            )
            for key, attempted, accepted, bounced, failed, complained in sorted(
                rows, key=lambda r: sort_key((_none(r[0]),))
            )
        ]
