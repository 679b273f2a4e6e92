"""``postwise contacts``: import and inspect contacts."""

from __future__ import annotations

import click

from postwise.cli.common import emit_json, get_runtime
from postwise.contacts.importer import import_contacts


@click.group()
def contacts() -> None:
    """Contacts: import from CSV or JSON lines."""


@contacts.command(name="import")
@click.argument("file", type=click.Path(dir_okay=False))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "jsonl"]),
    default=None,
    help="Default: from the file name (.csv, .jsonl).",
)
@click.option(
    "--skip-invalid",
    is_flag=True,
    help="Import the valid rows and report the invalid ones (default: import nothing "
    "when any row is invalid).",
)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def import_(
    ctx: click.Context, file: str, fmt: str | None, skip_invalid: bool, as_json: bool
) -> None:
    """Import FILE, upserting by normalised email. Re-importing a file changes nothing."""
    runtime = get_runtime(ctx)
    runtime.migrate()
    with runtime.session() as session:
        report = import_contacts(session, file, fmt=fmt, skip_invalid=skip_invalid)
    if as_json:
        emit_json(report.to_dict())
    else:
        for error in report.errors[:50]:
            click.echo(f"{file}: {error}", err=True)
        if len(report.errors) > 50:
            click.echo(f"... and {len(report.errors) - 50} more invalid rows", err=True)
        if report.written:
            click.echo(
                f"imported {report.rows} rows: {report.created} created, {report.updated} "
                f"updated, {report.unchanged} unchanged, {len(report.errors)} skipped"
            )
        else:
            click.echo(
                f"nothing imported: {len(report.errors)} invalid rows; fix them or pass "
                "--skip-invalid",
                err=True,
            )
    if report.errors and not report.written:
        ctx.exit(1)
