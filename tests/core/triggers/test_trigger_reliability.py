"""Reliability on a real Redis: concurrent consumers, reclaimed entries, a killed consumer."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlmodel import select

from postwise.db.models import Message, Template
from postwise.delivery.requests import SendRequest
from postwise.events import EVENT_STREAM
from postwise.runtime import Runtime
from postwise.settings import Settings
from postwise.triggers.cooldown import TriggerKeys
from postwise.triggers.engine import TriggerEngine, dedupe_key
from postwise.triggers.stats import read_stats

pytestmark = pytest.mark.redis


@pytest.fixture
def settings(make_settings: Callable[..., Settings], real_redis_url: str) -> Settings:
    """This module's tests run on a real Redis whatever the suite's mode."""
    return make_settings(redis_url=real_redis_url, frequency_cap="off")


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    rt = Runtime(settings)
    yield rt
    rt.close()


def _engine(runtime: Runtime, consumer: str, **options: Any) -> TriggerEngine:
    engine = TriggerEngine(runtime, consumer=consumer, block_ms=10, **options)
    engine.ensure_group("0")
    engine.reload()
    return engine


def _ledger(runtime: Runtime, trigger_id: int) -> set[str]:
    with runtime.session() as session:
        return set(session.exec(select(Message.id).where(Message.trigger_id == trigger_id)))


def _message_id(runtime: Runtime, trigger_id: int, event_id: str, contact_id: int) -> str:
    with runtime.session() as session:
        template = session.exec(select(Template.id).where(Template.name == "welcome")).one()
    request = SendRequest(contact_id, template, dedupe_key(trigger_id, event_id))
    return request.message_id


def test_two_consumers_seeing_two_events_at_once_fire_once(
    settings: Settings,
    runtime: Runtime,
    make_contact: Callable[..., int],
    make_trigger: Callable[..., int],
    publish: Callable[..., str],
) -> None:
    trigger = make_trigger(cooldown="1h")
    for round_ in range(5):
        contact = make_contact()
        publish("signup", contact, event_id=f"a-{round_}")
        publish("signup", contact, event_id=f"b-{round_}")
    runtimes = [Runtime(settings), Runtime(settings)]
    engines = [_engine(rt, f"worker-{i}", batch_size=1) for i, rt in enumerate(runtimes)]
    try:
        for _ in range(5):
            # Each consumer reads one of the two events of a contact, then both handle them at
            # the same moment.
            batches = [engine._read(">", block=None) for engine in engines]
            barrier = threading.Barrier(2)

            def handle(index: int, batches: list[Any] = batches, barrier: Any = barrier) -> None:
                barrier.wait()
                engines[index].process(batches[index], redelivered=False)

            threads = [threading.Thread(target=handle, args=(i,)) for i in range(2)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
    finally:
        for engine, rt in zip(engines, runtimes, strict=True):
            engine.close()
            rt.close()
    stats = read_stats(runtime.redis, TriggerKeys(), [trigger])[trigger]
    assert len(_ledger(runtime, trigger)) == 5
    assert (stats["fired"], stats["cooldown"]) == (5, 5)


def test_a_dead_consumers_pending_entries_are_reclaimed(
    runtime: Runtime,
    make_contact: Callable[..., int],
    make_trigger: Callable[..., int],
    publish: Callable[..., str],
) -> None:
    trigger = make_trigger()
    for _ in range(4):
        publish("signup", make_contact())
    engine = _engine(runtime, "survivor", claim_idle_ms=200)
    # A consumer that read the entries and died before acknowledging them.
    runtime.redis.xreadgroup("triggers", "dead", {EVENT_STREAM: ">"}, count=10)
    assert engine.step() == 0
    time.sleep(0.3)
    engine._claimed_at = 0.0
    assert engine.step() == 4
    engine.close()
    assert len(_ledger(runtime, trigger)) == 4
    assert int(runtime.redis.xpending(EVENT_STREAM, "triggers")["pending"]) == 0
    assert read_stats(runtime.redis, TriggerKeys(), [trigger])[trigger]["fired"] == 4


def _consumer(settings: Settings, data_dir: Path) -> subprocess.Popen[bytes]:
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
        "triggers",
        "run",
        "--consumer",
        "crashy",
        "--batch-size",
        "7",
        "--block-ms",
        "50",
        "--from-start",
    ]
    # stderr goes to a file: a pipe nobody reads would block the consumer once it is full.
    log = (data_dir / "consumer.log").open("ab")
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=log)


def _fired(runtime: Runtime, triggers: list[int]) -> int:
    stats = read_stats(runtime.redis, TriggerKeys(), triggers)
    return sum(s["fired"] for s in stats.values())


def _wait(
    predicate: Callable[[], bool], timeout: float, what: str, process: subprocess.Popen[bytes]
) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if process.poll() is not None:
            raise AssertionError(f"the consumer exited with status {process.returncode}")
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


@pytest.mark.slow
def test_killing_the_consumer_mid_stream_fires_every_qualifying_event_exactly_once(
    settings: Settings,
    runtime: Runtime,
    make_contact: Callable[..., int],
    make_trigger: Callable[..., int],
    publish: Callable[..., str],
    tmp_path: Path,
) -> None:
    every_event = make_trigger(
        name="per-event",
        cooldown=0,
        conditions=[{"type": "event_property", "config": {"property": "qualifies", "value": True}}],
    )
    per_contact = make_trigger(name="per-contact", cooldown="1h")
    expected: dict[int, set[str]] = {every_event: set(), per_contact: set()}
    contacts = [make_contact() for _ in range(150)]
    for index in range(300):
        contact = contacts[index % len(contacts)]
        qualifies = index % 3 != 0
        event_id = publish("signup", contact, qualifies=qualifies)
        if qualifies:
            expected[every_event].add(_message_id(runtime, every_event, event_id, contact))
        if index < len(contacts):
            expected[per_contact].add(_message_id(runtime, per_contact, event_id, contact))
    total = sum(len(ids) for ids in expected.values())
    triggers = list(expected)

    in_flight: list[int] = []
    for fraction in (0.25, 0.6):
        process = _consumer(settings, tmp_path)
        try:
            _wait(
                lambda f=fraction: _fired(runtime, triggers) >= total * f, 300, "progress", process
            )
        finally:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
        assert process.returncode == -signal.SIGKILL
        in_flight.append(int(runtime.redis.xpending(EVENT_STREAM, "triggers")["pending"]))
    process = _consumer(settings, tmp_path)
    try:
        _wait(
            lambda: (
                int(runtime.redis.xpending(EVENT_STREAM, "triggers")["pending"]) == 0
                and _fired(runtime, triggers) >= total
            ),
            300,
            "the stream to be consumed",
            process,
        )
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
    assert process.returncode == 0, (tmp_path / "consumer.log").read_text()
    # The kills landed mid-batch: entries read and never acknowledged were read again.
    assert max(in_flight) > 0

    group = runtime.redis.xinfo_groups(EVENT_STREAM)[0]
    assert group["lag"] == 0
    stats = read_stats(runtime.redis, TriggerKeys(), triggers)
    for trigger, message_ids in expected.items():
        assert _ledger(runtime, trigger) == message_ids
        assert stats[trigger]["fired"] == len(message_ids)
        assert stats[trigger]["duplicates"] == 0
    assert stats[per_contact]["cooldown"] == 150
