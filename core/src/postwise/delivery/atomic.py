"""Atomic read-modify-write on Redis: a Lua script, or WATCH/MULTI where Lua is unavailable.

Real Redis runs the Lua script, which is atomic for every client on every machine. The embedded
stand-in (fakeredis without the optional ``lupa`` package) has no Lua, so the same algorithm runs
as an optimistic transaction instead: WATCH the keys, read, compute, and write in MULTI/EXEC,
retrying when another client changed a watched key in between. Both are correct under
concurrency; the script is simply faster.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Sequence
from typing import Any

import redis
from redis.client import Pipeline

__all__ = ["AtomicScript", "supports_lua"]

_lua_support: weakref.WeakKeyDictionary[redis.Redis, bool] = weakref.WeakKeyDictionary()
_lua_lock = threading.Lock()

#: Reads with ``client`` after the keys are watched (a pipeline of reads is fine: any change to a
#: watched key from then on fails the EXEC and the operation is run again), returns the result
#: and a function that queues the writes on the MULTI pipeline.
Fallback = Callable[
    [redis.Redis, Sequence[str], Sequence[Any]], tuple[Any, Callable[[Pipeline], None]]
]


def supports_lua(client: redis.Redis) -> bool:
    """Whether ``client``'s server runs Lua scripts (real Redis does; fakeredis may not)."""
    with _lua_lock:
        known = _lua_support.get(client)
    if known is not None:
        return known
    try:
        client.eval("return 1", 0)
        supported = True
    except redis.ResponseError as exc:
        if "unknown command" not in str(exc).lower():
            raise
        supported = False
    with _lua_lock:
        _lua_support[client] = supported
    return supported


class AtomicScript:
    """One atomic operation with a Lua implementation and an equivalent WATCH fallback."""

    def __init__(self, lua: str, fallback: Fallback) -> None:
        self.lua = lua
        self.fallback = fallback
        self._scripts: weakref.WeakKeyDictionary[redis.Redis, Any] = weakref.WeakKeyDictionary()

    def __call__(self, client: redis.Redis, keys: Sequence[str], args: Sequence[Any]) -> Any:
        """Run the operation on ``keys`` with ``args``; the result is the Lua script's."""
        if supports_lua(client):
            script = self._scripts.get(client)
            if script is None:
                script = client.register_script(self.lua)
                self._scripts[client] = script
            return script(keys=list(keys), args=list(args))
        with client.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(*keys)
                    result, writes = self.fallback(client, keys, args)
                    pipe.multi()
                    writes(pipe)
                    pipe.execute()
                    return result
                except redis.WatchError:
                    continue
