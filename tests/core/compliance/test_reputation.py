"""Rolling rates per stream pause sending automatically, until an operator resumes it."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner

from postwise.cli import cli
from postwise.compliance import reputation
from postwise.compliance.reputation import PAUSED_KEY
from postwise.errors import NotFoundError, ValidationError
from postwise.events import EVENT_STREAM, decode_event
from postwise.runtime import Runtime
from postwise.settings import Settings


@pytest.fixture
def rt(make_settings: Any) -> Iterator[Runtime]:
    runtime = Runtime(make_settings(reputation_min_volume=1000))
    yield runtime
    runtime.close()


def _send(
    runtime: Runtime,
    metric: str,
    count: int,
    *,
    at: float | None = None,
    provider: str = "smtp",
    recipient_domain: str = "gmail.com",
) -> list[str]:
    return reputation.record(
        runtime,
        metric,
        provider=provider,
        sending_domain="news.example.com",
        recipient_domain=recipient_domain,
        count=count,
        at=at,
    )


def _alerts(runtime: Runtime) -> list[dict[str, Any]]:
    entries: Any = runtime.redis.xrange(EVENT_STREAM)
    events = [decode_event(f) for _i, f in entries]
    return [dict(e.properties) for e in events if e.type == "reputation_alert"]


def test_complaints_over_the_pause_threshold_pause_every_stream_involved(rt: Runtime) -> None:
    _send(rt, "sent", 1000)
    assert _send(rt, "complaint", 2) == []  # 0.2 %: a warning, not a pause
    paused = _send(rt, "complaint", 1)  # 0.3 %: the Gmail and Yahoo limit
    assert sorted(paused) == [
        "provider:smtp",
        "recipient_domain:gmail.com",
        "sending_domain:news.example.com",
    ]
    entry = json.loads(rt.redis.hget(PAUSED_KEY, "provider:smtp") or b"{}")
    assert entry["rate"] == pytest.approx(0.003)
    assert "complaint" in entry["reason"] and entry["since"]
    assert reputation.is_paused(rt.redis, provider="smtp") == "provider:smtp"
    assert reputation.is_paused(rt.redis, provider="other") is None
    levels = sorted((a["stream"], a["level"]) for a in _alerts(rt))
    assert levels.count(("provider:smtp", "warn")) == 1
    assert levels.count(("provider:smtp", "pause")) == 1


def test_a_warning_alerts_once_per_window(rt: Runtime) -> None:
    _send(rt, "sent", 1000)
    for _ in range(25):
        _send(rt, "hard", 1)  # up to 2.5 %: over the 2 % warning, under the 5 % pause
    warnings = [a for a in _alerts(rt) if a["stream"] == "provider:smtp"]
    assert [a["level"] for a in warnings] == ["warn"]
    assert reputation.paused_streams(rt.redis) == {}


def test_blocks_count_as_bounces_and_soft_bounces_do_not(rt: Runtime) -> None:
    _send(rt, "sent", 1000)
    assert _send(rt, "soft", 200) == []
    assert _send(rt, "block", 30) == []
    assert "provider:smtp" in _send(rt, "hard", 20)


def test_nothing_is_decided_below_the_minimum_volume(rt: Runtime) -> None:
    _send(rt, "sent", 999)
    assert _send(rt, "complaint", 500) == []
    assert _alerts(rt) == []
    [stream] = reputation.report(rt.redis, rt.settings, streams=["provider:smtp"])
    assert stream.level == "ok" and stream.complaint_rate > 0.3


def test_counts_older_than_the_window_fall_out(rt: Runtime) -> None:
    now = time.time()
    day_ago = now - 25 * 3600
    _send(rt, "sent", 1000, at=day_ago)
    _send(rt, "hard", 100, at=day_ago)
    _send(rt, "sent", 1000, at=now)
    assert _send(rt, "hard", 10, at=now) == []
    [stream] = reputation.report(rt.redis, rt.settings, streams=["provider:smtp"], now=now)
    assert stream.counts["sent"] == 1000 and stream.counts["hard"] == 10


def test_a_pause_holds_until_resumed_and_resuming_starts_afresh(rt: Runtime) -> None:
    _send(rt, "sent", 1000)
    assert "provider:smtp" in _send(rt, "hard", 60)
    assert "provider:smtp" not in _send(rt, "hard", 10)  # already paused: no second alert
    lifted = reputation.resume(rt.redis, "provider:smtp")
    assert "bounce" in lifted["reason"]
    assert reputation.is_paused(rt.redis, provider="smtp") is None
    # The old numbers are gone, so the next bounce does not pause it straight away.
    assert _send(rt, "hard", 1) == []
    with pytest.raises(NotFoundError):
        reputation.resume(rt.redis, "provider:smtp")


def test_streams_are_named_scope_colon_value(rt: Runtime) -> None:
    for bad in ("smtp", "provider:", "isp:gmail.com"):
        with pytest.raises(ValidationError):
            reputation.parse_stream(bad)
    assert reputation.parse_stream("recipient_domain:GMail.com") == (
        reputation.Scope.RECIPIENT_DOMAIN,
        "gmail.com",
    )


def test_the_api_reports_resumes_and_pauses(client: Any, runtime: Runtime) -> None:
    reputation.record(runtime, "sent", provider="smtp", count=2000)
    reputation.record(runtime, "complaint", provider="smtp", count=10)
    status = client.get("/v1/reputation").json()
    assert "provider:smtp" in status["paused"]
    [smtp] = [s for s in status["streams"] if s["stream"] == "provider:smtp"]
    assert smtp["level"] == "paused" and smtp["complaint_rate"] == pytest.approx(0.005)
    assert client.post("/v1/reputation/resume", json={"stream": "provider:smtp"}).status_code == 200
    assert client.post("/v1/reputation/resume", json={"stream": "provider:smtp"}).status_code == 404
    bad = client.post("/v1/reputation/resume", json={"stream": "nonsense"})
    assert bad.status_code == 422 and bad.json()["field"] == "stream"
    assert "provider|sending_domain|recipient_domain" in bad.json()["detail"]
    assert (
        client.post(
            "/v1/reputation/pause", json={"stream": "recipient_domain:yahoo.com"}
        ).status_code
        == 200
    )
    assert reputation.is_paused(runtime.redis, recipient_domain="yahoo.com")


def _env(settings: Settings) -> dict[str, str]:
    return {
        "POSTWISE_DATA_DIR": str(settings.data_dir),
        "POSTWISE_DATABASE_URL": settings.resolved_database_url,
        "POSTWISE_REDIS_URL": settings.redis_url,
        "POSTWISE_SECRET_KEY": settings.secret_key.get_secret_value(),
    }


def test_the_cli_shows_status_and_resumes(runtime: Runtime) -> None:
    reputation.record(runtime, "sent", provider="smtp", count=2000)
    reputation.record(runtime, "hard", provider="smtp", count=200)
    runner = CliRunner()
    env = _env(runtime.settings)
    status = runner.invoke(cli, ["reputation", "status", "--json"], env=env)
    assert status.exit_code == 0, status.output
    assert "provider:smtp" in json.loads(status.output)["paused"]
    resumed = runner.invoke(cli, ["reputation", "resume", "provider:smtp"], env=env)
    assert resumed.exit_code == 0 and "resumed provider:smtp" in resumed.output
    assert reputation.paused_streams(runtime.redis) == {}
