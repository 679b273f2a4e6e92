"""``postwise config``: show the effective settings, secrets masked."""

from __future__ import annotations

import click

from postwise.cli.common import emit_json, get_runtime
from postwise.settings import Settings


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def config(ctx: click.Context, as_json: bool) -> None:
    """Print the effective settings (environment over config file over defaults).

    Every setting can be given as POSTWISE_<NAME> in the environment or as <name> in the
    config file's [postwise] table.
    """
    settings = get_runtime(ctx).settings.public_dict()
    if as_json:
        emit_json(settings)
        return
    for name, info in Settings.model_fields.items():
        click.echo(f"POSTWISE_{name.upper()} = {settings[name]!r}")
        if info.description:
            click.echo(f"    {info.description}")
