"""Delayed sends: held in Redis until due, then re-checked against exit conditions.

A trigger with a delay does not hand delivery a send for later: it records a scheduled send —
member ``<dedupe key>`` of the sorted set ``…:scheduled`` scored by its due time, payload in the
hash ``…:scheduled:data`` — and the engine, when the send comes due, evaluates the trigger's exit
conditions as of then ("purchased since the cart was abandoned") and only then submits it. Keeping
the decision in the trigger engine keeps delivery free of trigger logic.

Claiming due sends is crash-safe: a claim pushes the member's score a lease into the future, so a
consumer that dies while handling it leaves it to come due again; submitting is idempotent (the
dedupe key), so handling it twice sends once.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import redis

from postwise.triggers.conditions import TriggerEvent
from postwise.triggers.cooldown import TriggerKeys

__all__ = ["ScheduledSend", "claim_due", "finish", "has_due", "pending_count", "schedule"]


@dataclass(frozen=True, slots=True)
class ScheduledSend:
    """A delayed send of ``trigger_id`` for ``event``, due at ``due``."""

    dedupe_key: str
    trigger_id: int
    event: TriggerEvent
    due: datetime
    #: The claim key (cooldown or event key) to release if delivery refuses the send.
    claim_key: str

    def to_json(self) -> str:
        return json.dumps(
            {
                "trigger_id": self.trigger_id,
                "due": self.due.isoformat(),
                "claim_key": self.claim_key,
                "event": {
                    "event_id": self.event.event_id,
                    "type": self.event.type,
                    "contact_id": self.event.contact_id,
                    "occurred_at": self.event.occurred_at.isoformat(),
                    "properties": dict(self.event.properties),
                },
            },
            separators=(",", ":"),
            default=str,
        )

    @classmethod
    def from_json(cls, dedupe_key: str, raw: str | bytes) -> ScheduledSend:
        data: Mapping[str, Any] = json.loads(raw)
        event = data["event"]
        return cls(
            dedupe_key=dedupe_key,
            trigger_id=int(data["trigger_id"]),
            due=datetime.fromisoformat(data["due"]),
            claim_key=str(data.get("claim_key", "")),
            event=TriggerEvent(
                event_id=str(event["event_id"]),
                type=str(event["type"]),
                contact_id=int(event["contact_id"]),
                occurred_at=datetime.fromisoformat(event["occurred_at"]),
                properties=event.get("properties") or {},
            ),
        )


def _ms(moment: datetime) -> int:
    return int(moment.astimezone(UTC).timestamp() * 1000)


def schedule(pipe: Any, keys: TriggerKeys, send: ScheduledSend) -> None:
    """Queue the commands recording ``send`` on ``pipe``; recording it twice changes nothing."""
    pipe.hsetnx(keys.scheduled_data, send.dedupe_key, send.to_json())
    pipe.zadd(keys.scheduled, {send.dedupe_key: _ms(send.due)}, nx=True)


def has_due(client: redis.Redis, keys: TriggerKeys, *, now: datetime) -> bool:
    """Whether any scheduled send is due (one cheap read, no lock)."""
    return bool(client.zrangebyscore(keys.scheduled, "-inf", _ms(now), start=0, num=1))


def claim_due(
    client: redis.Redis,
    keys: TriggerKeys,
    *,
    now: datetime,
    limit: int,
    lease_ms: int,
) -> list[ScheduledSend]:
    """Claim up to ``limit`` due sends for ``lease_ms``; each is handled by one consumer."""
    now_ms = _ms(now)
    with client.pipeline(transaction=True) as pipe:
        while True:
            try:
                pipe.watch(keys.scheduled)
                members: list[Any] = list(
                    pipe.zrangebyscore(keys.scheduled, "-inf", now_ms, start=0, num=limit)
                )
                if not members:
                    pipe.unwatch()
                    return []
                pipe.multi()
                pipe.zadd(keys.scheduled, dict.fromkeys(members, now_ms + lease_ms), xx=True)
                pipe.hmget(keys.scheduled_data, members)
                _, payloads = pipe.execute()
                break
            except redis.WatchError:
                continue
    sends = []
    for member, payload in zip(members, payloads, strict=True):
        key = member.decode() if isinstance(member, bytes) else str(member)
        if payload is None:
            # Data lost (never written or removed by hand): nothing can be sent.
            client.zrem(keys.scheduled, member)
            continue
        sends.append(ScheduledSend.from_json(key, payload))
    return sends


def finish(pipe: Any, keys: TriggerKeys, send: ScheduledSend) -> None:
    """Queue the commands forgetting a handled send on ``pipe``."""
    pipe.zrem(keys.scheduled, send.dedupe_key)
    pipe.hdel(keys.scheduled_data, send.dedupe_key)


def pending_count(client: redis.Redis, keys: TriggerKeys) -> int:
    return int(client.zcard(keys.scheduled))
