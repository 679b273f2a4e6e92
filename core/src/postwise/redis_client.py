"""Redis connections: a real server, or the in-process stand-in for the embedded defaults."""

from __future__ import annotations

import threading
from typing import Any

import redis

__all__ = ["as_text", "connect_redis"]

_fake_servers: dict[str, Any] = {}
_lock = threading.Lock()


def as_text(value: bytes | str | int | float) -> str:
    """A Redis reply (bytes unless the client decodes) as text."""
    return value.decode() if isinstance(value, bytes) else str(value)


def connect_redis(url: str, *, decode_responses: bool = False) -> redis.Redis:
    """A client for ``url``. ``fakeredis://NAME`` gives an in-process server shared by every
    client in this process that uses the same URL, so the API, the trigger engine and in-process
    RQ workers see the same streams and queues without any server running."""
    if url.startswith("fakeredis://"):
        import fakeredis

        with _lock:
            server = _fake_servers.get(url)
            if server is None:
                server = fakeredis.FakeServer()
                _fake_servers[url] = server
        return fakeredis.FakeRedis(server=server, decode_responses=decode_responses)
    return redis.Redis.from_url(url, decode_responses=decode_responses)
