"""``postwise apikeys``: create, list and revoke API keys."""

from __future__ import annotations

import click

from postwise.apikeys import create_api_key, list_api_keys, revoke_api_key
from postwise.cli.common import emit_json, get_runtime


@click.group()
def apikeys() -> None:
    """API keys for the /v1 endpoints (stored only as hashes)."""


@apikeys.command()
@click.argument("name")
@click.pass_context
def create(ctx: click.Context, name: str) -> None:
    """Create a key called NAME and print it once."""
    runtime = get_runtime(ctx)
    with runtime.session() as session:
        created = create_api_key(session, name)
    click.echo(created.key)
    click.echo(f"API key {name!r} created. It is shown only now; store it safely.", err=True)


@apikeys.command(name="list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def list_(ctx: click.Context, as_json: bool) -> None:
    """List keys by name and prefix (never the secret)."""
    runtime = get_runtime(ctx)
    with runtime.session() as session:
        rows = [
            {
                "name": k.name,
                "prefix": f"pw_{k.prefix}_…",
                "created_at": k.created_at.isoformat(),
                "revoked": k.revoked_at is not None,
            }
            for k in list_api_keys(session)
        ]
    if as_json:
        emit_json(rows)
        return
    for row in rows:
        state = "revoked" if row["revoked"] else "active"
        click.echo(f"{row['name']}\t{row['prefix']}\t{state}\t{row['created_at']}")


@apikeys.command()
@click.argument("name")
@click.pass_context
def revoke(ctx: click.Context, name: str) -> None:
    """Revoke the key called NAME."""
    runtime = get_runtime(ctx)
    with runtime.session() as session:
        revoke_api_key(session, name)
    click.echo(f"API key {name!r} revoked")
