"""Token buckets in Redis: one rate shared by every worker, never exceeded, never blocking."""

from __future__ import annotations

import multiprocessing
import threading
import time
import uuid

import fakeredis
import pytest
import redis

from postwise.delivery.ratelimit import TokenBucket
from postwise.settings import RateLimit


def _bucket(client: redis.Redis, text: str) -> TokenBucket:
    return TokenBucket(client, f"test-{uuid.uuid4().hex[:8]}", RateLimit.parse(text))


@pytest.fixture(params=["real", "embedded"])
def client(request: pytest.FixtureRequest) -> redis.Redis:
    """Real Redis runs the Lua script; the embedded stand-in the WATCH/MULTI fallback."""
    if request.param == "real":
        real: redis.Redis = request.getfixturevalue("real_redis")
        return real
    return fakeredis.FakeRedis(server=fakeredis.FakeServer())


def test_a_full_bucket_grants_its_burst_then_says_when_the_rest_can_go(
    client: redis.Redis,
) -> None:
    bucket = _bucket(client, "10/s burst 5")
    first = bucket.take(8)
    assert first.granted == 5
    # 3 more tokens at 10 a second take about 0.3 s.
    assert 0.25 <= first.retry_after <= 0.31
    second = bucket.take(1)
    assert second.granted == 0
    assert second.retry_after > 0


def test_the_bucket_refills_at_its_rate(client: redis.Redis) -> None:
    bucket = _bucket(client, "100/s burst 50")
    started = time.monotonic()
    assert bucket.take(50).granted == 50
    time.sleep(0.1)
    refilled = bucket.take(50).granted
    elapsed = time.monotonic() - started
    # About 10 tokens in 0.1 s; never more than the time that actually passed allows.
    assert 8 <= refilled <= min(50, 100 * elapsed + 1)


def test_a_request_larger_than_the_burst_waits_for_one_burst_at_most(
    client: redis.Redis,
) -> None:
    bucket = _bucket(client, "1000/m burst 20")
    grant = bucket.take(500)
    assert grant.granted == 20
    assert grant.retry_after == pytest.approx(20 / (1000 / 60), rel=0.05)


def test_taking_nothing_touches_nothing(client: redis.Redis) -> None:
    bucket = _bucket(client, "1/s burst 1")
    assert bucket.take(0).granted == 0
    assert bucket.take(1).granted == 1


def _hammer(url: str, name: str, seconds: float, results: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    client = redis.Redis.from_url(url)
    bucket = TokenBucket(client, name, RateLimit.parse("200/s burst 20"))
    granted = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        granted += bucket.take(3).granted
    results.put(granted)


@pytest.mark.redis
def test_processes_sharing_a_bucket_never_exceed_its_rate_together(real_redis_url: str) -> None:
    name = f"shared-{uuid.uuid4().hex[:8]}"
    seconds = 1.5
    ctx = multiprocessing.get_context("spawn")
    results: multiprocessing.Queue = ctx.Queue()  # type: ignore[type-arg]
    procs = [
        ctx.Process(target=_hammer, args=(real_redis_url, name, seconds, results)) for _ in range(4)
    ]
    started = time.monotonic()
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(30)
    elapsed = time.monotonic() - started
    total = sum(results.get(timeout=5) for _ in procs)
    # At most the burst plus what the rate refills while anyone is taking.
    assert total <= 20 + 200 * elapsed
    # The processes were busy the whole time, so the bucket was drained about as fast as it
    # refilled (process start-up eats into the window, hence the loose lower bound).
    assert total >= 200 * seconds * 0.5


@pytest.mark.redis
def test_threads_racing_for_the_last_tokens_get_exactly_the_burst(real_redis: redis.Redis) -> None:
    bucket = _bucket(real_redis, "0.001/s burst 50")
    grants: list[int] = []
    lock = threading.Lock()

    def take() -> None:
        for _ in range(20):
            granted = bucket.take(1).granted
            with lock:
                grants.append(granted)

    threads = [threading.Thread(target=take) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(grants) == 50
