"""Operating postwise: heartbeats, readiness in /health, and `postwise run` supervising."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from litestar.testing import TestClient
from rq import Queue

from postwise.events import EVENT_STREAM
from postwise.ops.health import readiness
from postwise.ops.heartbeat import PROCESSES_KEY, Heartbeat, live_processes
from postwise.runtime import Runtime
from postwise.server.app import create_app

REQUIRED = ("worker", "collector", "triggers", "compliance")


@pytest.fixture
def live_runtime(make_settings: Any, real_redis_url: str) -> Any:
    runtime = Runtime(make_settings(redis_url=real_redis_url))
    yield runtime
    runtime.close()


def test_a_heartbeat_is_live_while_its_process_runs(real_redis: redis.Redis) -> None:
    with Heartbeat(real_redis, "worker", interval=0.1):
        (process,) = live_processes(real_redis)
        assert (process.kind, process.pid) == ("worker", os.getpid())
        time.sleep(0.3)
        assert live_processes(real_redis)[0].age < 0.3
    assert live_processes(real_redis) == []


def test_a_process_that_stopped_beating_is_not_live(real_redis: redis.Redis) -> None:
    beat = Heartbeat(real_redis, "collector")
    beat.beat()
    assert len(live_processes(real_redis)) == 1
    real_redis.zadd(PROCESSES_KEY, {beat.member: time.time() - 60})
    assert live_processes(real_redis) == []


def test_unknown_process_kinds_are_refused(real_redis: redis.Redis) -> None:
    with pytest.raises(ValueError, match="unknown process kind"):
        Heartbeat(real_redis, "mailman")


def test_health_is_503_naming_each_missing_process_until_all_beat(live_runtime: Runtime) -> None:
    with TestClient(app=create_app(runtime=live_runtime)) as client:
        missing = client.get("/health")
        assert missing.status_code == 503
        body = missing.json()
        assert body["status"] == "degraded"
        assert body["checks"] == {"database": "ok", "redis": "ok", "delivery": "ok"}
        assert "no live worker process: run `postwise worker`" in body["problems"]
        assert len(body["problems"]) == len(REQUIRED)
        assert client.get("/health/live").status_code == 200

        beats = [Heartbeat(live_runtime.redis, kind) for kind in REQUIRED]
        for beat in beats:
            beat.beat()
        ready = client.get("/health")
        assert ready.status_code == 200, ready.json()
        assert ready.json()["processes"]["worker"]["live"] == 1


def test_a_consumer_group_far_behind_is_a_problem(live_runtime: Runtime) -> None:
    client = live_runtime.redis
    now_ms = int(time.time() * 1000)
    client.xadd(EVENT_STREAM, {"e": "1"}, id=f"{now_ms - 120_000}-0")
    client.xgroup_create(EVENT_STREAM, "analytics", id="0")
    client.xadd(EVENT_STREAM, {"e": "2"}, id=f"{now_ms}-0")
    client.xreadgroup("analytics", "c", {EVENT_STREAM: ">"}, count=1)
    result = readiness(live_runtime)
    backlog = result.backlog["stream:analytics"]
    assert backlog["waiting"] == 1
    assert 119 <= backlog["behind_seconds"] <= 121
    assert any("'analytics' is 120 s behind" in p for p in result.problems)


def test_scheduled_jobs_nobody_schedules_are_a_problem(live_runtime: Runtime) -> None:
    from datetime import UTC, datetime, timedelta

    queue = Queue("send.smtp", connection=live_runtime.redis)
    queue.enqueue_at(datetime.now(UTC) - timedelta(minutes=5), print, "late")
    result = readiness(live_runtime)
    assert result.backlog["queue:send.smtp"]["scheduled_overdue"] == 1
    assert any("scheduled jobs of queue 'send.smtp'" in p for p in result.problems)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"timed out waiting for {what}")


def _health(port: int) -> dict[str, Any] | None:
    try:
        response = httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)
    except httpx.HTTPError:
        return None
    return dict(response.json()) if response.status_code == 200 else None


def test_postwise_run_supervises_restarts_and_stops_every_process(
    tmp_path: Path, database_url: str, real_redis_url: str
) -> None:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTWISE_")}
    env.update(
        POSTWISE_MODE="development",
        POSTWISE_DATA_DIR=str(tmp_path),
        POSTWISE_DATABASE_URL=database_url,
        POSTWISE_REDIS_URL=real_redis_url,
        POSTWISE_SECRET_KEY="s" * 40,
        POSTWISE_LOG_LEVEL="WARNING",
    )
    command = [sys.executable, "-m", "postwise.cli", "run", "--port", str(port)]
    command += ["--server-workers", "1", "--workers", "1", "--grace", "20"]
    supervisor = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL)
    try:
        ready = _wait(lambda: _health(port), 90, "every process to beat")
        kinds = {k: v["live"] for k, v in ready["processes"].items() if v["live"]}
        assert kinds == {
            "server": 1,
            "worker": 1,
            "collector": 1,
            "triggers": 1,
            "journeys": 1,
            "compliance": 1,
        }
        (worker,) = ready["processes"]["worker"]["instances"]
        os.kill(worker["pid"], signal.SIGKILL)

        def restarted() -> Any:
            body = _health(port)
            if body is None:
                return None
            pids = [p["pid"] for p in body["processes"]["worker"]["instances"]]
            return body if pids and worker["pid"] not in pids else None

        body = _wait(restarted, 45, "the killed worker to be replaced")
        pids = [p["pid"] for kind in body["processes"].values() for p in kind["instances"]]

        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=40) == 0
        for pid in pids:
            with pytest.raises(ProcessLookupError):
                os.kill(pid, 0)
    finally:
        if supervisor.poll() is None:
            supervisor.kill()
            supervisor.wait()
