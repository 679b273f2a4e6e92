"""The attempt journal: what one delivery attempt has handed to its provider, message by message.

The ledger is updated once per batch (one executemany), but a worker can die at any moment in
between. So right before each message is handed over (for SMTP, before its MAIL FROM; for an
HTTP API that takes a batch per request, before the request) the attempt marks it ``started``,
together with the outcomes of the messages before it, in one Redis round trip. When the
attempt's claim expires, or its owner (the worker process, see
:mod:`postwise.delivery.liveness`) is known dead, recovery *fences* the journal and reads it:

* an outcome → it is recorded as if the attempt had finished, with everything the provider said
  (a bounce keeps the provider's kind, a deferral its ``retry_after``, an acceptance its time);
* ``started`` without an outcome → the message is *in doubt*: the provider may or may not have
  accepted it. SMTP cannot tell (RFC 1047), so it is dead-lettered, never sent again: a lost
  message is recorded with its reason, a duplicate could not be taken back;
* nothing → it was never handed over and is sent normally.

Fencing makes that last rule safe even when the attempt is still running (its worker lost
Redis for a while, so its heartbeat lapsed): marking a message ``started`` is refused, atomically,
once the journal is fenced, and the attempt hands nothing over without that mark, so it stops.
A crashed attempt leaves at most one message in doubt per lane (``delivery_concurrency``), the
one being transmitted; with an HTTP provider, the one request in flight per lane.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis
from redis.client import Pipeline

from postwise.delivery.atomic import AtomicScript
from postwise.delivery.provider import BounceKind, Outcome, SendResult

__all__ = [
    "KEY_PREFIX",
    "STARTED",
    "Fenced",
    "Journal",
    "JournalEntry",
    "fence_journal",
    "journal_owners",
    "read_journal",
]

KEY_PREFIX = "postwise:delivery:journal:"
STARTED = b"S"
#: Fields that are not messages (message ids never begin with "~").
_OWNER = "~owner"
_FENCE = "~fenced"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)

# Marks messages started (and records earlier outcomes) unless the journal is fenced.
_START_LUA = """
if redis.call('hexists', KEYS[1], ARGV[2]) == 1 then return 0 end
redis.call('hset', KEYS[1], unpack(ARGV, 3))
redis.call('expire', KEYS[1], ARGV[1])
return 1
"""


def _start_watched(
    client: redis.Redis, keys: Sequence[str], args: Sequence[Any]
) -> tuple[int, Any]:
    if client.hexists(keys[0], args[1]):
        return 0, lambda pipe: None
    pairs = list(args[2:])
    mapping = dict(zip(pairs[0::2], pairs[1::2], strict=True))

    def writes(pipe: Pipeline) -> None:
        pipe.hset(keys[0], mapping=mapping)
        pipe.expire(keys[0], int(args[0]))

    return 1, writes


_START = AtomicScript(_START_LUA, _start_watched)


class Fenced(Exception):
    """The sweeper took the attempt's rows over: it must hand nothing more over."""


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

    def open(self, owner: str | None) -> None:
        """Create the journal before the attempt claims anything, naming its ``owner``.

        The owner is the worker process whose heartbeat says whether the attempt can still
        finish (None for a process that keeps none: then only the claim's lease says so). The
        TTL keeps a journal that nobody settles from staying forever.
        """
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(self.key, _OWNER, owner or "")
        pipe.expire(self.key, self.ttl)
        pipe.execute()

    def write(self, results: Sequence[SendResult] = (), *, started: Iterable[str] = ()) -> None:
        """Record ``results`` and mark ``started`` ids as handed over, in one round trip.

        Raises :class:`Fenced`, writing nothing, when ``started`` is given and the sweeper
        has taken the attempt over.
        """
        flat: list[Any] = []
        for r in results:
            flat += [r.message_id, _encode(r)]
        begun = list(started)
        for message_id in begun:
            flat += [message_id, STARTED]
        if not flat:
            return
        if not begun:
            # Outcomes alone need no fence: recovery has decided already if it fenced.
            pipe = self.client.pipeline(transaction=False)
            pipe.hset(self.key, mapping=dict(zip(flat[0::2], flat[1::2], strict=True)))
            pipe.expire(self.key, self.ttl)
            pipe.execute()
            return
        if not _START(self.client, [self.key], [self.ttl, _FENCE, *flat]):
            raise Fenced(f"the sweeper took over the attempt journaled at {self.key}")

    def discard(self) -> None:
        """Forget the journal once the ledger holds every outcome."""
        self.client.delete(self.key)


def journal_owners(client: redis.Redis, tokens: Sequence[str]) -> dict[str, str | None]:
    """The owner each attempt recorded (None: no journal, or an owner without heartbeat)."""
    if not tokens:
        return {}
    pipe = client.pipeline(transaction=False)
    for token in tokens:
        pipe.hget(KEY_PREFIX + token, _OWNER)
    owners: dict[str, str | None] = {}
    for token, value in zip(tokens, pipe.execute(), strict=True):
        owners[token] = value.decode() if value else None
    return owners


def fence_journal(client: redis.Redis, token: str) -> dict[str, JournalEntry]:
    """Fence the attempt ``token`` (it can start nothing more) and read what it journaled."""
    key = KEY_PREFIX + token
    pipe = client.pipeline(transaction=True)
    pipe.hset(key, _FENCE, "1")
    pipe.expire(key, 3600)
    pipe.hgetall(key)
    raw: Mapping[bytes, bytes] = pipe.execute()[2]
    return _entries(raw)


def read_journal(client: redis.Redis, token: str) -> dict[str, JournalEntry]:
    """Everything the attempt ``token`` journaled, by message id."""
    raw: Mapping[bytes, bytes] = client.hgetall(KEY_PREFIX + token)  # type: ignore[assignment]
    return _entries(raw)


def _entries(raw: Mapping[bytes, bytes]) -> dict[str, JournalEntry]:
    entries: dict[str, JournalEntry] = {}
    for key, value in raw.items():
        message_id = key.decode()
        if message_id.startswith("~"):
            continue
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
    if result.accepted_at is not None:
        data["t"] = (result.accepted_at - _EPOCH) // _MICROSECOND  # exact, unlike a float
    return json.dumps(data, separators=(",", ":")).encode()


def _decode(message_id: str, value: bytes) -> SendResult:
    data = json.loads(value)
    kind = data.get("k")
    at = data.get("t")
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
        accepted_at=_EPOCH + at * _MICROSECOND if at is not None else None,
    )
