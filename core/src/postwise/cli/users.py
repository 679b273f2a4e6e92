"""``postwise users``: the people who sign in to the web interface."""

from __future__ import annotations

import click

from postwise.cli.common import emit_json, get_runtime
from postwise.ui.users import create_user, list_users, set_role


@click.group()
def users() -> None:
    """People who sign in to the web interface (/ui); API keys stay for machines."""


@users.command("create")
@click.option("--email", required=True)
@click.option("--password", prompt=True, hide_input=True, confirmation_prompt=True)
@click.option("--role", type=click.Choice(["admin", "editor", "viewer"]), required=True)
@click.pass_context
def create(ctx: click.Context, email: str, password: str, role: str) -> None:
    """Add a user (the password is stored only as a scrypt hash)."""
    runtime = get_runtime(ctx)
    with runtime.session() as session:
        user = create_user(session, email=email, password=password, role=role)
        session.commit()
        click.echo(f"created {user.email} ({user.role})")


@users.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def list_command(ctx: click.Context, as_json: bool) -> None:
    """Every user with their role."""
    runtime = get_runtime(ctx)
    with runtime.session() as session:
        rows = [{"id": u.id, "email": u.email, "role": u.role} for u in list_users(session)]
    if as_json:
        emit_json(rows)
        return
    for row in rows:
        click.echo(f"{row['id']}\t{row['email']}\t{row['role']}")


@users.command("set-role")
@click.argument("user_id", type=int)
@click.argument("role", type=click.Choice(["admin", "editor", "viewer"]))
@click.pass_context
def set_role_command(ctx: click.Context, user_id: int, role: str) -> None:
    """Change a user's role (their sessions end)."""
    runtime = get_runtime(ctx)
    with runtime.session() as session:
        user = set_role(session, user_id, role)
        session.commit()
        click.echo(f"{user.email} is now {user.role}")
