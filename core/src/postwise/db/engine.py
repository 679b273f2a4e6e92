"""Database engines and sessions for SQLite (embedded) and PostgreSQL (production)."""

from __future__ import annotations

import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import Connection, Engine
from sqlmodel import Session

from postwise.db.models import Installation

__all__ = [
    "create_db_engine",
    "id_in",
    "installation_uid",
    "is_sqlite",
    "session_scope",
    "upgrade",
]

_MIGRATIONS = Path(__file__).with_name("migrations")


def is_sqlite(engine: Engine) -> bool:
    return engine.dialect.name == "sqlite"


def create_db_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for ``url``; SQLite gets WAL, foreign keys and a busy timeout."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
    if url.startswith("sqlite"):
        path = url.split("///", 1)[-1]
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(url, connect_args={"timeout": 30}, **kwargs)

        @sa.event.listens_for(engine, "connect")
        def _pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.close()

        return engine
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 10)
    kwargs.setdefault("pool_pre_ping", True)
    return sa.create_engine(url, **kwargs)


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = Session(engine, expire_on_commit=False)
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def alembic_config(engine: Engine) -> Any:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine, revision: str = "heads") -> None:
    """Bring the schema up to ``revision`` (all heads by default)."""
    from alembic import command

    command.upgrade(alembic_config(engine), revision)


def installation_uid(session: Session) -> str:
    """This installation's random identity, made once per database (by migration 0013).

    A database whose row was removed (tables emptied by hand) gets a new identity here; two
    processes racing to make it agree on whichever row was stored first.
    """
    row = session.get(Installation, 1)
    if row is not None:
        return row.uid
    try:
        with session.begin_nested():
            session.add(Installation(id=1, uid=secrets.token_hex(8)))
    except sa.exc.IntegrityError:
        pass
    session.commit()
    stored = session.get(Installation, 1, populate_existing=True)
    assert stored is not None
    return stored.uid


def id_in(column: Any, values: Sequence[Any], connection: Connection) -> Any:
    """``column IN (values)``; on PostgreSQL ``column = ANY(array)``, one parameter for all."""
    if connection.dialect.name == "postgresql":
        return column == sa.any_(sa.bindparam(None, list(values), type_=ARRAY(column.type)))
    return column.in_(list(values))
