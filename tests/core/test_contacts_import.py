"""Contact import: row-numbered errors, all-or-nothing by default, idempotent re-import."""

from __future__ import annotations

import json
from pathlib import Path

import sqlalchemy as sa
from click.testing import CliRunner

from postwise.cli import cli
from postwise.contacts.importer import import_contacts
from postwise.db.models import Contact, ContactTag
from postwise.runtime import Runtime


def _count(runtime: Runtime) -> int:
    with runtime.session() as session:
        return int(session.execute(sa.select(sa.func.count()).select_from(Contact)).scalar_one())


def _write(tmp_path: Path, name: str, content: bytes | str) -> Path:
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


GOOD_AND_BAD = (
    "email,first_name,timezone,tags,attributes.plan\n"
    "Ann@Example.COM ,Ann,Europe/Paris,vip;beta,pro\n"
    "not-an-email,Bob,UTC,,free\n"
    "cy@example.org,Cy,Mars/Olympus,,free\n"
    "dee@example.net,Dee,UTC,,free\n"
)


def test_bad_rows_are_reported_with_row_numbers_and_nothing_is_written(
    runtime: Runtime, tmp_path: Path
) -> None:
    path = _write(tmp_path, "c.csv", GOOD_AND_BAD)
    with runtime.session() as session:
        report = import_contacts(session, path)
    assert not report.written
    assert [(e.row, "email" in e.message or "time zone" in e.message) for e in report.errors] == [
        (3, True),
        (4, True),
    ]
    assert "Mars/Olympus" in report.errors[1].message
    assert _count(runtime) == 0


def test_skip_invalid_imports_the_rest_and_normalises_emails(
    runtime: Runtime, tmp_path: Path
) -> None:
    path = _write(tmp_path, "c.csv", GOOD_AND_BAD)
    with runtime.session() as session:
        report = import_contacts(session, path, skip_invalid=True)
    assert report.written and report.created == 2 and len(report.errors) == 2
    with runtime.session() as session:
        ann = session.execute(
            sa.select(Contact).where(Contact.email == "ann@example.com")
        ).scalar_one()
        assert ann.attributes == {"plan": "pro"}
        assert ann.timezone == "Europe/Paris"
        tags = set(
            session.execute(
                sa.select(ContactTag.tag).where(ContactTag.contact_id == ann.id)
            ).scalars()
        )
        assert tags == {"vip", "beta"}


def test_reimporting_the_same_file_changes_nothing(runtime: Runtime, tmp_path: Path) -> None:
    path = _write(
        tmp_path, "c.csv", "email,first_name,tags\na@example.com,A,x;y\nb@example.com,B,\n"
    )
    with runtime.session() as session:
        first = import_contacts(session, path)
    with runtime.session() as session:
        stamps = dict(session.execute(sa.select(Contact.email, Contact.updated_at)).all())
    with runtime.session() as session:
        second = import_contacts(session, path)
    assert (first.created, second.created, second.updated, second.unchanged) == (2, 0, 0, 2)
    with runtime.session() as session:
        assert dict(session.execute(sa.select(Contact.email, Contact.updated_at)).all()) == stamps


def test_a_changed_row_updates_only_that_contact(runtime: Runtime, tmp_path: Path) -> None:
    with runtime.session() as session:
        import_contacts(
            session,
            _write(tmp_path, "a.csv", "email,first_name\na@example.com,A\nb@example.com,B\n"),
        )
    with runtime.session() as session:
        report = import_contacts(
            session,
            _write(tmp_path, "b.csv", "email,first_name\na@example.com,Alice\nb@example.com,B\n"),
        )
    assert (report.created, report.updated, report.unchanged) == (0, 1, 1)


def test_unknown_columns_and_bad_encoding_are_reported(runtime: Runtime, tmp_path: Path) -> None:
    path = _write(tmp_path, "c.csv", b"email,shoe_size\na@example.com,44\nb\xff@example.com,40\n")
    with runtime.session() as session:
        report = import_contacts(session, path)
    messages = {e.row: e.message for e in report.errors}
    assert "unknown column(s) 'shoe_size'" in messages[1]
    assert "not valid UTF-8" in messages[3]
    assert _count(runtime) == 0


def test_json_lines_import_with_attributes_and_unknown_keys(
    runtime: Runtime, tmp_path: Path
) -> None:
    lines = [
        {"email": "j@example.com", "attributes": {"ltv": 120.5}, "tags": ["a"]},
        {"email": "k@example.com", "favourite_colour": "blue"},
        "not json",
    ]
    text = "\n".join(x if isinstance(x, str) else json.dumps(x) for x in lines) + "\n"
    path = _write(tmp_path, "c.jsonl", text)
    with runtime.session() as session:
        report = import_contacts(session, path, skip_invalid=True)
    assert report.created == 1
    assert {e.row for e in report.errors} == {2, 3}
    assert "unknown column 'favourite_colour'" in report.errors[0].message


def test_cli_import_exit_code_and_json_report(
    runtime: Runtime, tmp_path: Path, monkeypatch
) -> None:
    settings = runtime.settings
    monkeypatch.setenv("POSTWISE_DATABASE_URL", settings.resolved_database_url)
    monkeypatch.setenv("POSTWISE_DATA_DIR", str(settings.data_dir))
    path = _write(tmp_path, "c.csv", GOOD_AND_BAD)
    runner = CliRunner()
    failed = runner.invoke(cli, ["contacts", "import", str(path)], standalone_mode=True)
    assert failed.exit_code == 1
    assert "row 3" in failed.output
    ok = runner.invoke(cli, ["contacts", "import", str(path), "--skip-invalid", "--json"])
    assert ok.exit_code == 0, ok.output
    assert json.loads(ok.output.strip().splitlines()[-1])["created"] == 2


def test_import_never_resubscribes_an_unsubscribed_contact(
    runtime: Runtime, tmp_path: Path
) -> None:
    with runtime.session() as session:
        session.add(Contact(email="gone@example.com", status="unsubscribed"))
    path = _write(tmp_path, "c.csv", "email,status,first_name\ngone@example.com,active,Gone\n")
    with runtime.session() as session:
        report = import_contacts(session, path)
    assert report.status_kept == 1
    assert report.updated == 1  # the name still changed
    with runtime.session() as session:
        contact = session.execute(sa.select(Contact)).scalar_one()
        assert (contact.status, contact.first_name) == ("unsubscribed", "Gone")
