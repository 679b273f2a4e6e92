"""The global frequency cap: at most N non-transactional messages per contact per window.

``settings.frequency_cap`` (``"3/24h"``) is shared by campaigns and triggers because it lives in
Redis: one sorted set per contact holds the ids of the messages counted in the window, scored by
the Redis server's clock. Checking and counting is one atomic script call for a whole page of
contacts, so two dispatchers racing for the same contact's last slot cannot both win. Counting
is idempotent per message id: submitting the same message again does not use a second slot.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.client import Pipeline

from postwise.delivery.atomic import AtomicScript
from postwise.errors import ConfigurationError
from postwise.redis_client import as_text

__all__ = ["KEY_PREFIX", "FrequencyCap", "parse_frequency_cap"]

KEY_PREFIX = "postwise:fcap:"

_CAP_RE = re.compile(r"^\s*(\d+)\s*/\s*(\d*)\s*(s|m|h|d)\s*$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_DISABLED = {"", "0", "off", "none"}

# KEYS: one sorted set per contact. ARGV[1]: limit, ARGV[2]: window in seconds, ARGV[2 + i]:
# the message id counted against KEYS[i]. Returns 1 (allowed, counted) or 0 per key.
_COUNT_LUA = """
local limit = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local result = {}
for i, key in ipairs(KEYS) do
  local member = ARGV[i + 2]
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  if redis.call('ZSCORE', key, member) then
    result[i] = 1
  elseif redis.call('ZCARD', key) < limit then
    redis.call('ZADD', key, now, member)
    redis.call('EXPIRE', key, math.ceil(window))
    result[i] = 1
  else
    result[i] = 0
  end
end
return result
"""


def _count_watched(
    client: redis.Redis, keys: Sequence[str], args: Sequence[Any]
) -> tuple[Any, Callable[[Pipeline], None]]:
    limit, window = int(args[0]), float(args[1])
    members = [str(m) for m in args[2:]]
    now = time.time()
    reads = client.pipeline(transaction=False)
    for key in keys:
        reads.zrangebyscore(key, now - window, "+inf")
    current: dict[str, set[str]] = {}
    for key, found in zip(keys, reads.execute(), strict=True):
        current[key] = {as_text(m) for m in found}
    result: list[int] = []
    adds: list[tuple[str, str]] = []
    for key, member in zip(keys, members, strict=True):
        counted = current[key]
        if member in counted:
            result.append(1)
        elif len(counted) < limit:
            counted.add(member)
            adds.append((key, member))
            result.append(1)
        else:
            result.append(0)

    def write(multi: Pipeline) -> None:
        for key in set(keys):
            multi.zremrangebyscore(key, "-inf", now - window)
        for key, member in adds:
            multi.zadd(key, {member: now})
            multi.expire(key, math.ceil(window))

    return result, write


_COUNT = AtomicScript(_COUNT_LUA, _count_watched)


def parse_frequency_cap(text: str) -> tuple[int, float] | None:
    """``"3/24h"`` as (3, 86400.0); ``""``, ``"0"`` or ``"off"`` as None (no cap)."""
    if text.strip().lower() in _DISABLED:
        return None
    match = _CAP_RE.match(text)
    if not match:
        raise ConfigurationError(
            f"frequency_cap {text!r} is not a cap; write COUNT/WINDOW such as '3/24h', "
            "'1/d' or '10/7d' (units s, m, h, d), or 'off'"
        )
    count, multiplier, unit = match.groups()
    window = _UNIT_SECONDS[unit] * (int(multiplier) if multiplier else 1)
    if int(count) < 1 or window <= 0:
        raise ConfigurationError(f"frequency_cap {text!r}: the count and window must be positive")
    return int(count), float(window)


@dataclass(frozen=True, slots=True)
class FrequencyCap:
    """The cap: ``limit`` messages per contact in any ``window_seconds``."""

    limit: int
    window_seconds: float

    @classmethod
    def from_setting(cls, text: str) -> FrequencyCap | None:
        parsed = parse_frequency_cap(text)
        return None if parsed is None else cls(*parsed)

    def count(self, client: redis.Redis, entries: Sequence[tuple[int, str]]) -> list[bool]:
        """Count ``(contact_id, message_id)`` pairs against the cap, atomically, in order.

        Returns, per pair, whether the message fits (and was counted). A message id already
        counted for its contact fits again without using another slot.
        """
        if not entries:
            return []
        keys = [f"{KEY_PREFIX}{contact_id}" for contact_id, _ in entries]
        args: list[Any] = [self.limit, repr(self.window_seconds)]
        args.extend(message_id for _, message_id in entries)
        return [bool(flag) for flag in _COUNT(client, keys, args)]

    def used(self, client: redis.Redis, contact_id: int) -> int:
        """How many messages count against ``contact_id`` right now."""
        low = time.time() - self.window_seconds
        return int(client.zcount(f"{KEY_PREFIX}{contact_id}", low, "+inf"))
