"""``postwise plugins``: what is installed, what it contributes, what failed."""

from __future__ import annotations

import click

from postwise.cli.common import emit_json, get_runtime


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def plugins(ctx: click.Context, as_json: bool) -> None:
    """List plugins with their distribution, version and contributions per kind."""
    description = get_runtime(ctx).plugins.describe()
    if as_json:
        emit_json(description)
        return
    for plugin in description["plugins"]:
        origin = f"{plugin['distribution'] or '?'} {plugin['version'] or ''}".strip()
        click.echo(f"{plugin['name']}  ({origin}, {plugin['module']})")
        for kind, names in plugin["contributes"].items():
            click.echo(f"    {kind}: {', '.join(names)}")
    for failure in description["failed"]:
        click.echo(f"FAILED {failure['name']}: {failure['error']}", err=True)
