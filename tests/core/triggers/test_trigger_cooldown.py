"""Cooldown claims in real Redis: one winner per trigger and contact, recognisable by event id."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import redis

from postwise.triggers.cooldown import Claim, ClaimOutcome, TriggerKeys, claim_many, peek, release

KEYS = TriggerKeys("test-triggers")


def test_two_workers_claiming_the_same_cooldown_at_once_fire_once(real_redis_url: str) -> None:
    clients = [redis.Redis.from_url(real_redis_url) for _ in range(2)]
    for round_ in range(50):
        key = KEYS.cooldown(1, round_)
        barrier = threading.Barrier(2)

        def attempt(
            index: int, key: str = key, barrier: threading.Barrier = barrier
        ) -> ClaimOutcome:
            barrier.wait()
            return claim_many(clients[index], [Claim(key, f"event-{index}", 60_000)])[0]

        with ThreadPoolExecutor(2) as pool:
            outcomes = list(pool.map(attempt, range(2)))
        assert sorted(o.value for o in outcomes) == ["claimed", "held"]


def test_the_same_event_recognises_its_own_claim(real_redis: redis.Redis) -> None:
    key = KEYS.cooldown(7, 42)
    first = claim_many(real_redis, [Claim(key, "abc", 60_000)])
    again = claim_many(real_redis, [Claim(key, "abc", 60_000), Claim(key, "other", 60_000)])
    assert first == [ClaimOutcome.CLAIMED]
    assert again == [ClaimOutcome.OWN, ClaimOutcome.HELD]
    holder, ttl = peek(real_redis, key)
    assert holder == "abc"
    assert 0 < ttl <= 60_000


def test_release_only_deletes_the_holders_claim(real_redis: redis.Redis) -> None:
    key = KEYS.cooldown(7, 43)
    claim_many(real_redis, [Claim(key, "abc", 60_000)])
    assert release(real_redis, key, "someone-else") is False
    assert real_redis.exists(key)
    assert release(real_redis, key, "abc") is True
    assert not real_redis.exists(key)


def test_cooldown_expires(real_redis: redis.Redis) -> None:
    key = KEYS.cooldown(7, 44)
    claim_many(real_redis, [Claim(key, "a", 50)])
    threading.Event().wait(0.12)
    assert claim_many(real_redis, [Claim(key, "b", 50)]) == [ClaimOutcome.CLAIMED]
