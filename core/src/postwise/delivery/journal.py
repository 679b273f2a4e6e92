"""The attempt journal: what one delivery attempt has handed to its provider, message by message.

The ledger is updated once per batch (one executemany), but a worker can die at any moment in
between. So before each provider call the attempt marks the messages it is about to hand over
(``started``), and after the call it writes each outcome, both to one Redis hash per attempt,
in a single pipelined round trip per call. When a claim expires, recovery reads the dead
attempt's journal:

* an outcome → it is recorded as if the attempt had finished, with everything the provider said
  (a bounce keeps the provider's kind, a deferral its ``retry_after``);
* ``started`` without an outcome → the message is *in doubt*: the provider may or may not have
  accepted it. SMTP cannot tell (RFC 1047), so it is dead-lettered, never sent again: a lost
  message is recorded with its reason, a duplicate could not be taken back;
* nothing → it was never handed over and is sent normally.

A crashed attempt leaves at most ``delivery_chunk_size`` messages in doubt (10 by default; 1
makes it at most one, at the cost of a journal round trip and an SMTP RSET per message).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import redis

from postwise.delivery.provider import BounceKind, Outcome, SendResult

__all__ = ["KEY_PREFIX", "STARTED", "Journal", "JournalEntry", "read_journal"]

KEY_PREFIX = "postwise:delivery:journal:"
STARTED = b"S"


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """What the journal says about one message: ``result`` is None while it is in doubt."""

    message_id: str
    result: SendResult | None


class Journal:
    """The journal of one attempt (token); kept ``ttl`` seconds after its last write."""

    def __init__(self, client: redis.Redis, token: str, *, ttl: int) -> None:
        self.client = client
        self.key = KEY_PREFIX + token
        self.ttl = ttl
        self._expiring = False

    def write(self, results: Sequence[SendResult] = (), *, started: Iterable[str] = ()) -> None:
        """Record ``results`` and mark ``started`` ids as handed over, in one round trip."""
        mapping: dict[str, bytes] = {r.message_id: _encode(r) for r in results}
        mapping.update((message_id, STARTED) for message_id in started)
        if not mapping:
            return
        if self._expiring:
            self.client.hset(self.key, mapping=mapping)  # type: ignore[arg-type]
            return
        # The TTL (set once; the ledger normally holds the outcomes long before it runs out)
        # keeps a journal that nobody settles from staying forever.
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(self.key, mapping=mapping)  # type: ignore[arg-type]
        pipe.expire(self.key, self.ttl)
        pipe.execute()
        self._expiring = True

    def discard(self) -> None:
        """Forget the journal once the ledger holds every outcome."""
        self.client.delete(self.key)


def read_journal(client: redis.Redis, token: str) -> dict[str, JournalEntry]:
    """Everything the attempt ``token`` journaled, by message id."""
    raw: Mapping[bytes, bytes] = client.hgetall(KEY_PREFIX + token)  # type: ignore[assignment]
    entries: dict[str, JournalEntry] = {}
    for key, value in raw.items():
        message_id = key.decode()
        entries[message_id] = JournalEntry(
            message_id, None if value == STARTED else _decode(message_id, value)
        )
    return entries


def _encode(result: SendResult) -> bytes:
    data: dict[str, object] = {
        "o": result.outcome.value,
        "c": result.code,
        "s": result.status,
        "r": result.reason[:500],
        "p": result.provider_message_id,
    }
    # Written only when set: most results have none of them, and entries journaled before these
    # fields existed decode the same way.
    if result.http_status is not None:
        data["h"] = result.http_status
    if result.bounce_kind is not None:
        data["k"] = result.bounce_kind.value
    if result.retry_after is not None:
        data["a"] = result.retry_after
    return json.dumps(data, separators=(",", ":")).encode()


def _decode(message_id: str, value: bytes) -> SendResult:
    data = json.loads(value)
    kind = data.get("k")
    return SendResult(
        message_id=message_id,
        outcome=Outcome(data["o"]),
        code=data.get("c"),
        status=data.get("s"),
        reason=data.get("r") or "",
        provider_message_id=data.get("p"),
        http_status=data.get("h"),
        bounce_kind=BounceKind(kind) if kind is not None else None,
        retry_after=data.get("a"),
    )
