"""``postwise db``: schema migrations."""

from __future__ import annotations

import click

from postwise.cli.common import get_runtime


@click.group()
def db() -> None:
    """Database schema management."""


@db.command()
@click.pass_context
def upgrade(ctx: click.Context) -> None:
    """Apply every pending migration (SQLite or PostgreSQL)."""
    runtime = get_runtime(ctx)
    runtime.migrate()
    click.echo(
        f"database is up to date ({runtime.engine.url.render_as_string(hide_password=True)})"
    )
