"""The metrics of :mod:`postwise.analytics.metrics`, computed inside ClickHouse.

Same definitions as the SQL backend: counts of distinct messages (``uniqExact`` of the
message id's 64-bit hash), machine opens
and scanner clicks apart, attribution to the last (or first) human click of the contact within
the window, delivery health per message then per provider or domain. Segment membership is
decided in the state database and sent along as an external table of contact ids.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from sqlmodel import Session

from postwise.analytics.metrics import (
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
from postwise.db.models import Segment

if TYPE_CHECKING:
    from postwise_clickhouse.sink import ClickHouseSink

__all__ = ["ClickHouseMetrics"]


def _scope(scope: Scope, params: dict[str, Any], *, time: bool = True) -> str:
    where = []
    if scope.campaign_id is not None:
        where.append("campaign_id = %(campaign_id)s")
        params["campaign_id"] = scope.campaign_id
    if scope.experiment_id is not None:
        where.append("experiment_id = %(experiment_id)s")
        params["experiment_id"] = scope.experiment_id
    if time and scope.since is not None:
        where.append("occurred_at >= %(since)s")
        params["since"] = scope.since
    if time and scope.until is not None:
        where.append("occurred_at < %(until)s")
        params["until"] = scope.until
    return "".join(f" AND {clause}" for clause in where)


def _none(value: Any) -> Any:
    return None if value in (0, "") else value


class ClickHouseMetrics:
    """Metric queries over a :class:`ClickHouseSink`'s table."""

    def __init__(self, sink: ClickHouseSink) -> None:
        self.sink = sink
        self.table = sink.table

    def _open_rate(
        self, name: str | None, scope: Scope, machine: bool, members: list[int] | None
    ) -> OpenRate:
        params: dict[str, Any] = {}
        where = _scope(scope, params)
        external = None
        if members is not None:
            where += " AND contact_id IN members"
            external = [
                {
                    "name": "members",
                    "structure": [("contact_id", "UInt32")],
                    "data": [{"contact_id": c} for c in members],
                }
            ]
        [(sent, human, anyone)] = self.sink.execute(
            f"""
            SELECT uniqExactIf(message_hash, type = 'sent'),
                   uniqExactIf(message_hash, type = 'open' AND automated = 0),
                   uniqExactIf(message_hash, type = 'open')
            FROM {self.table}
            WHERE type IN ('sent', 'open') AND message_hash != cityHash64(''){where}
            """,  # noqa: S608 - names are fixed identifiers; values go as parameters
            params,
            external_tables=external,
        )
        return OpenRate(name, sent, human, anyone, ratio(anyone if machine else human, sent))

    def open_rates(
        self,
        session: Session,
        segments: Sequence[Segment],
        scope: Scope,
        *,
        include_machine_opens: bool = False,
    ) -> OpenRateReport:
        from postwise.contacts.segments import iter_segment_ids

        overall = self._open_rate(None, scope, include_machine_opens, None)
        rows = []
        for segment in segments:
            members = [cid for page in iter_segment_ids(session, segment) for cid in page]
            rows.append(self._open_rate(segment.name, scope, include_machine_opens, members))
        return OpenRateReport(include_machine_opens, overall, rows)

    def click_through(self, by: VariantKey, scope: Scope) -> list[ClickThrough]:
        params: dict[str, Any] = {}
        where = _scope(scope, params)
        if by is VariantKey.CAMPAIGN:
            keys, where = "campaign_id", where + " AND campaign_id != 0"
        else:
            keys, where = "experiment_id, variant", where + " AND experiment_id != 0"
        rows = self.sink.execute(
            f"""
            SELECT {keys},
                   uniqExactIf(message_hash, type = 'sent'),
                   uniqExactIf(message_hash, type = 'click' AND automated = 0),
                   uniqExactIf(message_hash, type = 'click' AND automated = 1)
            FROM {self.table}
            WHERE type IN ('sent', 'click') AND message_hash != cityHash64(''){where}
            GROUP BY {keys}
            """,  # noqa: S608 - names are fixed identifiers; values go as parameters
            params,
        )
        result = []
        for row in rows:
            if by is VariantKey.CAMPAIGN:
                key: tuple[Any, ...] = (row[0], None, None)
                sent, clicked, scanner = row[1:]
            else:
                key = (None, row[0], _none(row[1]))
                sent, clicked, scanner = row[2:]
            result.append(
                ClickThrough(key[0], key[1], key[2], sent, clicked, scanner, ratio(clicked, sent))
            )
        return sorted(result, key=lambda r: sort_key((r.campaign_id, r.experiment_id, r.variant)))

    def attribution(
        self, model: AttributionModel, window: timedelta, scope: Scope
    ) -> AttributionReport:
        params: dict[str, Any] = {"window": int(window.total_seconds())}
        conversion_time = ""
        click_time = ""
        if scope.since is not None:
            params["since"] = scope.since
            params["clicks_since"] = scope.since - window
            conversion_time += " AND occurred_at >= %(since)s"
            click_time += " AND occurred_at >= %(clicks_since)s"
        if scope.until is not None:
            params["until"] = scope.until
            conversion_time += " AND occurred_at < %(until)s"
            click_time += " AND occurred_at < %(until)s"
        order = "-toInt64(c.1)" if model is AttributionModel.LAST_CLICK else "toInt64(c.1)"
        rows = self.sink.execute(
            f"""
            SELECT untouched, touch.2, touch.3, touch.4, count(), sum(conversion.2)
            FROM (
                SELECT conversion,
                       arrayFilter(
                           c -> c.1 <= conversion.1 AND c.1 >= conversion.1 - %(window)s, clicks
                       ) AS candidates,
                       length(candidates) = 0 AS untouched,
                       if(untouched, (toUInt32(0), toUInt32(0), toUInt32(0), ''),
                          arraySort(c -> {order}, candidates)[1]) AS touch
                FROM (
                    SELECT contact_id,
                           groupArrayIf(
                               (toUInt32(occurred_at), campaign_id, experiment_id, variant),
                               type = 'click') AS clicks,
                           groupArrayIf((toUInt32(occurred_at), value), type = 'conversion')
                               AS conversions
                    FROM {self.table}
                    WHERE contact_id != 0
                      AND ((type = 'conversion'{conversion_time})
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
        total = unattributed = 0
        total_value = 0.0
        result: list[AttributionRow] = []
        for untouched, campaign_id, experiment_id, variant, count, amount in rows:
            total += count
            total_value += amount
            if untouched:
                unattributed += count
                continue
            if scope.campaign_id is not None and campaign_id != scope.campaign_id:
                continue
            if scope.experiment_id is not None and experiment_id != scope.experiment_id:
                continue
            result.append(
                AttributionRow(
                    _none(campaign_id), _none(experiment_id), _none(variant), count, amount
                )
            )
        result.sort(key=lambda r: (-r.conversions, sort_key((r.campaign_id, r.variant))))
        return AttributionReport(
            model=model.value,
            window_days=window.total_seconds() / 86400,
            conversions=total,
            attributed=total - unattributed,
            unattributed=unattributed,
            value=round(total_value, 6),
            rows=result,
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
