"""``postwise bounces``: classify returned mail (bounces, complaints, auto-replies)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import click

from postwise.compliance.bounces import (
    BounceClassification,
    BounceKind,
    BounceReason,
    classify_message,
)

__all__ = ["bounces"]

_TABLE_COLUMNS = ("file", "kind", "reason", "recipient", "status", "detail")


class UnreadableFilesError(click.ClickException):
    """Some of the files given could not be read; the others were classified."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


@click.group()
def bounces() -> None:
    """Classify bounces, complaints and auto-replies."""


@bounces.command()
@click.argument("files", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per file and line.")
def classify(files: tuple[str, ...], as_json: bool) -> None:
    """Classify each message FILE (raw RFC 5322, as saved from a mailbox).

    Each file gets a kind (hard, soft, block, complaint, auto_reply or unknown), the recipient
    and status code when they could be found, and the reason. The exit status is 1 when a
    file could not be read, 0 otherwise, whatever the kinds.
    """
    rows: list[dict[str, Any]] = []
    unreadable = 0
    for name in files:
        try:
            raw = Path(name).read_bytes()
        except OSError as exc:
            unreadable += 1
            reason = f"could not read the file: {exc.strerror or exc}"
            click.echo(f"error: {name}: {reason}", err=True)
            unread = BounceClassification(
                kind=BounceKind.UNKNOWN, reason=BounceReason.UNREADABLE, explanation=reason
            )
            row: dict[str, Any] = {"file": name, **unread.to_dict()}
        else:
            row = {"file": name, **classify_message(raw).to_dict()}
        if as_json:
            click.echo(json.dumps(row, ensure_ascii=False))
        else:
            rows.append(row)
    if not as_json:
        _print_table(rows)
    if unreadable:
        raise UnreadableFilesError(f"{unreadable} of {len(files)} files could not be read")


def _print_table(rows: list[dict[str, Any]]) -> None:
    cells = [
        {
            "file": row["file"],
            "kind": row["kind"],
            "reason": row["reason"],
            "recipient": row["recipient"] or "-",
            "status": row["status"] or "-",
            "detail": row["diagnostic"] or row["explanation"],
        }
        for row in rows
    ]
    widths = {
        column: max([len(column)] + [len(str(cell[column])) for cell in cells])
        for column in _TABLE_COLUMNS[:-1]
    }
    fixed = sum(widths.values()) + 2 * len(widths)
    detail_width = max(20, shutil.get_terminal_size((120, 24)).columns - fixed)
    header = "  ".join(c.upper().ljust(widths[c]) for c in _TABLE_COLUMNS[:-1])
    click.echo(f"{header}  DETAIL")
    for cell in cells:
        detail = str(cell["detail"])
        if len(detail) > detail_width:
            detail = detail[: detail_width - 1] + "…"
        line = "  ".join(str(cell[c]).ljust(widths[c]) for c in _TABLE_COLUMNS[:-1])
        click.echo(f"{line}  {detail}")
