"""Metrics on a small, hand-checked set of events: API, CLI and the SQL backend agree."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from analytics_helpers import add_contacts
from click.testing import CliRunner

from postwise.analytics.metrics import (
    AttributionModel,
    HealthKey,
    Scope,
    VariantKey,
    metrics_backend,
)
from postwise.analytics.sinks import StoredEvent
from postwise.analytics.sql_sink import SqlSink
from postwise.db.models import Segment, SegmentMember
from postwise.runtime import Runtime

T0 = datetime(2025, 3, 1, 9, tzinfo=UTC)
MACHINE = {"machine_open": True, "machine_reason": "apple_mpp"}
SCANNER = {"scanner": True, "scanner_reason": "burst"}


@pytest.fixture
def data(runtime: Runtime) -> dict[str, int]:
    """Three contacts, six messages, and what happened to them (see each line)."""
    c1, c2, c3 = add_contacts(runtime, "one@gmail.com", "two@gmail.com", "three@example.org")
    with runtime.session() as session:
        vip = Segment(name="vip", kind="static")
        gmail = Segment(
            name="gmail", rules={"field": "email", "op": "ends_with", "value": "@gmail.com"}
        )
        session.add_all([vip, gmail])
        session.flush()
        assert vip.id is not None
        session.add_all([SegmentMember(segment_id=vip.id, contact_id=c) for c in (c1, c3)])
    n = 0

    def ev(
        kind: str, message: str | None, contact: int, at: timedelta, **extra: Any
    ) -> StoredEvent:
        nonlocal n
        n += 1
        return StoredEvent(f"m-{n}", kind, T0 + at, contact_id=contact, message_id=message, **extra)

    a = {"campaign_id": 1, "experiment_id": 9, "variant": "a", "provider": "smtp"}
    b = {"campaign_id": 1, "experiment_id": 9, "variant": "b", "provider": "smtp"}
    c2_ = {"campaign_id": 2, "provider": "sendgrid"}
    gmail_d = {"recipient_domain": "gmail.com"}
    org_d = {"recipient_domain": "example.org"}
    events = [
        # m1 → c1, variant a: opened and clicked by the reader, then a complaint (no provider).
        ev("sent", "m1", c1, timedelta(0), properties=gmail_d, **a),
        ev("open", "m1", c1, timedelta(minutes=30), **a),
        ev("open", "m1", c1, timedelta(minutes=40), **a),
        ev("click", "m1", c1, timedelta(hours=1), **a),
        ev("complaint", "m1", c1, timedelta(days=1)),
        # m2 → c2, variant b: only Apple's proxy opened it.
        ev("sent", "m2", c2, timedelta(0), properties=gmail_d, **b),
        ev("open", "m2", c2, timedelta(seconds=3), properties=MACHINE, **b),
        # m3 → c3, variant a: opened, and a link scanner clicked.
        ev("sent", "m3", c3, timedelta(0), properties=org_d, **a),
        ev("open", "m3", c3, timedelta(hours=2), **a),
        ev("click", "m3", c3, timedelta(seconds=1), properties=SCANNER, **a),
        # m4 → c1, campaign 2: accepted, clicked a day later, then bounced back.
        ev("sent", "m4", c1, timedelta(0), properties=gmail_d, **c2_),
        ev("click", "m4", c1, timedelta(days=1), **c2_),
        ev("bounce", "m4", c1, timedelta(days=1, hours=1), properties=gmail_d, **c2_),
        # m5 → c2, campaign 2: refused at once.  m6 → c3: given up after retries.
        ev("bounce", "m5", c2, timedelta(0), properties=org_d, **c2_),
        ev("dead_letter", "m6", c3, timedelta(0), provider="smtp"),
        # Conversions: c1 two days in (value 10), c2 (value 5, never clicked), c3 (scanner only).
        ev("conversion", None, c1, timedelta(days=2), properties={"value": 10}),
        ev("conversion", None, c2, timedelta(days=3), properties={"value": 5.0}),
        ev("conversion", None, c3, timedelta(days=1)),
        ev("page_view", None, c3, timedelta(days=1)),
    ]
    sink = SqlSink(runtime.engine)
    assert len(sink.write_new(events)) == len(events)
    return {"c1": c1, "c2": c2, "c3": c3}


def test_open_rate_overall_and_by_segment_leaves_machine_opens_out(
    runtime: Runtime, data: dict[str, int]
) -> None:
    backend = metrics_backend(runtime)
    with runtime.session() as session:
        segments = [session.get(Segment, 1), session.get(Segment, 2)]
        report = backend.open_rates(session, segments, Scope(campaign_id=1))  # type: ignore[arg-type]
        with_machines = backend.open_rates(
            session,
            segments,  # type: ignore[arg-type]
            Scope(campaign_id=1),
            include_machine_opens=True,
        )
    overall = report.overall
    assert (overall.sent, overall.opened, overall.opened_including_machine) == (3, 2, 3)
    assert overall.rate == pytest.approx(2 / 3, abs=1e-6)
    by_name = {row.segment: row for row in report.segments}
    assert (by_name["vip"].sent, by_name["vip"].opened, by_name["vip"].rate) == (2, 2, 1.0)
    assert (by_name["gmail"].sent, by_name["gmail"].opened, by_name["gmail"].rate) == (2, 1, 0.5)
    assert with_machines.overall.rate == 1.0


def test_click_through_per_campaign_and_per_variant_counts_scanners_apart(
    runtime: Runtime, data: dict[str, int]
) -> None:
    backend = metrics_backend(runtime)
    campaigns = {
        row.campaign_id: (row.sent, row.clicked, row.scanner_clicked)
        for row in backend.click_through(VariantKey.CAMPAIGN, Scope())
    }
    # m4 (campaign 2) bounced after acceptance: not delivered, so its click is not counted.
    assert campaigns == {1: (3, 1, 1), 2: (1, 0, 0)}
    variants = {
        (row.experiment_id, row.variant): (row.sent, row.clicked, row.rate)
        for row in backend.click_through(VariantKey.VARIANT, Scope(experiment_id=9))
    }
    assert variants == {(9, "a"): (2, 1, 0.5), (9, "b"): (1, 0, 0.0)}


def test_attribution_last_click_and_first_touch_within_the_window(
    runtime: Runtime, data: dict[str, int]
) -> None:
    backend = metrics_backend(runtime)
    last = backend.attribution(AttributionModel.LAST_CLICK, timedelta(days=7), Scope())
    assert (last.conversions, last.attributed, last.unattributed) == (3, 1, 2)
    assert last.value == 15.0
    [row] = last.rows
    assert (row.campaign_id, row.conversions, row.value) == (2, 1, 10.0)
    first = backend.attribution(AttributionModel.FIRST_TOUCH, timedelta(days=7), Scope())
    [row] = first.rows
    assert (row.campaign_id, row.variant, row.conversions) == (1, "a", 1)
    narrow = backend.attribution(AttributionModel.LAST_CLICK, timedelta(hours=12), Scope())
    assert narrow.attributed == 0


def test_delivery_health_per_provider_and_recipient_domain(
    runtime: Runtime, data: dict[str, int]
) -> None:
    backend = metrics_backend(runtime)
    providers = {row.key: row for row in backend.delivery_health(HealthKey.PROVIDER, Scope())}
    smtp, sendgrid = providers["smtp"], providers["sendgrid"]
    assert (smtp.attempted, smtp.accepted, smtp.bounced, smtp.failed, smtp.complained) == (
        4,
        3,
        0,
        1,
        1,
    )
    assert smtp.accepted_rate == 0.75
    assert smtp.complaint_rate == pytest.approx(1 / 3, abs=1e-6)
    assert (sendgrid.attempted, sendgrid.accepted, sendgrid.bounced) == (2, 1, 2)
    assert sendgrid.bounce_rate == 1.0
    domains = {row.key: row for row in backend.delivery_health(HealthKey.DOMAIN, Scope())}
    assert (domains["gmail.com"].attempted, domains["gmail.com"].bounced) == (3, 1)
    assert (domains["example.org"].attempted, domains["example.org"].accepted) == (2, 1)


def test_a_time_window_limits_every_metric(runtime: Runtime, data: dict[str, int]) -> None:
    backend = metrics_backend(runtime)
    later = Scope(since=T0 + timedelta(hours=12))
    assert backend.click_through(VariantKey.CAMPAIGN, later) == [
        row for row in backend.click_through(VariantKey.CAMPAIGN, later) if row.campaign_id == 2
    ]
    conversions = backend.attribution(AttributionModel.LAST_CLICK, timedelta(days=7), later)
    assert conversions.conversions == 3
    early = backend.attribution(
        AttributionModel.LAST_CLICK, timedelta(days=7), Scope(until=T0 + timedelta(days=1, hours=1))
    )
    assert early.conversions == 1


def test_the_metrics_api_answers_with_json(client: Any, data: dict[str, int]) -> None:
    response = client.get("/v1/metrics/open-rate", params={"campaign_id": 1, "segment": "vip"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["overall"]["opened"] == 2
    assert [s["segment"] for s in body["segments"]] == ["vip"]
    response = client.get("/v1/metrics/click-through", params={"by": "variant"})
    assert [(r["variant"], r["clicked"]) for r in response.json()["rows"]] == [("a", 1), ("b", 0)]
    response = client.get("/v1/metrics/attribution", params={"model": "first_touch"})
    assert response.json()["rows"][0]["campaign_id"] == 1
    response = client.get("/v1/metrics/delivery", params={"by": "domain"})
    assert {r["key"] for r in response.json()["rows"]} == {"gmail.com", "example.org", None}
    response = client.get(f"/v1/metrics/engagement/{data['c1']}")
    assert response.json()["score"] > 0


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"since": "2025-01-01T00:00:00"}, "since"),
        ({"since": "last week"}, "since"),
        ({"since": "2025-02-01T00:00:00Z", "until": "2025-01-01T00:00:00Z"}, "since"),
    ],
)
def test_bad_metric_parameters_are_a_422_naming_the_field(
    client: Any, params: dict[str, str], field: str
) -> None:
    response = client.get("/v1/metrics/click-through", params=params)
    assert response.status_code == 422
    assert response.json()["field"] == field


def test_unknown_segments_and_contacts_are_404(client: Any) -> None:
    assert client.get("/v1/metrics/open-rate", params={"segment": "nope"}).status_code == 404
    assert client.get("/v1/metrics/engagement/999999").status_code == 404


def test_the_metrics_cli_prints_json(
    runtime: Runtime, data: dict[str, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    from postwise.cli import cli

    settings = runtime.settings
    monkeypatch.setenv("POSTWISE_DATABASE_URL", settings.resolved_database_url)
    monkeypatch.setenv("POSTWISE_REDIS_URL", settings.redis_url)
    monkeypatch.setenv("POSTWISE_DATA_DIR", str(settings.data_dir))
    runner = CliRunner()
    result = runner.invoke(cli, ["metrics", "ctr", "--by", "campaign", "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["rows"]
    assert [(r["campaign_id"], r["clicked"]) for r in rows] == [(1, 1), (2, 0)]
    result = runner.invoke(cli, ["metrics", "open-rate", "--segment", "vip", "--json"])
    assert json.loads(result.output)["segments"][0]["segment"] == "vip"
    result = runner.invoke(cli, ["metrics", "attribution", "--model", "first_touch", "--json"])
    assert json.loads(result.output)["attributed"] == 1
    result = runner.invoke(cli, ["metrics", "delivery", "--by", "provider", "--json"])
    assert {r["key"] for r in json.loads(result.output)["rows"]} == {"smtp", "sendgrid"}
    result = runner.invoke(cli, ["metrics", "engagement", str(data["c1"]), "--json"])
    assert json.loads(result.output)["contact_id"] == data["c1"]


def test_the_metrics_sink_is_closed_with_its_runtime(make_settings: Any) -> None:
    from postwise.analytics import metrics as metrics_module

    runtime = Runtime(make_settings())
    runtime.migrate()
    first = metrics_module.metrics_backend(runtime)
    assert metrics_module.metrics_backend(runtime) is first  # built once per runtime
    sink = metrics_module._BACKENDS[runtime][0]
    closed: list[bool] = []
    original = sink.close
    sink.close = lambda: (closed.append(True), original())[-1]  # type: ignore[method-assign]
    runtime.close()
    assert closed == [True]
    assert runtime not in metrics_module._BACKENDS
