"""The systemd units in deploy/ run real postwise commands, with restarts and a clean stop."""

from __future__ import annotations

import configparser
import shlex
from pathlib import Path

import click
import pytest

from postwise.cli import cli
from postwise.ops.heartbeat import PROCESS_KINDS
from postwise.settings import load_settings

UNITS = Path(__file__).parents[2] / "deploy" / "systemd"
SERVICES = sorted(UNITS.glob("*.service"))


def _unit(path: Path) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read(path)
    return parser


def _command(argv: list[str]) -> tuple[click.Command, list[str], str]:
    """Resolve ``postwise a b --opt`` to its click command, checking every option parses."""
    assert argv[0].endswith("/postwise")
    command: click.Command = cli
    args = argv[1:]
    path: list[str] = []
    while isinstance(command, click.Group):
        name, *args = args
        ctx = click.Context(command)
        found = command.get_command(ctx, name)
        assert found is not None, f"`postwise {' '.join([*path, name])}` is not a command"
        path.append(name)
        command = found
    command.make_context(" ".join(path), list(args))  # raises on an unknown option or value
    return command, args, " ".join(path)


@pytest.mark.parametrize("path", SERVICES, ids=lambda p: p.name)
def test_each_unit_runs_a_real_command_and_restarts_and_stops_cleanly(path: Path) -> None:
    service = _unit(path)["Service"]
    for key in ("ExecStartPre", "ExecStart"):
        if key in service:
            argv = shlex.split(service[key].replace("%H", "host").replace("%i", "1"))
            _command(argv)
    assert service["Restart"] in ("always", "on-failure")
    assert service["KillSignal"] == "SIGTERM"
    assert int(service["TimeoutStopSec"]) >= 30
    assert service["EnvironmentFile"] == "/etc/postwise/postwise.env"
    assert service["User"] != "root"


def test_the_units_cover_every_long_running_process() -> None:
    commands = set()
    for path in SERVICES:
        argv = shlex.split(
            _unit(path)["Service"]["ExecStart"].replace("%H", "h").replace("%i", "1")
        )
        commands.add(_command(argv)[2])
    expected = {command.removeprefix("postwise ") for command in PROCESS_KINDS.values()}
    assert commands == expected


def test_the_example_environment_is_ready_for_real_mail() -> None:
    values = {}
    for line in (UNITS / "postwise.env.example").read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            values[key] = value
    settings = load_settings(environ=values, config_file=None)
    assert settings.deployment_problems() == []
