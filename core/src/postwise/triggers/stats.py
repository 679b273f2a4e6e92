"""Per-trigger counters in Redis, for explaining what a trigger did.

Each trigger has a hash ``…:stats:<trigger id>`` of counters:

``matched``     the conditions held for an event
``fired``       a send was accepted by delivery (queued), now or when a delayed send came due
``scheduled``   a delayed send was scheduled (it later counts as fired, exited or cancelled)
``cooldown``    held by the trigger's cooldown for that contact
``capped``      delivery refused it under the global frequency cap
``skipped``     delivery refused it for another reason (unsubscribed, suppressed, no consent…)
``exited``      a delayed send was cancelled by the trigger's exit conditions
``cancelled``   a delayed send came due after the trigger was paused or deleted
``duplicates``  the same event id was seen again and ignored
``errors``      a condition raised, or delivery rejected the request as invalid
``invalid``     an event (or a due send) the trigger could not evaluate: its definition does
                not compile on the engine's host (a condition plugin not installed there, its
                campaign cancelled)

The engine adds a batch's counts and acknowledges the batch's stream entries in one Redis
transaction, so a crash never counts a batch it will process again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from typing import Any

import redis

from postwise.ops.metrics import TRIGGER_COUNTS
from postwise.redis_client import as_text
from postwise.triggers.cooldown import TriggerKeys

__all__ = ["COUNTERS", "StatsBatch", "read_stats", "reset_stats"]

COUNTERS = (
    "matched",
    "fired",
    "scheduled",
    "cooldown",
    "capped",
    "skipped",
    "exited",
    "cancelled",
    "duplicates",
    "errors",
    "invalid",
)


class StatsBatch:
    """Counts gathered while processing one batch, written with one HINCRBY per counter."""

    def __init__(self, keys: TriggerKeys) -> None:
        self.keys = keys
        self.counts: Counter[tuple[int, str]] = Counter()
        self.engine: Counter[str] = Counter()

    def add(self, trigger_id: int, counter: str, amount: int = 1) -> None:
        self.counts[(trigger_id, counter)] += amount

    def add_engine(self, counter: str, amount: int = 1) -> None:
        self.engine[counter] += amount

    def get(self, trigger_id: int, counter: str) -> int:
        return self.counts[(trigger_id, counter)]

    def write(self, pipe: Any) -> None:
        """Queue the increments on ``pipe`` (a Redis pipeline)."""
        for (trigger_id, counter), amount in self.counts.items():
            if amount:
                pipe.hincrby(self.keys.stats(trigger_id), counter, amount)
                TRIGGER_COUNTS.labels(counter).inc(amount)
        for counter, amount in self.engine.items():
            if amount:
                pipe.hincrby(self.keys.engine_stats, counter, amount)


def read_stats(
    client: redis.Redis, keys: TriggerKeys, trigger_ids: Iterable[int]
) -> dict[int, dict[str, int]]:
    """Every counter (zeros included) of each trigger."""
    ids = list(trigger_ids)
    pipe = client.pipeline(transaction=False)
    for trigger_id in ids:
        pipe.hgetall(keys.stats(trigger_id))
    result: dict[int, dict[str, int]] = {}
    for trigger_id, raw in zip(ids, pipe.execute(), strict=True):
        values = {as_text(k): int(v) for k, v in raw.items()}
        result[trigger_id] = {name: values.get(name, 0) for name in COUNTERS}
    return result


def reset_stats(client: redis.Redis, keys: TriggerKeys, trigger_id: int) -> None:
    client.delete(keys.stats(trigger_id))
