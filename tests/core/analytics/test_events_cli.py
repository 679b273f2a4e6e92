"""``postwise events send`` and ``postwise events status``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from postwise.cli import cli
from postwise.errors import ValidationError
from postwise.events import EVENT_STREAM
from postwise.runtime import Runtime


@pytest.fixture
def invoke(runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> Any:
    settings = runtime.settings
    monkeypatch.setenv("POSTWISE_DATABASE_URL", settings.resolved_database_url)
    monkeypatch.setenv("POSTWISE_REDIS_URL", settings.redis_url)
    monkeypatch.setenv("POSTWISE_DATA_DIR", str(settings.data_dir))
    monkeypatch.setenv("POSTWISE_SECRET_KEY", "test-secret-key-not-for-production")

    def run(*args: str) -> Any:
        return CliRunner().invoke(cli, list(args))

    return run


def test_send_ingests_json_lines_in_batches(invoke: Any, runtime: Runtime, tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    lines = [json.dumps({"event_id": f"f{i}", "type": "signup"}) for i in range(1500)]
    path.write_text("\n".join(lines) + "\n")
    result = invoke("events", "send", str(path), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output) == {"accepted": 1500, "duplicates": 0, "rejected": []}
    assert runtime.redis.xlen(EVENT_STREAM) == 1500


def test_send_refuses_a_file_with_an_invalid_event_unless_partial(
    invoke: Any, runtime: Runtime, tmp_path: Path
) -> None:
    path = tmp_path / "events.json"
    path.write_text(json.dumps([{"event_id": "a", "type": "x"}, {"event_id": "b"}]))
    result = invoke("events", "send", str(path))
    assert isinstance(result.exception, ValidationError)
    assert "Fix them or pass --partial" in str(result.exception)
    assert "event 1: type" in result.output
    assert runtime.redis.xlen(EVENT_STREAM) == 0
    result = invoke("events", "send", str(path), "--partial", "--json")
    assert result.exit_code == 0
    assert json.loads(result.output)["rejected"][0]["index"] == 1
    assert runtime.redis.xlen(EVENT_STREAM) == 1


def test_status_reports_backlog_and_pending(invoke: Any, runtime: Runtime, tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps({"event_id": f"s{i}", "type": "x"}) for i in range(7)))
    invoke("events", "send", str(path))
    result = invoke("events", "status", "--json")
    assert result.exit_code == 0, result.output
    status = json.loads(result.output)
    assert (status["length"], status["lag"], status["pending"]) == (7, 7, 0)
    result = invoke(
        "events", "collect", "--exit-when-idle", "0.3", "--flush-interval", "0.05", "--json"
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["stored"] == 7
    status = json.loads(invoke("events", "status", "--json").output)
    assert (status["lag"], status["pending"]) == (0, 0)


def test_collect_with_several_writers_stores_everything_once(
    invoke: Any, runtime: Runtime, tmp_path: Path
) -> None:
    path = tmp_path / "events.jsonl"
    path.write_text("\n".join(json.dumps({"event_id": f"w{i}", "type": "x"}) for i in range(2500)))
    assert invoke("events", "send", str(path)).exit_code == 0
    result = invoke(
        "events", "collect", "--writers", "3", "--batch-size", "200", "--consumer", "cw",
        "--exit-when-idle", "0.5", "--flush-interval", "0.05", "--json",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    counts = json.loads(result.output)
    assert (counts["stored"], counts["duplicates"]) == (2500, 0)
    assert counts["batches"] >= 13  # 2,500 in batches of at most 200
    with runtime.engine.connect() as connection:
        stored = connection.exec_driver_sql("SELECT count(DISTINCT event_id) FROM event").scalar()
    assert stored == 2500
    status = json.loads(invoke("events", "status", "--json").output)
    assert (status["lag"], status["pending"]) == (0, 0)
    assert invoke("events", "collect", "--writers", "17").exit_code == 2  # 1 to 16


def test_a_writer_that_fails_stops_the_others_and_the_command_fails(
    invoke: Any, runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from postwise.analytics.collector import Collector

    calls: list[str] = []
    real_run = Collector.run

    def failing_run(self: Collector, *args: Any, **kwargs: Any) -> Any:
        calls.append(self.consumer)
        if len(calls) == 1:
            raise RuntimeError("redis went away")
        return real_run(self, *args, **kwargs)

    monkeypatch.setattr(Collector, "run", failing_run)
    result = invoke("events", "collect", "--writers", "2", "--flush-interval", "0.05")
    assert isinstance(result.exception, RuntimeError)
    assert "redis went away" in str(result.exception)
    assert len(calls) == 2  # the other writer ran, and was stopped (no --exit-when-idle)
