"""Settings that cannot send real mail stop the long-running processes; Message-IDs are unique
per installation."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from sqlmodel import Session

from postwise.cli import cli
from postwise.db.engine import create_db_engine, installation_uid, upgrade
from postwise.delivery.message import build_message
from postwise.delivery.services import services_for
from postwise.runtime import Runtime
from postwise.settings import Settings, load_settings

READY = {
    "secret_key": "k" * 40,
    "base_url": "https://mail.example.org",
    "sender": "Example <news@example.org>",
    "postal_address": "Example Ltd, 5 High Street, Leeds LS1 4AP, UK",
}


def test_the_demo_values_are_each_named_with_their_fix() -> None:
    problems = load_settings(environ={}, config_file=None).deployment_problems()
    text = "\n".join(problems)
    assert len(problems) == 4
    for name in ("POSTWISE_SECRET_KEY", "POSTWISE_BASE_URL", "POSTWISE_SENDER"):
        assert name in text
    assert "POSTWISE_POSTAL_ADDRESS" in text


def test_settings_for_real_mail_have_no_problem() -> None:
    assert load_settings(environ={}, config_file=None, **READY).deployment_problems() == []


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ({"base_url": "http://mail.example.org"}, "https://"),
        ({"secret_key": "short"}, "shorter than 32"),
        ({"cdn_base_url": "http://cdn.example.org"}, "cdn_base_url"),
    ],
)
def test_each_unsafe_value_is_a_problem(override: dict[str, str], expected: str) -> None:
    settings = load_settings(environ={}, config_file=None, **{**READY, **override})
    (problem,) = settings.deployment_problems()
    assert expected in problem


@pytest.mark.parametrize(
    "command",
    [
        ["serve", "--no-migrate"],
        ["worker", "--burst"],
        ["events", "collect", "--exit-when-idle", "0.1"],
        ["triggers", "run"],
        ["reputation", "run", "--once"],
        ["crm", "run"],
    ],
    ids=lambda c: " ".join(c[:2]),
)
def test_long_running_processes_refuse_demo_settings_in_production(
    tmp_path: Path, command: list[str]
) -> None:
    env = {"POSTWISE_MODE": "production", "POSTWISE_DATA_DIR": str(tmp_path)}
    result = CliRunner().invoke(cli, command, env=env)
    assert result.exit_code != 0
    assert "cannot send real mail" in result.output
    assert "POSTWISE_SECRET_KEY" in result.output
    assert "POSTWISE_MODE=development" in result.output
    # Refused before anything was created: no generated secret key file.
    assert not (tmp_path / "secret.key").exists()


def test_development_mode_starts_and_says_what_is_missing(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    env = {"POSTWISE_MODE": "development", "POSTWISE_DATA_DIR": str(tmp_path)}
    result = CliRunner().invoke(cli, ["events", "collect", "--exit-when-idle", "0.1"], env=env)
    assert result.exit_code == 0, result.output
    assert "must not send real mail" in caplog.text


def test_message_ids_carry_the_installation(runtime: Runtime) -> None:
    composer = services_for(runtime).composer
    with runtime.session() as session:
        uid = installation_uid(session)
    assert re.fullmatch(r"[0-9a-f]{16}", uid)
    assert composer.installation == uid
    raw = build_message(
        sender="a@example.org",
        recipient="b@example.org",
        subject="s",
        text="t",
        message_id="c1.2.3",
        installation=uid,
    )
    assert f"Message-ID: <c1.2.3.{uid}@example.org>".encode() in raw
    assert b"X-Postwise-Message-Id: c1.2.3\r\n" in raw


def test_two_installations_never_share_message_ids(tmp_path: Path, make_settings: Any) -> None:
    uids = set()
    for name in ("one", "two"):
        engine = create_db_engine(f"sqlite:///{tmp_path / name}.sqlite3")
        upgrade(engine)
        with Session(engine) as session:
            first = installation_uid(session)
            assert installation_uid(session) == first  # stable within an installation
        uids.add(first)
        engine.dispose()
    assert len(uids) == 2


def test_an_emptied_installation_table_gets_a_new_identity(runtime: Runtime) -> None:
    with runtime.session() as session:
        session.execute(sa.text("DELETE FROM installation"))
        session.commit()
        uid = installation_uid(session)
        assert installation_uid(session) == uid


def test_settings_fixture_is_not_production_ready(settings: Settings) -> None:
    # The suite's settings are test values: the check must see that (guards the conftest).
    assert settings.deployment_problems()
