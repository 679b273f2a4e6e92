"""The postwise pytest plugin: fixtures for testing postwise and its plugins anywhere.

Installing postwise registers this module with pytest (the ``pytest11`` entry point
``postwise.testing.plugin``), so a plugin's own tests, in a repository of their own, get:

* ``settings`` / ``make_settings(**overrides)``: settings on this test's own database and Redis;
* ``runtime``: a :class:`~postwise.runtime.Runtime` on them, every installed plugin loaded;
* ``client``: a Litestar test client on the full app, authenticated with a fresh API key
  (``api_key``); webhook routes ignore the key;
* ``use_plugin(module, name)``: register a plugin module on ``runtime`` for this test, when its
  entry point is not installed (a plugin tested from its source tree);
* ``fake_server(server)``: start a local fake (a :class:`~postwise.testing.http.
  ScriptedHttpServer` subclass speaking a vendor's API, or :class:`~postwise.testing.smtp.
  FaultySmtpServer`) and stop it after the test; ``smtp_server`` is a started fault-injecting
  SMTP server.

Storage, chosen by environment as in this repository's CI:

* by default (no servers): a migrated SQLite file copied per test and an in-process Redis
  stand-in, so ``pip install`` and ``pytest`` are all a plugin's tests need;
* ``POSTWISE_TEST_DATABASE_URL=postgresql://...`` (an admin URL: each test session creates a
  database of its own and drops it at the end) and ``POSTWISE_TEST_REDIS_URL=redis://...``
  (each session claims a database number 1-15 of its own, atomically, in db 0).

A project that merely has postwise installed and defines fixtures of the same names in its own
conftest keeps its own (conftest fixtures override plugin ones); ``-p no:postwise.testing.plugin``
switches the plugin off.
"""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Protocol, TypeVar

import pytest
import redis
import sqlalchemy as sa
from litestar.testing import TestClient

from postwise.apikeys import create_api_key
from postwise.db.engine import create_db_engine, upgrade
from postwise.db.models import SQLModel
from postwise.runtime import Runtime
from postwise.server.app import create_app
from postwise.settings import Settings, load_settings
from postwise.testing.smtp import FaultySmtpServer

__all__ = ["MakeSettings", "Startable"]

REDIS_URL = os.environ.get("POSTWISE_TEST_REDIS_URL", "")
DATABASE_URL = os.environ.get("POSTWISE_TEST_DATABASE_URL", "")
REAL_REDIS_URL = REDIS_URL or "redis://127.0.0.1:6379"
PG_ADMIN_URL = (
    DATABASE_URL
    if DATABASE_URL.startswith("postgresql")
    else "postgresql://postgres@127.0.0.1:5432/postgres"
)
#: The secret key of test settings (never a production one).
TEST_SECRET_KEY = "test-secret-key-not-for-production"  # noqa: S105 - tests only


class MakeSettings(Protocol):
    """The ``make_settings`` fixture: settings for this test, with overrides."""

    def __call__(self, **overrides: Any) -> Settings: ...


class Startable(Protocol):
    """A local fake server: ``start()`` returns it listening, ``stop()`` releases it."""

    def start(self) -> Any: ...

    def stop(self) -> None: ...


S = TypeVar("S", bound=Startable)


# -- Redis --------------------------------------------------------------------------------------


def _claim_redis_db() -> tuple[int, redis.Redis]:
    """Claim a Redis database number (1-15) for this session; released at the end.

    A claim names its process; a claim whose process on this machine has died (a test run that
    was killed) is taken over, so killed runs never exhaust the fifteen numbers.
    """
    admin = redis.Redis.from_url(REAL_REDIS_URL)
    token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    for number in range(1, 16):
        key = f"postwise:test-db-claim:{number}"
        if admin.set(key, token, nx=True, ex=3 * 3600):
            return number, admin
        holder = admin.get(key)
        text = holder.decode(errors="replace") if isinstance(holder, bytes) else holder
        if text is not None and _claim_is_stale(str(text)):
            with admin.pipeline() as pipe:
                try:
                    pipe.watch(key)
                    if pipe.get(key) == holder:
                        pipe.multi()
                        pipe.set(key, token, ex=3 * 3600)
                        pipe.execute()
                        return number, admin
                except redis.WatchError:
                    continue
    raise RuntimeError("all 15 Redis test databases are claimed by live test runs")


def _claim_is_stale(holder: str) -> bool:
    """A claim made on this machine by a process that no longer exists."""
    parts = holder.split(":")
    if len(parts) != 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    try:
        os.kill(int(parts[1]), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


@pytest.fixture(scope="session")
def redis_db() -> Iterator[int]:
    """A real Redis database number of this session's own."""
    number, admin = _claim_redis_db()
    try:
        yield number
    finally:
        redis.Redis.from_url(REAL_REDIS_URL, db=number).flushdb()
        admin.delete(f"postwise:test-db-claim:{number}")


@pytest.fixture
def real_redis_url(redis_db: int) -> Iterator[str]:
    """A real Redis database of this session's own, emptied before each test."""
    client = redis.Redis.from_url(REAL_REDIS_URL, db=redis_db)
    client.flushdb()
    yield f"{REAL_REDIS_URL.rstrip('/')}/{redis_db}"
    client.close()


@pytest.fixture
def real_redis(real_redis_url: str) -> Iterator[redis.Redis]:
    """A client of :func:`real_redis_url`."""
    client = redis.Redis.from_url(real_redis_url)
    yield client
    client.close()


@pytest.fixture
def redis_url(request: pytest.FixtureRequest) -> str:
    """Redis of this test: a real one in the real-servers mode, else a fresh stand-in."""
    if REDIS_URL:
        url: str = request.getfixturevalue("real_redis_url")
        return url
    return f"fakeredis://test-{uuid.uuid4().hex}"


# -- databases ----------------------------------------------------------------------------------


def _driver(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


def _create_pg_database() -> str:
    name = f"postwise_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(_driver(PG_ADMIN_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


def _drop_pg_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    admin = sa.create_engine(_driver(PG_ADMIN_URL), isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _truncate_all(url: str) -> None:
    engine = create_db_engine(url)
    tables = ", ".join(f'"{t.name}"' for t in SQLModel.metadata.sorted_tables)
    with engine.begin() as connection:
        connection.execute(sa.text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()


@pytest.fixture(scope="session")
def pg_session_url() -> Iterator[str]:
    """A migrated PostgreSQL database of this session's own."""
    url = _create_pg_database()
    engine = create_db_engine(url)
    upgrade(engine)
    engine.dispose()
    try:
        yield url
    finally:
        _drop_pg_database(url)


@pytest.fixture
def pg_url(pg_session_url: str) -> str:
    """This session's PostgreSQL database, emptied before the test."""
    _truncate_all(pg_session_url)
    return pg_session_url


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file that each test copies, so migrations run once per session."""
    path = tmp_path_factory.mktemp("sqlite-template") / "postwise.sqlite3"
    engine = create_db_engine(f"sqlite:///{path}")
    upgrade(engine)
    engine.dispose()
    return path


@pytest.fixture
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The database of this test: PostgreSQL in the real-servers mode, else a SQLite copy."""
    if DATABASE_URL.startswith("postgresql"):
        url: str = request.getfixturevalue("pg_url")
        return url
    template: Path = request.getfixturevalue("sqlite_template")
    target = tmp_path / "db" / "postwise.sqlite3"
    target.parent.mkdir()
    shutil.copy(template, target)
    return f"sqlite:///{target}"


# -- settings, runtime, client ------------------------------------------------------------------


@pytest.fixture
def make_settings(tmp_path: Path, database_url: str, redis_url: str) -> MakeSettings:
    """Build settings for this test's database and Redis, with overrides."""

    def make(**overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "data_dir": tmp_path / "data",
            "database_url": database_url,
            "redis_url": redis_url,
            "secret_key": TEST_SECRET_KEY,
            # Test values (an http base URL, example senders): long-running commands run on
            # them as they would on a developer's machine.
            "mode": "development",
        }
        values.update(overrides)
        return load_settings(environ={}, config_file=None, **values)

    return make


@pytest.fixture
def settings(make_settings: MakeSettings) -> Settings:
    """This test's settings; override the fixture to configure a plugin."""
    return make_settings()


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    """A runtime on this test's (migrated) database and Redis, with every plugin loaded."""
    rt = Runtime(settings)
    yield rt
    rt.close()


@pytest.fixture
def api_key(runtime: Runtime) -> str:
    """A fresh API key of the test runtime."""
    with runtime.session() as session:
        return create_api_key(session, f"test-{uuid.uuid4().hex[:6]}").key


@pytest.fixture
def client(runtime: Runtime, api_key: str) -> Iterator[TestClient[Any]]:
    """A Litestar test client on the full app, authenticated with a fresh API key."""
    app = create_app(runtime=runtime)
    with TestClient(app=app, raise_server_exceptions=False) as test_client:
        test_client.headers["Authorization"] = f"Bearer {api_key}"
        yield test_client


@pytest.fixture
def use_plugin(runtime: Runtime) -> Iterator[Callable[[object, str], None]]:
    """Register a plugin module (or object) on ``runtime`` under a name, for this test.

    Does nothing for a name already loaded (its entry point is installed); what it registered
    is unregistered after the test. Request it before ``client`` so the app sees the plugin's
    routes.
    """
    added: list[str] = []

    def use(plugin: object, name: str) -> None:
        if runtime.plugins.pm.get_plugin(name) is None:
            assert runtime.plugins.register(plugin, name), f"plugin {name} was not registered"
            added.append(name)

    yield use
    for name in reversed(added):
        runtime.plugins.unregister(name)


# -- fake servers -------------------------------------------------------------------------------


@pytest.fixture
def fake_server() -> Iterator[Callable[[S], S]]:
    """Start a local fake server for this test; it is stopped after the test."""
    started: list[Startable] = []

    def start(server: S) -> S:
        server.start()
        started.append(server)
        return server

    yield start
    for server in reversed(started):
        server.stop()


@pytest.fixture
def smtp_server(fake_server: Callable[[FaultySmtpServer], FaultySmtpServer]) -> FaultySmtpServer:
    """A started fault-injecting SMTP server (see :mod:`postwise.testing.smtp`)."""
    return fake_server(FaultySmtpServer())
