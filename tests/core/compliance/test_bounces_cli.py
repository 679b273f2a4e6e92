"""``postwise bounces classify``, driven through click's test runner."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner

from postwise.cli.bounces import bounces

CORPUS = Path(__file__).parent / "fixtures" / "bounces"


def test_json_mode_prints_one_object_per_file_and_line() -> None:
    files = [str(CORPUS / "postfix-user-unknown.eml"), str(CORPUS / "rfc5965-b2-full-arf.eml")]
    result = CliRunner().invoke(bounces, ["classify", "--json", *files])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert [(r["file"], r["kind"], r["recipient"]) for r in rows] == [
        (files[0], "hard", "bob@example.net"),
        (files[1], "complaint", "user@example.com"),
    ]
    assert rows[0]["status"] == "5.1.1"
    assert (rows[0]["reason"], rows[1]["reason"]) == ("user_unknown", "feedback")
    assert {"diagnostic", "explanation"} <= rows[0].keys()


def test_a_missing_file_is_reported_and_only_it_fails(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope.eml")
    present = str(CORPUS / "postfix-mailbox-full.eml")
    result = CliRunner().invoke(bounces, ["classify", "--json", missing, present])
    assert result.exit_code == 1
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert rows[0]["file"] == missing and rows[0]["kind"] == "unknown"
    assert rows[0]["reason"] == "unreadable"
    assert "could not read" in rows[0]["explanation"]
    assert rows[1]["kind"] == "soft"
    assert f"error: {missing}: could not read" in result.stderr


def test_an_unclassifiable_file_is_not_an_error(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.eml"
    garbage.write_bytes(b"\x00\xff\xfe")
    result = CliRunner().invoke(bounces, ["classify", "--json", str(garbage)])
    assert result.exit_code == 0
    assert json.loads(result.output)["kind"] == "unknown"


def test_table_mode_shows_a_readable_row_per_file() -> None:
    result = CliRunner().invoke(
        bounces,
        ["classify", str(CORPUS / "gmail-dsn-no-such-user.eml"), str(CORPUS / "exim-quota.eml")],
    )
    assert result.exit_code == 0, result.output
    header, *rows = result.output.splitlines()
    assert header.split() == ["FILE", "KIND", "REASON", "RECIPIENT", "STATUS", "DETAIL"]
    assert "hard" in rows[0] and "wendy@example.com" in rows[0] and "5.1.1" in rows[0]
    assert "soft" in rows[1] and "nina@example.com" in rows[1]


def test_classify_needs_at_least_one_file() -> None:
    result = CliRunner().invoke(bounces, ["classify"])
    assert result.exit_code == 2
    assert "Missing argument" in result.output
