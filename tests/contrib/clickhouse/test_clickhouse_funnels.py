"""The metric definitions on ClickHouse: the same generated scenarios and reference as the SQL
tests (tests/core/analytics/test_metric_definitions.py), and the attribution edge to the
microsecond."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings

from postwise.analytics.metrics import AttributionModel, FunnelCounts, Scope, VariantKey
from postwise.analytics.sinks import StoredEvent
from postwise.analytics.sql_metrics import SqlMetrics
from postwise.analytics.sql_sink import SqlSink
from postwise.runtime import Runtime
from postwise.testing.metric_reference import expected_funnels, funnel_scenarios
from postwise_clickhouse.sink import ClickHouseSink

COUNTS = tuple(FunnelCounts.__dataclass_fields__)


def _counts(row: Any) -> dict[str, int]:
    return {name: getattr(row, name) for name in COUNTS}


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=funnel_scenarios())
def test_every_rate_is_a_subset_of_its_sends_on_clickhouse(
    ch_sink: ClickHouseSink, scenario: Any
) -> None:
    events, since, until = scenario
    ch_sink.recreate()
    ch_sink.write_new(events)
    backend = ch_sink.metrics()
    scope = Scope(since=since, until=until)
    report = backend.open_rates(None, [], scope)  # type: ignore[arg-type]
    zero = _counts(FunnelCounts())
    assert _counts(report.overall) == expected_funnels(events, since=since, until=until).get(
        None, zero
    )
    rows = backend.click_through(VariantKey.CAMPAIGN, scope)
    expected = expected_funnels(events, since=since, until=until, key=lambda s: s.campaign_id)
    expected.pop(None, None)
    assert {row.campaign_id: _counts(row) for row in rows} == expected
    for row in [report.overall, *rows]:
        for rate in (row.open_rate, row.click_rate, row.click_to_open_rate, row.rate):
            assert rate is None or 0 <= rate <= 1


T = datetime(2025, 3, 1, 9, tzinfo=UTC)


def _attribution_events() -> list[StoredEvent]:
    click = T + timedelta(microseconds=250_000)
    week = timedelta(days=7)
    return [
        StoredEvent("c1", "click", click, contact_id=1, message_id="a", campaign_id=1),
        StoredEvent("c2", "click", click, contact_id=2, message_id="b", campaign_id=2),
        StoredEvent("v1", "purchase", click + week - timedelta(milliseconds=400), contact_id=1,
                    properties={"value": 30}),
        StoredEvent("v2", "conversion", click + week + timedelta(milliseconds=400), contact_id=1,
                    properties={"value": 7}),
        StoredEvent("v3", "conversion", click + timedelta(days=1), contact_id=2,
                    properties={"value": 5.5}),
        StoredEvent("v4", "signup", click + timedelta(days=1), contact_id=2),
    ]  # fmt: skip


def test_attribution_edge_and_filtered_totals_are_the_same_on_both_sinks(
    ch_sink: ClickHouseSink, runtime: Runtime
) -> None:
    events = _attribution_events()
    ch_sink.write_new(events)
    SqlSink(runtime.engine).write_new(events)
    week = timedelta(days=7)
    for backend in (ch_sink.metrics(), SqlMetrics(runtime.engine)):
        report = backend.attribution(AttributionModel.LAST_CLICK, week, Scope())
        # The purchase 0.4 s inside the week is credited; the conversion 0.4 s past it is not.
        assert (report.conversions, report.attributed, report.unattributed) == (3, 2, 1)
        assert report.value == 42.5
        one = backend.attribution(AttributionModel.LAST_CLICK, week, Scope(campaign_id=1))
        assert (one.conversions, one.attributed, one.unattributed, one.value) == (1, 1, 0, 30.0)
        assert one.all_conversions == 3
        signups = backend.attribution(AttributionModel.LAST_CLICK, week, Scope(), ["signup"])
        assert (signups.conversions, signups.attributed) == (1, 1)
        # A window edge between two sub-second times (the conversion at T + 7 d + 0.65 s).
        edge = T + timedelta(days=7, microseconds=650_000)
        for since, expected in [
            (edge - timedelta(microseconds=1), 1),
            (edge, 1),
            (edge + timedelta(microseconds=1), 0),
        ]:
            assert (
                backend.attribution(
                    AttributionModel.LAST_CLICK, week, Scope(since=since)
                ).conversions
                == expected
            )
