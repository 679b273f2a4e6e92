"""A journey worker killed with SIGKILL mid-flow, again and again: every contact still gets
each step's email exactly once, and every run reaches its end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlmodel import select

from postwise.db.models import JourneyRun, Message, MessageStatus
from postwise.journeys.store import JourneyStore
from postwise.runtime import Runtime
from postwise.settings import Settings

pytestmark = pytest.mark.redis


@pytest.fixture
def settings(make_settings: Callable[..., Settings], real_redis_url: str) -> Settings:
    return make_settings(redis_url=real_redis_url, frequency_cap="off")


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    rt = Runtime(settings)
    yield rt
    rt.close()


def _worker(settings: Settings, data_dir: Path) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update(
        POSTWISE_DATABASE_URL=settings.database_url,
        POSTWISE_REDIS_URL=settings.redis_url,
        POSTWISE_SECRET_KEY=settings.secret_key.get_secret_value(),
        POSTWISE_DATA_DIR=str(data_dir),
        POSTWISE_FREQUENCY_CAP="off",
        POSTWISE_QUIET_HOURS="",
        POSTWISE_LOG_LEVEL="WARNING",
    )
    command = [
        sys.executable,
        "-c",
        "from postwise.cli import main; main()",
        "journeys",
        "run",
        "--consumer",
        "crashy",
        "--batch-size",
        "5",
        "--due-lease-ms",
        "1500",
        "--from-start",
    ]
    log = (data_dir / "worker.log").open("ab")
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log)


def _sent(runtime: Runtime) -> list[Message]:
    with runtime.session() as session:
        return [m for m in session.exec(select(Message)) if m.status == MessageStatus.QUEUED]


def _done(runtime: Runtime) -> int:
    with runtime.session() as session:
        return len(list(session.exec(select(JourneyRun).where(JourneyRun.status == "done"))))


def _wait(predicate: Callable[[], bool], timeout: float, what: str, data_dir: Path) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            log = (data_dir / "worker.log").read_text()[-2000:]
            raise AssertionError(f"timed out waiting for {what}; worker log: {log}")
        time.sleep(0.05)


@pytest.mark.slow
def test_killing_the_worker_mid_flow_sends_each_step_once_and_every_run_finishes(
    settings: Settings,
    runtime: Runtime,
    template_id: int,
    make_contact: Callable[..., int],
    publish: Callable[..., str],
    tmp_path: Path,
) -> None:
    with runtime.session() as session:
        JourneyStore(session, runtime).create(
            {
                "name": "two-step",
                "entry": {"event": "signup"},
                "steps": [
                    {"id": "first", "type": "send", "template": "welcome", "next": "pause"},
                    {"id": "pause", "type": "wait", "duration": "2s", "next": "second"},
                    {"id": "second", "type": "send", "template": "welcome"},
                ],
            }
        )
    contacts = [make_contact() for _ in range(40)]
    for contact in contacts:
        publish("signup", contact)
    total = 2 * len(contacts)
    kills = 0
    for fraction in (0.2, 0.45, 0.7):
        worker = _worker(settings, tmp_path)
        try:
            _wait(lambda f=fraction: len(_sent(runtime)) >= total * f, 240, "progress", tmp_path)
        finally:
            worker.send_signal(signal.SIGKILL)
            worker.wait(timeout=30)
        kills += worker.returncode == -signal.SIGKILL
    worker = _worker(settings, tmp_path)
    try:
        _wait(lambda: _done(runtime) == len(contacts), 240, "every run to finish", tmp_path)
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(timeout=30)
    assert kills == 3
    per_contact: dict[int, int] = {}
    for message in _sent(runtime):
        per_contact[message.contact_id or 0] = per_contact.get(message.contact_id or 0, 0) + 1
    assert per_contact == dict.fromkeys(contacts, 2)
    with runtime.session() as session:
        reasons = {r.exit_reason for r in session.exec(select(JourneyRun))}
    assert reasons == {"completed"}
