"""The schema: migrations produce exactly the models, on SQLite and on PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from postwise.db.engine import create_db_engine, session_scope, upgrade
from postwise.db.models import Contact, Message, SQLModel


def _diff(url: str) -> list[object]:
    engine = create_db_engine(url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            return list(compare_metadata(context, SQLModel.metadata))
    finally:
        engine.dispose()


def test_migrations_match_the_models_on_sqlite(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.sqlite3'}"
    engine = create_db_engine(url)
    upgrade(engine)
    upgrade(engine)  # idempotent
    engine.dispose()
    assert _diff(url) == []


def test_migrations_match_the_models_on_postgresql(pg_url: str) -> None:
    assert _diff(pg_url) == []


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_contact_email_and_message_id_are_unique(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    if backend == "sqlite":
        url = f"sqlite:///{tmp_path / 'u.sqlite3'}"
        engine = create_db_engine(url)
        upgrade(engine)
    else:
        engine = create_db_engine(request.getfixturevalue("pg_url"))
    with session_scope(engine) as session:
        session.add(Contact(email="a@example.com"))
    with pytest.raises(sa.exc.IntegrityError), session_scope(engine) as session:
        session.add(Contact(email="a@example.com"))
    with session_scope(engine) as session:
        session.add(Message(id="m1", provider="smtp"))
    with pytest.raises(sa.exc.IntegrityError), session_scope(engine) as session:
        session.add(Message(id="m1", provider="smtp"))
    engine.dispose()
