"""The ``postwise`` command.

Subcommands are loaded lazily from their modules (``postwise.cli.<name>``) so that start-up stays
fast and one subsystem's import cost is paid only by its own commands. Errors that postwise raises
on purpose print one line (``error: ...``) and exit with status 2; no traceback.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from typing import Any

import click

from postwise import __version__
from postwise.errors import PostwiseError

__all__ = ["LazyGroup", "cli", "main"]

#: name -> "module:attribute" of every top-level command.
COMMANDS: dict[str, str] = {
    "serve": "postwise.cli.server:serve",
    "worker": "postwise.cli.server:worker",
    "db": "postwise.cli.db:db",
    "config": "postwise.cli.config:config",
    "plugins": "postwise.cli.plugins:plugins",
    "contacts": "postwise.cli.contacts:contacts",
    "segments": "postwise.cli.segments:segments",
    "apikeys": "postwise.cli.apikeys:apikeys",
    "templates": "postwise.cli.templates:templates",
    "campaigns": "postwise.cli.campaigns:campaigns",
    "demo": "postwise.devtools.demo_command:demo",
    "bench": "postwise.cli.bench:bench",
    "events": "postwise.cli.events:events",
    "metrics": "postwise.cli.metrics:metrics",
    "triggers": "postwise.cli.triggers:triggers",
    "journeys": "postwise.cli.journeys:journeys",
    "experiments": "postwise.cli.experiments:experiments",
    "bounces": "postwise.cli.bounces:bounces",
    "consent": "postwise.cli.compliance:consent",
    "privacy": "postwise.cli.compliance:privacy",
    "reputation": "postwise.cli.compliance:reputation",
    "domain": "postwise.cli.domain:domain",
    "crm": "postwise.cli.crm:crm",
    "recommend": "postwise.cli.recommend:recommend",
    "run": "postwise.cli.run:run",
    "users": "postwise.cli.users:users",
}


class LazyGroup(click.Group):
    """A click group whose subcommands are imported only when used."""

    def __init__(self, *args: Any, lazy_commands: dict[str, str] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.lazy_commands = lazy_commands or {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(super().list_commands(ctx)) | set(self._available()))

    def _available(self) -> list[str]:
        names = []
        for name, target in self.lazy_commands.items():
            module = target.partition(":")[0]
            if importlib.util.find_spec(module) is not None:
                names.append(name)
        return names

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            return command
        target = self.lazy_commands.get(cmd_name)
        if target is None:
            return None
        module_name, _, attr = target.partition(":")
        if importlib.util.find_spec(module_name) is None:
            return None
        loaded: click.Command = getattr(importlib.import_module(module_name), attr)
        return loaded


@click.group(cls=LazyGroup, lazy_commands=COMMANDS)
@click.version_option(__version__, prog_name="postwise")
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False),
    envvar="POSTWISE_CONFIG",
    help="TOML config file (default: ./postwise.toml when present).",
)
@click.pass_context
def cli(ctx: click.Context, config_file: str | None) -> None:
    """postwise: behaviour-triggered email, honest experiments, compliant delivery."""
    ctx.ensure_object(dict)
    ctx.obj["config_file"] = config_file


def main(argv: list[str] | None = None) -> None:
    """Entry point of the ``postwise`` console script."""
    try:
        code = cli.main(args=argv, prog_name="postwise", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("aborted", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except PostwiseError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        sys.exit(130)
    if isinstance(code, int) and code:
        sys.exit(code)
