"""``postwise apikeys``: create, list and revoke API keys."""

from __future__ import annotations

from typing import Any

import click

from postwise.apikeys import SCOPES, create_api_key, list_api_keys, revoke_api_key
from postwise.cli.common import emit_json, get_runtime


@click.group()
def apikeys() -> None:
    """API keys for the /v1 endpoints (stored only as hashes)."""


@apikeys.command()
@click.argument("name")
@click.option(
    "--scope",
    "scopes",
    multiple=True,
    type=click.Choice(list(SCOPES)),
    help="What the key may do (repeatable): "
    + "; ".join(f"{name}: {what}" for name, what in SCOPES.items())
    + ". Default: admin.",
)
@click.option(
    "--rate-limit",
    type=click.IntRange(1, 10_000_000),
    default=None,
    help="Requests per minute (default: the server's api_rate_limit_per_minute).",
)
@click.pass_context
def create(ctx: click.Context, name: str, scopes: tuple[str, ...], rate_limit: int | None) -> None:
    """Create a key called NAME and print it once."""
    runtime = get_runtime(ctx)
    with runtime.session() as session:
        created = create_api_key(session, name, scopes=scopes or ("admin",), rate_limit=rate_limit)
    click.echo(created.key)
    click.echo(
        f"API key {name!r} created with scopes {', '.join(created.scopes)}. "
        "It is shown only now; store it safely.",
        err=True,
    )


@apikeys.command(name="list")
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def list_(ctx: click.Context, as_json: bool) -> None:
    """List keys by name and prefix (never the secret)."""
    runtime = get_runtime(ctx)
    with runtime.session() as session:
        rows: list[dict[str, Any]] = [
            {
                "name": k.name,
                "prefix": f"pw_{k.prefix}_…",
                "created_at": k.created_at.isoformat(),
                "revoked": k.revoked_at is not None,
                "scopes": k.scopes.split(","),
                "rate_limit": k.rate_limit,
            }
            for k in list_api_keys(session)
        ]
    if as_json:
        emit_json(rows)
        return
    for row in rows:
        state = "revoked" if row["revoked"] else "active"
        scopes = ",".join(row["scopes"])
        click.echo(f"{row['name']}\t{row['prefix']}\t{state}\t{scopes}\t{row['created_at']}")


@apikeys.command()
@click.argument("name")
@click.pass_context
def revoke(ctx: click.Context, name: str) -> None:
    """Revoke the key called NAME."""
    runtime = get_runtime(ctx)
    with runtime.session() as session:
        revoke_api_key(session, name)
    click.echo(f"API key {name!r} revoked")
