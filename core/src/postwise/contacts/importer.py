"""Bulk contact import from CSV or JSON lines.

Two passes: every row is parsed and validated first, and nothing is written when any row is bad
(unless ``skip_invalid``); then contacts are upserted by normalised email in chunks inside one
transaction. Re-importing the same file changes nothing: rows equal to what is stored are left
untouched (``updated_at`` included).

CSV columns: ``email`` (required), ``first_name``, ``last_name``, ``timezone``, ``country``,
``status``, ``tags`` (separated by ``;``) and ``attributes.<name>`` for custom attributes.
JSON lines: one object per line with the same keys, ``tags`` a list and ``attributes`` an object.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from pydantic import ValidationError as PydanticValidationError
from sqlalchemy.dialects.postgresql import ARRAY
from sqlmodel import Session, col

from postwise.contacts.service import ContactData
from postwise.db.models import Contact, ContactStatus, ContactTag, utcnow
from postwise.errors import ValidationError

__all__ = ["ImportReport", "RowError", "import_contacts"]

CSV_COLUMNS = frozenset(
    {"email", "first_name", "last_name", "timezone", "country", "status", "tags"}
)
_FIELDS = ("first_name", "last_name", "timezone", "country", "status")
CHUNK = 1000
CONTACTS: sa.Table = Contact.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class RowError:
    row: int
    message: str

    def __str__(self) -> str:
        return f"row {self.row}: {self.message}"


@dataclass(slots=True)
class ImportReport:
    rows: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    errors: list[RowError] = field(default_factory=list)
    written: bool = False
    #: Rows that asked to change the status of an unsubscribed, bounced or complained contact;
    #: the status was kept.
    status_kept: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "created": self.created,
            "updated": self.updated,
            "unchanged": self.unchanged,
            "invalid": len(self.errors),
            "errors": [{"row": e.row, "message": e.message} for e in self.errors],
            "written": self.written,
            "status_kept": self.status_kept,
        }


def _decoded_lines(raw: bytes, errors: list[RowError]) -> Iterator[tuple[int, str]]:
    """Physical lines with their numbers; undecodable lines are reported and left out."""
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    for number, line in enumerate(raw.splitlines(keepends=True), start=1):
        try:
            yield number, line.decode("utf-8")
        except UnicodeDecodeError as exc:
            errors.append(
                RowError(number, f"not valid UTF-8 (byte {exc.start + 1}); save the file as UTF-8")
            )


def _validate(record: dict[str, Any], row: int, errors: list[RowError]) -> ContactData | None:
    try:
        return ContactData.model_validate(record)
    except PydanticValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"]) or "row"
            if err["type"] == "extra_forbidden":
                problems.append(f"unknown column {where!r}")
            else:
                problems.append(f"{where}: {err['msg'].removeprefix('Value error, ')}")
        errors.append(RowError(row, "; ".join(problems)))
        return None


def _parse_csv(
    raw: bytes, errors: list[RowError], skip_invalid: bool
) -> Iterator[tuple[int, ContactData]]:
    lines = list(_decoded_lines(raw, errors))
    position = {"line": 0}

    def feed() -> Iterator[str]:
        for number, text in lines:
            position["line"] = number
            yield text

    reader = csv.reader(feed())
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        return
    except csv.Error as exc:
        errors.append(RowError(position["line"], f"malformed CSV: {exc}"))
        return
    unknown = [h for h in header if h not in CSV_COLUMNS and not h.startswith("attributes.")]
    if "email" not in header:
        errors.append(RowError(1, "the header has no 'email' column"))
        return
    if unknown:
        errors.append(
            RowError(
                1,
                f"unknown column(s) {', '.join(map(repr, unknown))}; known: "
                f"{', '.join(sorted(CSV_COLUMNS))}, attributes.<name>",
            )
        )
        if not skip_invalid:
            return
    while True:
        try:
            values = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            errors.append(RowError(position["line"], f"malformed CSV: {exc}"))
            continue
        row = position["line"]
        if not any(v.strip() for v in values):
            continue
        if len(values) != len(header):
            errors.append(RowError(row, f"has {len(values)} fields, the header has {len(header)}"))
            continue
        record: dict[str, Any] = {}
        attributes: dict[str, Any] = {}
        for name, original in zip(header, values, strict=True):
            value = original.strip()
            if name in unknown or value == "":
                continue
            if name.startswith("attributes."):
                attributes[name.removeprefix("attributes.")] = value
            elif name == "tags":
                record["tags"] = value.split(";")
            else:
                record[name] = value
        if attributes:
            record["attributes"] = attributes
        data = _validate(record, row, errors)
        if data is not None:
            yield row, data


def _parse_jsonl(raw: bytes, errors: list[RowError]) -> Iterator[tuple[int, ContactData]]:
    for row, text in _decoded_lines(raw, errors):
        if not text.strip():
            continue
        try:
            record = json.loads(text)
        except json.JSONDecodeError as exc:
            errors.append(RowError(row, f"not valid JSON: {exc.msg}"))
            continue
        if not isinstance(record, dict):
            errors.append(RowError(row, "each line must be a JSON object"))
            continue
        data = _validate(record, row, errors)
        if data is not None:
            yield row, data


def import_contacts(
    session: Session,
    path: str | Path,
    *,
    fmt: str | None = None,
    skip_invalid: bool = False,
    source: str = "import",
) -> ImportReport:
    """Import ``path``; on any bad row nothing is written unless ``skip_invalid``."""
    path = Path(path)
    fmt = fmt or {".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}.get(
        path.suffix.lower()
    )
    if fmt not in ("csv", "jsonl"):
        raise ValidationError(
            f"cannot tell the format of {path.name!r}; name it .csv or .jsonl, or pass --format",
            field="format",
        )
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise ValidationError(f"cannot read {str(path)!r}: {exc.strerror}", field="file") from None
    report = ImportReport()
    errors = report.errors
    parsed = _parse_csv(raw, errors, skip_invalid) if fmt == "csv" else _parse_jsonl(raw, errors)
    by_email: dict[str, ContactData] = {}
    for _row, data in parsed:
        report.rows += 1
        by_email[data.email] = data  # a later row for the same address wins
    report.rows += len({e.row for e in errors if fmt == "jsonl" or e.row > 1})
    errors.sort(key=lambda e: e.row)
    if errors and not skip_invalid:
        return report
    rows = list(by_email.values())
    for start in range(0, len(rows), CHUNK):
        _write_chunk(session, rows[start : start + CHUNK], report)
    session.flush()
    report.written = True
    return report


def _write_chunk(session: Session, chunk: Sequence[ContactData], report: ImportReport) -> None:
    emails = [d.email for d in chunk]
    # Plain rows, not ORM objects: a 100,000-row import must not fill the session's identity map.
    existing = {
        row.email: row
        for row in session.execute(
            sa.select(
                *(CONTACTS.c[name] for name in ("id", "email", "attributes", *_FIELDS))
            ).where(_one_of(session, CONTACTS.c.email, emails))
        )
    }
    now = utcnow()
    inserts: list[dict[str, Any]] = []
    updates: list[dict[str, Any]] = []
    for data in chunk:
        current = existing.get(data.email)
        if current is None:
            values: dict[str, Any] = {
                "email": data.email,
                "attributes": data.attributes or {},
                "created_at": now,
                "updated_at": now,
                "engagement_score": 0.0,
                "timezone": data.timezone or "UTC",
                "status": data.status or "active",
            }
            for name in ("first_name", "last_name", "country"):
                values[name] = getattr(data, name)
            inserts.append(values)
            continue
        change: dict[str, Any] = {}
        for name in _FIELDS:
            value = getattr(data, name)
            if value is not None and getattr(current, name) != value:
                change[name] = value
        if "status" in change and current.status != ContactStatus.ACTIVE:
            # An import never undoes an unsubscribe, bounce or complaint (see upsert_contact).
            del change["status"]
            report.status_kept += 1
        if data.attributes:
            merged = {**current.attributes, **data.attributes}
            if merged != current.attributes:
                change["attributes"] = merged
        if change:
            updates.append({"b_id": current.id, **change, "updated_at": now})
        else:
            report.unchanged += 1
    ids: dict[str, int] = {email: c.id for email, c in existing.items() if c.id is not None}
    if inserts:
        ids.update(_insert_contacts(session, inserts))
        report.created += len(inserts)
    for update in updates:
        # Updates differ in their columns, so each is its own statement; re-imports are rare
        # and small next to first imports.
        values = {k: v for k, v in update.items() if k != "b_id"}
        session.execute(sa.update(CONTACTS).where(CONTACTS.c.id == update["b_id"]).values(values))
    report.updated += len(updates)
    existed = {row.id for row in existing.values()}
    _write_tags(session, chunk, ids, report, existed - {u["b_id"] for u in updates})


def _write_tags(
    session: Session,
    chunk: Sequence[ContactData],
    ids: dict[str, int],
    report: ImportReport,
    unchanged_ids: set[int | None],
) -> None:
    tagged = [(ids[d.email], d.tags) for d in chunk if d.tags is not None]
    if not tagged:
        return
    contact_ids = [cid for cid, _ in tagged]
    current: dict[int, set[str]] = {cid: set() for cid in contact_ids}
    for cid, tag in session.execute(
        sa.select(col(ContactTag.contact_id), col(ContactTag.tag)).where(
            _one_of(session, col(ContactTag.contact_id), contact_ids)
        )
    ):
        current[cid].add(tag)
    additions: list[dict[str, Any]] = []
    for cid, tags in tagged:
        wanted = set(tags or ())
        if wanted == current[cid]:
            continue
        stale = current[cid] - wanted
        if stale:
            session.execute(
                sa.delete(ContactTag).where(
                    col(ContactTag.contact_id) == cid, col(ContactTag.tag).in_(stale)
                )
            )
        additions.extend({"contact_id": cid, "tag": t} for t in wanted - current[cid])
        if cid in unchanged_ids:
            # A tag-only change on an existing contact counts as an update.
            report.updated += 1
            report.unchanged -= 1
    if additions:
        if _is_postgresql(session):
            _copy_rows(session, "contact_tag", ("contact_id", "tag"), additions)
        else:
            session.execute(sa.insert(ContactTag), additions)


def _is_postgresql(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def _one_of(session: Session, column: Any, values: Sequence[Any]) -> Any:
    """``column IN values``; on PostgreSQL one array parameter (``= ANY(%s)``) rather than a
    thousand, whose statement text psycopg would have to parse on every chunk."""
    if _is_postgresql(session):
        element_type = sa.Integer() if values and isinstance(values[0], int) else sa.String()
        return column == sa.any_(sa.bindparam(None, list(values), type_=ARRAY(element_type)))
    return column.in_(values)


def _copy_rows(
    session: Session, table: str, columns: Sequence[str], rows: Sequence[dict[str, Any]]
) -> None:
    """COPY rows into ``table`` on the session's own connection (inside its transaction).

    psycopg parses the text of every statement it sends; a 1,000-row multi-VALUES INSERT costs
    it far more than the database's work, while COPY streams rows without any statement text.
    """
    raw = session.connection().connection.driver_connection
    assert raw is not None
    with raw.cursor() as cursor:
        column_list = ", ".join(columns)
        with cursor.copy(f"COPY {table} ({column_list}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row([row[c] for c in columns])


def _insert_contacts(session: Session, rows: Sequence[dict[str, Any]]) -> dict[str, int]:
    """Insert new contacts; return their ids by email."""
    if not _is_postgresql(session):
        result = session.execute(
            sa.insert(CONTACTS).returning(CONTACTS.c.id, CONTACTS.c.email), rows
        )
        return {email: cid for cid, email in result}
    columns = tuple(rows[0])
    encoded = [{**row, "attributes": json.dumps(row["attributes"])} for row in rows]
    _copy_rows(session, "contact", columns, encoded)
    emails = [row["email"] for row in rows]
    found = session.execute(
        sa.select(CONTACTS.c.id, CONTACTS.c.email).where(_one_of(session, CONTACTS.c.email, emails))
    )
    return {email: cid for cid, email in found}
