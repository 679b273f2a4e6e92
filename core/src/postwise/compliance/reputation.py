"""Sender reputation: rolling bounce and complaint rates, and the automatic pause.

Counters live in Redis, one hash per *stream* — a provider, a sending domain or a recipient
domain — with one field per hour bucket and metric (``<hour>:<metric>``), so reading a stream's
window is a single ``HGETALL`` and every worker on every machine adds to the same numbers. The
metrics are ``sent``, ``delivered``, ``hard`` (hard bounces), ``soft``, ``block`` and
``complaint``, fed by the compliance consumer from the event stream.

Rates over the window (``reputation_window_hours``, default 24 h), with the volume being the
larger of sent and delivered:

* complaint rate = complaints / volume; warn at 0.1 %, pause at 0.3 % (the Gmail and Yahoo limit);
* bounce rate = (hard bounces + blocks) / volume; warn at 2 %, pause at 5 %. A block is the
  receiving side refusing *us*, which is exactly what a pause should react to.

Nothing happens below ``reputation_min_volume``: three complaints out of ten messages say
nothing about a stream. Crossing a pause threshold writes the field ``<scope>:<value>`` of the
Redis hash :data:`PAUSED_KEY` (value: JSON with ``reason``, ``rate``, ``since``...), which the
delivery gate reads before every send, logs a warning and puts a ``reputation_alert`` event on
the stream. The pause holds until an operator resumes the stream (:func:`resume`), which also
starts its counters afresh so the old numbers cannot pause it again at the next bounce.
"""

from __future__ import annotations

import enum
import json
import logging
import time
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from postwise.errors import NotFoundError, ValidationError
from postwise.events import EventEnvelope
from postwise.redis_client import as_text
from postwise.settings import Settings
from postwise.streams.publish import publish

if TYPE_CHECKING:
    import redis

    from postwise.runtime import Runtime

__all__ = [
    "PAUSED_KEY",
    "Metric",
    "Scope",
    "StreamReport",
    "default_sending_domain",
    "evaluate",
    "is_paused",
    "parse_stream",
    "pause",
    "paused_streams",
    "record",
    "report",
    "resume",
]

log = logging.getLogger(__name__)

#: The hash the delivery gate reads: field ``<scope>:<value>`` → JSON describing the pause.
PAUSED_KEY = "postwise:reputation:paused"
_COUNTERS = "postwise:reputation:c:"
_INDEX = "postwise:reputation:streams"
_WARNED = "postwise:reputation:warned:"
_BUCKET_SECONDS = 3600


class Scope(enum.StrEnum):
    PROVIDER = "provider"
    SENDING_DOMAIN = "sending_domain"
    RECIPIENT_DOMAIN = "recipient_domain"


class Metric(enum.StrEnum):
    SENT = "sent"
    DELIVERED = "delivered"
    HARD = "hard"
    SOFT = "soft"
    BLOCK = "block"
    COMPLAINT = "complaint"


#: Metrics that can only make a rate worse; only these trigger an evaluation.
_BAD = frozenset({Metric.HARD, Metric.BLOCK, Metric.COMPLAINT})


def parse_stream(text: str) -> tuple[Scope, str]:
    """Split ``"provider:smtp"`` into its scope and value; bad input raises ValidationError."""
    scope, sep, value = text.partition(":")
    try:
        parsed = Scope(scope)
    except ValueError:
        parsed = None
    if not sep or parsed is None or not value.strip():
        raise ValidationError(
            f"{text!r} is not a stream; write SCOPE:VALUE with SCOPE one of "
            "provider, sending_domain, recipient_domain (for example 'provider:smtp')",
            field="stream",
        )
    value = value.strip()
    if parsed is not Scope.PROVIDER:
        value = value.lower()
    return parsed, value


def _stream_key(scope: Scope, value: str) -> str:
    return f"{scope.value}:{value}"


def default_sending_domain(settings: Settings) -> str | None:
    """The domain postwise sends from: the DKIM domain, else the sender address's domain."""
    if settings.dkim_domain:
        return settings.dkim_domain.lower()
    address = settings.sender.rpartition("<")[2].rstrip(">").strip()
    domain = address.rpartition("@")[2].strip().lower()
    return domain or None


def _streams(
    provider: str | None, sending_domain: str | None, recipient_domain: str | None
) -> list[str]:
    streams = []
    if provider:
        streams.append(_stream_key(Scope.PROVIDER, provider))
    if sending_domain:
        streams.append(_stream_key(Scope.SENDING_DOMAIN, sending_domain.lower()))
    if recipient_domain:
        streams.append(_stream_key(Scope.RECIPIENT_DOMAIN, recipient_domain.lower()))
    return streams


def record(
    runtime: Runtime,
    metric: Metric | str,
    *,
    provider: str | None = None,
    sending_domain: str | None = None,
    recipient_domain: str | None = None,
    count: int = 1,
    at: float | None = None,
) -> list[str]:
    """Count ``count`` occurrences of ``metric`` at time ``at`` (default: now) for each stream
    given; returns the streams that became paused as a result (bad metrics are evaluated at
    once, over the window ending now)."""
    metric = Metric(metric)
    redis_client, settings = runtime.redis, runtime.settings
    now = time.time()
    # Counted in the hour it happened (a consumer catching up must not pile a backlog into
    # the current hour); what is older than the window no longer matters.
    when = now if at is None else min(at, now)
    if when < now - settings.reputation_window_hours * _BUCKET_SECONDS:
        return []
    bucket = int(when // _BUCKET_SECONDS)
    streams = _streams(provider, sending_domain, recipient_domain)
    if not streams:
        return []
    ttl = (settings.reputation_window_hours + 2) * _BUCKET_SECONDS
    pipe = redis_client.pipeline(transaction=False)
    for stream in streams:
        key = _COUNTERS + stream
        pipe.hincrby(key, f"{bucket}:{metric.value}", count)
        pipe.expire(key, ttl)
        pipe.zadd(_INDEX, {stream: now})
    pipe.execute()
    if metric not in _BAD:
        return []
    return [s for s in streams if evaluate(runtime, s, now=now)]


@dataclass(frozen=True, slots=True)
class StreamReport:
    """One stream's numbers over the window, and its pause if any."""

    stream: str
    counts: dict[str, int]
    volume: int
    bounce_rate: float
    complaint_rate: float
    level: str
    paused: dict[str, Any] | None = None
    alerts: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "stream": self.stream,
            "counts": self.counts,
            "volume": self.volume,
            "bounce_rate": self.bounce_rate,
            "complaint_rate": self.complaint_rate,
            "level": self.level,
            "paused": self.paused,
            "alerts": self.alerts,
        }


def _window_counts(
    redis_client: redis.Redis, settings: Settings, stream: str, now: float
) -> dict[str, int]:
    key = _COUNTERS + stream
    raw = redis_client.hgetall(key)
    first = int(now // _BUCKET_SECONDS) - settings.reputation_window_hours + 1
    counts = {m.value: 0 for m in Metric}
    stale: list[bytes | str] = []
    for name, value in raw.items():
        bucket_text, _, metric = as_text(name).partition(":")
        if int(bucket_text) < first:
            stale.append(name)
        elif metric in counts:
            counts[metric] += int(value)
    if stale:
        redis_client.hdel(key, *stale)
    return counts


def _rates(counts: Mapping[str, int]) -> tuple[int, float, float]:
    volume = max(counts[Metric.SENT], counts[Metric.DELIVERED])
    if volume == 0:
        return 0, 0.0, 0.0
    bounces = counts[Metric.HARD] + counts[Metric.BLOCK]
    return volume, bounces / volume, counts[Metric.COMPLAINT] / volume


def _assess(
    settings: Settings, counts: Mapping[str, int]
) -> tuple[str, list[tuple[str, float, float, str]]]:
    """The level (ok, warn, pause) and each crossed threshold as (metric, rate, limit, level)."""
    volume, bounce_rate, complaint_rate = _rates(counts)
    if volume < settings.reputation_min_volume:
        return "ok", []
    crossed = []
    for metric, rate, warn, stop in (
        (
            "complaint",
            complaint_rate,
            settings.reputation_complaint_warn,
            settings.reputation_complaint_pause,
        ),
        ("bounce", bounce_rate, settings.reputation_bounce_warn, settings.reputation_bounce_pause),
    ):
        if rate >= stop:
            crossed.append((metric, rate, stop, "pause"))
        elif rate >= warn:
            crossed.append((metric, rate, warn, "warn"))
    levels = {c[3] for c in crossed}
    return ("pause" if "pause" in levels else "warn" if levels else "ok"), crossed


def evaluate(runtime: Runtime, stream: str, *, now: float | None = None) -> bool:
    """Check ``stream``'s rates; pause it and alert if a pause threshold is crossed, alert once
    per window on a warning. Returns whether this call paused the stream."""
    redis_client, settings = runtime.redis, runtime.settings
    now = time.time() if now is None else now
    counts = _window_counts(redis_client, settings, stream, now)
    _level, crossed = _assess(settings, counts)
    paused_now = False
    volume = _rates(counts)[0]
    for metric, rate, limit, level in crossed:
        if level == "pause":
            reason = (
                f"{metric} rate {rate:.2%} reached the pause threshold {limit:.2%} "
                f"over {volume} messages in {settings.reputation_window_hours} h"
            )
            if _set_paused(
                redis_client,
                stream,
                reason=reason,
                rate=rate,
                now=now,
                extra={"metric": metric, "threshold": limit, "volume": volume},
            ):
                paused_now = True
                _alert(
                    runtime,
                    stream,
                    level="pause",
                    reason=reason,
                    now=now,
                    details={"metric": metric, "rate": rate, "threshold": limit, "volume": volume},
                )
        else:
            warned = redis_client.set(
                f"{_WARNED}{stream}:{metric}",
                "1",
                nx=True,
                ex=settings.reputation_window_hours * _BUCKET_SECONDS,
            )
            if warned:
                reason = f"{metric} rate {rate:.2%} reached the warning threshold {limit:.2%}"
                _alert(
                    runtime,
                    stream,
                    level="warn",
                    reason=reason,
                    now=now,
                    details={"metric": metric, "rate": rate, "threshold": limit, "volume": volume},
                )
    return paused_now


def _set_paused(
    redis_client: redis.Redis,
    stream: str,
    *,
    reason: str,
    rate: float | None,
    now: float,
    extra: Mapping[str, Any] | None = None,
) -> bool:
    value = {
        "reason": reason,
        "rate": rate,
        "since": datetime.fromtimestamp(now, UTC).isoformat(),
        **(extra or {}),
    }
    return bool(redis_client.hsetnx(PAUSED_KEY, stream, json.dumps(value)))


def _alert(
    runtime: Runtime,
    stream: str,
    *,
    level: str,
    reason: str,
    now: float,
    details: Mapping[str, Any],
) -> None:
    scope, _, value = stream.partition(":")
    log.warning("reputation %s for %s: %s", level, stream, reason)
    event = EventEnvelope(
        event_id=f"reputation-{uuid.uuid4().hex}",
        type="reputation_alert",
        occurred_at=datetime.fromtimestamp(now, UTC),
        provider=value if scope == Scope.PROVIDER else None,
        properties={
            "stream": stream,
            "scope": scope,
            "value": value,
            "level": level,
            "reason": reason,
            **details,
        },
    )
    publish(runtime, [event])


def pause(redis_client: redis.Redis, stream: str, *, reason: str, actor: str = "operator") -> bool:
    """Pause ``stream`` by hand (``"provider:smtp"``); returns False if it was paused already."""
    scope, value = parse_stream(stream)
    return _set_paused(
        redis_client,
        _stream_key(scope, value),
        reason=reason,
        rate=None,
        now=time.time(),
        extra={"actor": actor},
    )


def resume(redis_client: redis.Redis, stream: str) -> dict[str, Any]:
    """Lift the pause of ``stream`` and start its counters afresh; returns the lifted pause.

    Raises NotFoundError when the stream is not paused.
    """
    scope, value = parse_stream(stream)
    key = _stream_key(scope, value)
    raw = redis_client.hget(PAUSED_KEY, key)
    if raw is None:
        paused = ", ".join(sorted(paused_streams(redis_client))) or "none"
        raise NotFoundError(f"stream {key!r} is not paused (paused: {paused})")
    pipe = redis_client.pipeline(transaction=True)
    pipe.hdel(PAUSED_KEY, key)
    pipe.delete(_COUNTERS + key)
    for metric in ("bounce", "complaint"):
        pipe.delete(f"{_WARNED}{key}:{metric}")
    pipe.execute()
    log.warning("reputation pause of %s lifted by an operator", key)
    lifted: dict[str, Any] = json.loads(raw)
    return lifted


def paused_streams(redis_client: redis.Redis) -> dict[str, dict[str, Any]]:
    """Every paused stream (``"provider:smtp"``) with the JSON describing its pause."""
    return {
        as_text(name): json.loads(value) for name, value in redis_client.hgetall(PAUSED_KEY).items()
    }


def is_paused(
    redis_client: redis.Redis,
    *,
    provider: str | None = None,
    sending_domain: str | None = None,
    recipient_domain: str | None = None,
) -> str | None:
    """The first paused stream among those given, or ``None`` (what the gate asks)."""
    streams = _streams(provider, sending_domain, recipient_domain)
    if not streams:
        return None
    values = redis_client.hmget(PAUSED_KEY, streams)
    for stream, value in zip(streams, values, strict=True):
        if value is not None:
            return stream
    return None


def report(
    redis_client: redis.Redis,
    settings: Settings,
    *,
    streams: Iterable[str] | None = None,
    now: float | None = None,
) -> list[StreamReport]:
    """Numbers, rates and pause state of every stream active in the window (or ``streams``)."""
    now = time.time() if now is None else now
    paused = paused_streams(redis_client)
    if streams is None:
        since = now - settings.reputation_window_hours * _BUCKET_SECONDS
        redis_client.zremrangebyscore(_INDEX, "-inf", since)
        members: list[bytes | str] = redis_client.zrange(_INDEX, 0, -1)  # type: ignore[assignment]
        names = {as_text(n) for n in members} | set(paused)
    else:
        names = {_stream_key(*parse_stream(s)) for s in streams}
    reports = []
    for name in sorted(names):
        counts = _window_counts(redis_client, settings, name, now)
        volume, bounce_rate, complaint_rate = _rates(counts)
        level, crossed = _assess(settings, counts)
        reports.append(
            StreamReport(
                stream=name,
                counts=counts,
                volume=volume,
                bounce_rate=bounce_rate,
                complaint_rate=complaint_rate,
                level="paused" if name in paused else level,
                paused=paused.get(name),
                alerts=[f"{m} {r:.2%} >= {lim:.2%} ({lvl})" for m, r, lim, lvl in crossed],
            )
        )
    return reports
