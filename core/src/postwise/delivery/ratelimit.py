"""Token buckets per provider, kept in Redis so every worker on every machine shares them.

A bucket holds at most ``burst`` tokens and refills at ``rate / per_seconds`` tokens a second
(``settings.rate_limits``, e.g. ``smtp=1000/m burst 200``). Taking tokens is one atomic script
call that refills the bucket by the time elapsed on the Redis server's clock (so machines with
skewed clocks still share one rate), grants what is there, and says how long the rest would
take. The worker sends what was granted and re-enqueues the remainder for that moment: over the
limit, messages wait in the queue, never in a busy loop and never dropped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.client import Pipeline

from postwise.delivery.atomic import AtomicScript
from postwise.settings import RateLimit

__all__ = ["KEY_PREFIX", "Grant", "TokenBucket"]

KEY_PREFIX = "postwise:ratelimit:"

# KEYS[1]: the bucket (a hash of tokens and the time they were counted).
# ARGV: tokens per second, burst, tokens requested.
# Returns {granted, seconds until the rest (at most one burst) is available, as a string}.
_TAKE_LUA = """
local rate = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local requested = tonumber(ARGV[3])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1])
local at = tonumber(state[2])
if tokens == nil or at == nil then
  tokens = burst
  at = now
end
if now > at then
  tokens = math.min(burst, tokens + (now - at) * rate)
end
local granted = math.max(0, math.min(requested, math.floor(tokens)))
tokens = tokens - granted
redis.call('HSET', KEYS[1], 'tokens', string.format('%.6f', tokens),
           'at', string.format('%.6f', math.max(now, at)))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 60000)
local wait = 0
local missing = math.min(requested - granted, burst)
if missing > 0 then
  wait = (missing - tokens) / rate
end
return {granted, string.format('%.6f', wait)}
"""


def _take_watched(
    client: redis.Redis, keys: Sequence[str], args: Sequence[Any]
) -> tuple[Any, Callable[[Pipeline], None]]:
    rate, burst, requested = float(args[0]), float(args[1]), int(args[2])
    now = time.time()
    raw_tokens, raw_at = client.hmget(keys[0], ["tokens", "at"])
    if raw_tokens is None or raw_at is None:
        tokens, at = burst, now
    else:
        tokens, at = float(raw_tokens), float(raw_at)
    if now > at:
        tokens = min(burst, tokens + (now - at) * rate)
    granted = max(0, min(requested, math.floor(tokens)))
    tokens -= granted
    missing = min(requested - granted, burst)
    wait = (missing - tokens) / rate if missing > 0 else 0.0

    def write(multi: Pipeline) -> None:
        multi.hset(keys[0], mapping={"tokens": f"{tokens:.6f}", "at": f"{max(now, at):.6f}"})
        multi.pexpire(keys[0], math.ceil(burst / rate * 1000) + 60000)

    return [granted, f"{wait:.6f}"], write


_TAKE = AtomicScript(_TAKE_LUA, _take_watched)


@dataclass(frozen=True, slots=True)
class Grant:
    """What a bucket gave: ``granted`` tokens now; the rest in ``retry_after`` seconds."""

    granted: int
    retry_after: float


class TokenBucket:
    """The shared token bucket of one provider."""

    def __init__(self, client: redis.Redis, name: str, limit: RateLimit) -> None:
        self.client = client
        self.name = name
        self.limit = limit
        self.key = KEY_PREFIX + name

    def take(self, requested: int) -> Grant:
        """Take up to ``requested`` tokens; never blocks."""
        if requested <= 0:
            return Grant(0, 0.0)
        granted, wait = _TAKE(
            self.client,
            [self.key],
            [repr(self.limit.per_second), self.limit.burst, requested],
        )
        return Grant(int(granted), max(0.0, float(wait)))

    def reset(self) -> None:
        """Forget the bucket's state: it starts full again."""
        self.client.delete(self.key)
