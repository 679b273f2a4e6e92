"""Cooldowns: at most one firing per trigger and contact per cooldown, enforced in Redis.

A claim is ``SET key <event id> NX PX <cooldown>`` on ``…:cd:<trigger>:<contact>``. Whoever sets
it fires; everyone else is held — two workers seeing two events at once fire once. The value is
the event id so that the same event, read again after a crash, recognises its own claim and
finishes what it started instead of being held by itself. A trigger without a cooldown still
claims ``…:ev:<trigger>:<event>`` for a day, which de-duplicates repeated deliveries of one event.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass

import redis

__all__ = [
    "EVENT_DEDUPE_SECONDS",
    "Claim",
    "ClaimOutcome",
    "TriggerKeys",
    "claim_many",
    "peek",
    "release",
]

#: How long a trigger without cooldown remembers an event id it fired for.
EVENT_DEDUPE_SECONDS = 24 * 3600


@dataclass(frozen=True, slots=True)
class TriggerKeys:
    """The Redis keys of the trigger subsystem, under one namespace."""

    namespace: str = "postwise:triggers"

    def cooldown(self, trigger_id: int, contact_id: int) -> str:
        return f"{self.namespace}:cd:{trigger_id}:{contact_id}"

    def event(self, trigger_id: int, event_id: str) -> str:
        return f"{self.namespace}:ev:{trigger_id}:{event_id}"

    def stats(self, trigger_id: int) -> str:
        return f"{self.namespace}:stats:{trigger_id}"

    @property
    def engine_stats(self) -> str:
        return f"{self.namespace}:stats:engine"

    @property
    def scheduled(self) -> str:
        return f"{self.namespace}:scheduled"

    @property
    def scheduled_data(self) -> str:
        return f"{self.namespace}:scheduled:data"

    @property
    def invalid(self) -> str:
        return f"{self.namespace}:invalid"

    @property
    def version(self) -> str:
        return f"{self.namespace}:version"


class ClaimOutcome(enum.Enum):
    CLAIMED = "claimed"
    #: The key holds this very event id: a re-read of an event already (partly) processed.
    OWN = "own"
    HELD = "held"


@dataclass(frozen=True, slots=True)
class Claim:
    key: str
    event_id: str
    ttl_ms: int


def claim_many(client: redis.Redis, claims: Sequence[Claim]) -> list[ClaimOutcome]:
    """Claim every key in one atomic round trip; the outcome of each, in order."""
    if not claims:
        return []
    pipe = client.pipeline(transaction=True)
    for claim in claims:
        pipe.set(claim.key, claim.event_id, nx=True, px=claim.ttl_ms)
        pipe.get(claim.key)
    replies = pipe.execute()
    outcomes = []
    for index, claim in enumerate(claims):
        if replies[2 * index]:
            outcomes.append(ClaimOutcome.CLAIMED)
        elif _text(replies[2 * index + 1]) == claim.event_id:
            outcomes.append(ClaimOutcome.OWN)
        else:
            outcomes.append(ClaimOutcome.HELD)
    return outcomes


def release(client: redis.Redis, key: str, event_id: str) -> bool:
    """Delete ``key`` if ``event_id`` still holds it (a compare-and-delete under WATCH)."""
    with client.pipeline(transaction=True) as pipe:
        for _attempt in range(5):
            try:
                pipe.watch(key)
                if _text(pipe.get(key)) != event_id:
                    pipe.unwatch()
                    return False
                pipe.multi()
                pipe.delete(key)
                pipe.execute()
                return True
            except redis.WatchError:
                continue
    return False


def peek(client: redis.Redis, key: str) -> tuple[str | None, int]:
    """Who holds ``key`` and for how many more milliseconds (``(None, 0)`` when free)."""
    pipe = client.pipeline(transaction=False)
    pipe.get(key)
    pipe.pttl(key)
    value, ttl = pipe.execute()
    if value is None:
        return None, 0
    return _text(value), max(int(ttl), 0)


def _text(value: bytes | str | None) -> str | None:
    if value is None:
        return None
    return value.decode() if isinstance(value, bytes) else value
