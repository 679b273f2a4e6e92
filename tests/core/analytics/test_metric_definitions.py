"""The metric definitions on generated events: every count is of the selected sends' events, so
no rate exceeds 100%, and the counts equal those of a plain reference (postwise.testing)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings

from postwise.analytics.metrics import (
    AttributionModel,
    FunnelCounts,
    Scope,
    VariantKey,
    metrics_backend,
)
from postwise.analytics.sinks import StoredEvent
from postwise.analytics.sql_metrics import SqlMetrics
from postwise.analytics.sql_sink import SqlSink
from postwise.runtime import Runtime
from postwise.testing.metric_reference import expected_funnels, funnel_scenarios

RATES = (
    "delivery_rate",
    "bounce_rate",
    "open_rate",
    "open_rate_of_sent",
    "click_rate",
    "click_rate_of_sent",
    "click_to_open_rate",
    "unsubscribe_rate",
    "complaint_rate",
    "rate",
)
COUNTS = (
    "sent",
    "bounced",
    "opened",
    "opened_by_click_only",
    "opened_including_machine",
    "clicked",
    "scanner_clicked",
    "unsubscribed",
    "complained",
)


def counts_of(row: Any) -> dict[str, int]:
    return {name: getattr(row, name) for name in COUNTS}


def check_funnels(backend: Any, session: Any, events: list[StoredEvent], scope: Scope) -> None:
    """``backend``'s funnels (overall and per campaign) equal the reference's, rates <= 1."""
    report = backend.open_rates(session, [], scope)
    reference = expected_funnels(events, since=scope.since, until=scope.until)
    zero = counts_of(FunnelCounts())
    assert counts_of(report.overall) == reference.get(None, zero)
    by_campaign = {
        row.campaign_id: row for row in backend.click_through(VariantKey.CAMPAIGN, scope)
    }
    expected = expected_funnels(
        events, since=scope.since, until=scope.until, key=lambda sent: sent.campaign_id
    )
    expected.pop(None, None)
    assert {k: counts_of(v) for k, v in by_campaign.items()} == expected
    for row in [report.overall, *by_campaign.values()]:
        for name in RATES:
            value = getattr(row, name)
            assert value is None or 0.0 <= value <= 1.0, (name, row)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(scenario=funnel_scenarios())
def test_every_rate_is_a_subset_of_its_sends_on_sql(runtime: Runtime, scenario: Any) -> None:
    events, since, until = scenario
    with runtime.engine.begin() as connection:
        connection.execute(sa.text("DELETE FROM event"))
    SqlSink(runtime.engine).write_new(events)
    backend = SqlMetrics(runtime.engine)
    with runtime.session() as session:
        check_funnels(backend, session, events, Scope(since=since, until=until))


T = datetime(2025, 3, 1, 9, tzinfo=UTC)


def test_a_window_selects_sends_and_counts_their_later_opens(runtime: Runtime) -> None:
    """The issue's 126.67%: sends before the window, opens inside it. Opens follow their send."""
    events = [StoredEvent(f"s{i}", "sent", T + timedelta(minutes=i), contact_id=1,
                          message_id=f"m{i}", campaign_id=1) for i in range(10)]  # fmt: skip
    events += [StoredEvent(f"o{i}", "open", T + timedelta(days=2), contact_id=1,
                           message_id=f"m{i}", campaign_id=1) for i in range(10)]  # fmt: skip
    SqlSink(runtime.engine).write_new(events)
    backend = metrics_backend(runtime)
    with runtime.session() as session:
        later = backend.open_rates(session, [], Scope(since=T + timedelta(days=1)))
        first_five = backend.open_rates(session, [], Scope(since=T, until=T + timedelta(minutes=5)))
    assert (later.overall.sent, later.overall.opened, later.overall.rate) == (0, 0, None)
    assert (first_five.overall.sent, first_five.overall.opened) == (5, 5)
    assert first_five.overall.rate == 1.0


def test_delivered_opens_implied_by_clicks_and_the_funnel_rates(runtime: Runtime) -> None:
    serial = iter(range(1000))

    def ev(kind: str, m: int, **props: Any) -> StoredEvent:
        n = next(serial)
        return StoredEvent(f"e{n}", kind, T + timedelta(minutes=n), contact_id=m,
                           message_id=f"m{m}", campaign_id=3, properties=props)  # fmt: skip

    events: list[StoredEvent] = []
    for m in range(10):
        events.append(ev("sent", m))
    events += [ev("bounce", 9)]  # bounced after acceptance: not delivered
    events += [ev("open", 0), ev("open", 1), ev("click", 1), ev("click", 2)]  # m2: click only
    events += [ev("open", 3, machine_open=True), ev("click", 4, scanner=True)]
    events += [ev("unsubscribe", 1), ev("complaint", 5), ev("open", 9), ev("click", 9)]
    SqlSink(runtime.engine).write_new(events)
    [row] = metrics_backend(runtime).click_through(VariantKey.CAMPAIGN, Scope(campaign_id=3))
    assert (row.sent, row.bounced, row.delivered) == (10, 1, 9)
    assert (row.opened, row.opened_by_click_only, row.opened_including_machine) == (3, 1, 4)
    assert (row.clicked, row.scanner_clicked, row.unsubscribed, row.complained) == (2, 1, 1, 1)
    assert row.open_rate == pytest.approx(3 / 9, abs=1e-6)
    assert row.open_rate_of_sent == pytest.approx(3 / 10, abs=1e-6)
    assert row.click_rate == pytest.approx(2 / 9, abs=1e-6)
    assert row.click_to_open_rate == pytest.approx(2 / 3, abs=1e-6)
    assert row.unsubscribe_rate == pytest.approx(1 / 9, abs=1e-6)
    assert row.complaint_rate == pytest.approx(1 / 9, abs=1e-6)
    assert row.rate == row.click_rate


def attribution_events() -> list[StoredEvent]:
    """Contact 1 clicks campaign 1, contact 2 campaign 2; conversions and purchases around the
    7-day edge, to the microsecond."""
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


def check_attribution(backend: Any) -> None:
    week = timedelta(days=7)
    report = backend.attribution(AttributionModel.LAST_CLICK, week, Scope())
    # The purchase 0.4 s inside the week is credited; the conversion 0.4 s past it is not.
    assert (report.conversions, report.attributed, report.unattributed) == (3, 2, 1)
    assert report.value == 42.5
    one = backend.attribution(AttributionModel.LAST_CLICK, week, Scope(campaign_id=1))
    assert (one.conversions, one.attributed, one.unattributed, one.value) == (1, 1, 0, 30.0)
    assert one.all_conversions == 3
    signups = backend.attribution(AttributionModel.LAST_CLICK, week, Scope(), ["signup"])
    assert (signups.conversions, signups.attributed, signups.conversion_types) == (
        1,
        1,
        ["signup"],
    )


def test_attribution_counts_purchases_to_the_microsecond_and_totals_follow_filters(
    runtime: Runtime,
) -> None:
    SqlSink(runtime.engine).write_new(attribution_events())
    check_attribution(metrics_backend(runtime))


def test_unknown_campaigns_and_empty_windows_are_clear_messages(
    runtime: Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    from postwise.cli import cli

    monkeypatch.setenv("POSTWISE_DATABASE_URL", runtime.settings.resolved_database_url)
    monkeypatch.setenv("POSTWISE_REDIS_URL", runtime.settings.redis_url)
    monkeypatch.setenv("POSTWISE_DATA_DIR", str(runtime.settings.data_dir))
    runner = CliRunner()
    result = runner.invoke(cli, ["metrics", "ctr", "--campaign", "999"])
    assert result.exit_code != 0
    assert "campaign 999 does not exist" in str(result.exception)
    result = runner.invoke(
        cli,
        ["metrics", "open-rate", "--since", "2025-02-01T00:00:00Z", "--until",
         "2025-01-01T00:00:00Z"],
    )  # fmt: skip
    assert result.exit_code != 0
    assert "before 'until'" in str(result.exception)


def test_a_conversion_type_that_is_no_event_type_is_refused_naming_it(client: Any) -> None:
    answer = client.get("/v1/metrics/attribution", params={"conversion_type": ["purchase", "['Y"]})
    assert answer.status_code == 422
    assert answer.json()["field"] == "conversion_type"
    assert (
        client.get(
            "/v1/metrics/attribution", params={"conversion_type": ["purchase", "signup"]}
        ).status_code
        == 200
    )
