"""The runtime: settings plus the connections and plugins built from them.

One :class:`Runtime` is the root of everything a process needs: the CLI builds one per command,
the server one per app (in its lifespan), a worker one per process. Connections are opened on
first use and closed by :meth:`Runtime.close`.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from functools import cached_property
from typing import TYPE_CHECKING, Any, TypeVar, cast

from postwise.db.engine import create_db_engine, session_scope, upgrade
from postwise.plugins import create_plugin_host
from postwise.redis_client import connect_redis
from postwise.settings import Settings, load_settings

if TYPE_CHECKING:
    import redis
    from sqlalchemy.engine import Engine
    from sqlmodel import Session

    from postwise.plugins import Kind, PluginHost

__all__ = ["Runtime"]

log = logging.getLogger(__name__)

T = TypeVar("T")


class Runtime:
    """Settings, database engine, Redis client and plugin host of one process."""

    def __init__(self, settings: Settings | None = None, *, plugins: PluginHost | None = None):
        self.settings = settings if settings is not None else load_settings()
        if plugins is not None:
            self.__dict__["plugins"] = plugins
        self._shared: dict[Hashable, Any] = {}
        self._closers: list[Callable[[], None]] = []
        self._lock = threading.RLock()

    @cached_property
    def engine(self) -> Engine:
        return create_db_engine(self.settings.resolved_database_url)

    @cached_property
    def redis(self) -> redis.Redis:
        return connect_redis(self.settings.redis_url)

    @cached_property
    def plugins(self) -> PluginHost:

        return create_plugin_host(self.settings)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A database session that commits on success."""
        with session_scope(self.engine) as session:
            yield session

    def migrate(self) -> None:
        """Bring the database schema up to date."""

        upgrade(self.engine)

    def component(self, kind: Kind[T], name: str) -> T:
        """The registered component ``name`` of ``kind`` (:data:`postwise.plugins.PROVIDERS`...);
        an unknown name lists what is installed."""
        return self.plugins.registry(kind).get(name)

    def shared(
        self, key: Hashable, build: Callable[[], T], *, close: Callable[[T], None] | None = None
    ) -> T:
        """The one object this runtime keeps under ``key``, built by ``build()`` on first use.

        This is the one per-runtime cache: pooled providers, CRM connectors, delivery services
        and recommender servings live here, built once per process and thread-safely, and
        ``close`` (when given) is called on the object by :meth:`close`.
        """
        with self._lock:
            if key in self._shared:
                return cast(T, self._shared[key])
            value = build()
            self._shared[key] = value
            if close is not None:
                self._closers.append(lambda: close(value))
            return value

    def on_close(self, closer: Callable[[], None]) -> None:
        """Have :meth:`close` call ``closer`` (before the database and Redis close, so it may
        still use them). Subsystems that build their own clients (CRM connectors) register
        here once."""
        with self._lock:
            if closer not in self._closers:
                self._closers.append(closer)

    def close(self) -> None:
        with self._lock:
            closers, self._closers = self._closers, []
        for closer in reversed(closers):
            try:
                closer()
            except Exception:  # one failing client must not keep the others open
                log.exception("closing %r failed", closer)
        with self._lock:
            self._shared.clear()
        if "engine" in self.__dict__:
            self.engine.dispose()
        if "redis" in self.__dict__:
            self.redis.close()
