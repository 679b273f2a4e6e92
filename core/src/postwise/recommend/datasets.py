"""Interaction files evaluated without loading them into the database (``--dataset PATH``).

Two formats are read:

**CSV** — a file ``interactions.csv`` (or any ``*.csv`` given directly) with a header row and
the columns ``contact_id`` (integer), ``item_id`` and optionally ``weight`` (positive number,
default 1), ``type`` (an event type, weighted like events: ``--weight``) and ``timestamp``
(seconds since 1970, or ISO 8601). Items come from ``items.jsonl`` beside it, one item per line
as ``POST /v1/items`` takes it (``{"id", "title", "attributes"}``; ``url`` optional), or
``items.csv`` (``id``, ``title`` and any further columns as attributes; values holding ``|``
become lists). Without an item file, every item id seen is an item titled by its id.

**RecBole atomic files** — a directory (or its ``.inter`` file) holding ``NAME.inter`` and
optionally ``NAME.item``, tab-separated with typed headers (``user_id:token``,
``item_id:token``, ``timestamp:float``, ``movie_title:token_seq`` ...), as RecBole's datasets
ship (MovieLens 100k comes inside the ``recbole`` wheel). Users become contacts, each row one
interaction of weight 1 (a rating column is ignored: email platforms see views and purchases,
not ratings). The item file's first field with ``title`` or ``name`` in its name is the title;
the other fields become attributes, ``token_seq`` fields as lists of words.

Errors name the file and line.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from postwise.errors import ValidationError
from postwise.recommend.base import Interaction, Item

__all__ = ["Dataset", "load_dataset"]


@dataclass(frozen=True)
class Dataset:
    """A catalogue and its interactions, read from files."""

    name: str
    items: list[Item]
    interactions: list[Interaction]


def load_dataset(path: Path, weights: Mapping[str, float] | None = None) -> Dataset:
    """Read a dataset directory or file in one of the formats above."""
    if not path.exists():
        raise ValidationError(f"{path} does not exist", field="dataset")
    if path.is_dir():
        inter = sorted(path.glob("*.inter"))
        if inter:
            return _recbole(inter[0])
        csv_path = path / "interactions.csv"
        if csv_path.exists():
            return _csv(csv_path, weights)
        raise ValidationError(
            f"{path} holds neither a RecBole NAME.inter file nor interactions.csv",
            field="dataset",
        )
    if path.suffix == ".inter":
        return _recbole(path)
    if path.suffix == ".csv":
        return _csv(path, weights)
    raise ValidationError(
        f"{path}: give a directory, an interactions .csv file or a RecBole .inter file",
        field="dataset",
    )


def _url(item_id: str) -> str:
    return f"https://dataset.invalid/items/{item_id}"


def _time(value: str, where: str) -> datetime | None:
    value = value.strip()
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ValidationError(
                f"{where}: timestamp {value!r} is neither seconds nor ISO 8601", field="dataset"
            ) from None
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)
    if not math.isfinite(seconds):
        raise ValidationError(f"{where}: timestamp {value!r} is not finite", field="dataset")
    return datetime.fromtimestamp(seconds, UTC)


def _contact(value: str, where: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise ValidationError(
            f"{where}: contact id {value!r} is not a whole number", field="dataset"
        ) from None


def _csv(path: Path, weights: Mapping[str, float] | None) -> Dataset:
    interactions: list[Interaction] = []
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        fields = set(reader.fieldnames or ())
        if not {"contact_id", "item_id"} <= fields:
            raise ValidationError(
                f"{path}: the header must name contact_id and item_id (found: "
                f"{', '.join(sorted(fields)) or 'nothing'})",
                field="dataset",
            )
        for line, row in enumerate(reader, start=2):
            where = f"{path}:{line}"
            weight = 1.0
            if row.get("weight"):
                try:
                    weight = float(row["weight"])
                except ValueError:
                    weight = math.nan
                if not (math.isfinite(weight) and weight > 0):
                    raise ValidationError(
                        f"{where}: weight {row['weight']!r} is not a positive number",
                        field="dataset",
                    )
            if "type" in fields and weights is not None:
                type_weight = weights.get(row.get("type") or "")
                if type_weight is None:
                    continue
                weight *= type_weight
            item_id = (row.get("item_id") or "").strip()
            if not item_id:
                raise ValidationError(f"{where}: item_id is empty", field="dataset")
            interactions.append(
                Interaction(
                    _contact(row["contact_id"], where),
                    item_id,
                    weight,
                    _time(row.get("timestamp") or "", where),
                )
            )
    items = _items_beside(path, interactions)
    return Dataset(
        path.stem if path.name != "interactions.csv" else path.parent.name, items, interactions
    )


def _items_beside(path: Path, interactions: list[Interaction]) -> list[Item]:
    jsonl, items_csv = path.parent / "items.jsonl", path.parent / "items.csv"
    items: list[Item] = []
    if jsonl.exists():
        with jsonl.open(encoding="utf-8") as handle:
            for line, text in enumerate(handle, start=1):
                if not text.strip():
                    continue
                try:
                    entry = json.loads(text)
                    item_id = str(entry["id"])
                except (ValueError, KeyError, TypeError):
                    raise ValidationError(
                        f"{jsonl}:{line}: not a JSON object with an id", field="dataset"
                    ) from None
                if entry.get("active", True) is False:
                    continue
                items.append(
                    Item(
                        item_id,
                        str(entry.get("title") or item_id),
                        str(entry.get("url") or _url(item_id)),
                        entry.get("image_url"),
                        dict(entry.get("attributes") or {}),
                    )
                )
    elif items_csv.exists():
        with items_csv.open(newline="", encoding="utf-8") as handle:
            for row in csv.DictReader(handle):
                item_id = (row.pop("id", "") or "").strip()
                if not item_id:
                    continue
                title = row.pop("title", "") or item_id
                attributes: dict[str, Any] = {
                    name: (value.split("|") if "|" in value else value)
                    for name, value in row.items()
                    if name and value
                }
                items.append(Item(item_id, title, _url(item_id), None, attributes))
    else:
        seen: dict[str, None] = {}
        for interaction in interactions:
            seen.setdefault(interaction.item_id, None)
        items = [Item(item_id, item_id, _url(item_id)) for item_id in sorted(seen)]
    return items


def _recbole_rows(path: Path) -> tuple[list[tuple[str, str]], list[list[str]]]:
    with path.open(encoding="utf-8", errors="replace") as handle:
        header = handle.readline().rstrip("\n").split("\t")
        fields = [
            tuple(column.split(":", 1)) if ":" in column else (column, "token") for column in header
        ]
        rows = [line.rstrip("\n").split("\t") for line in handle if line.strip()]
    return [(str(name), str(kind)) for name, kind in fields], rows


def _recbole(path: Path) -> Dataset:
    fields, rows = _recbole_rows(path)
    names = [name for name, _ in fields]
    if "user_id" not in names or "item_id" not in names:
        raise ValidationError(
            f"{path}: a RecBole .inter file needs user_id and item_id columns", field="dataset"
        )
    user, item = names.index("user_id"), names.index("item_id")
    stamp = names.index("timestamp") if "timestamp" in names else None
    interactions = []
    for line, row in enumerate(rows, start=2):
        where = f"{path}:{line}"
        if len(row) != len(names):
            raise ValidationError(
                f"{where}: {len(row)} fields where the header has {len(names)}", field="dataset"
            )
        at = _time(row[stamp], where) if stamp is not None else None
        interactions.append(Interaction(_contact(row[user], where), row[item], 1.0, at))
    item_file = path.with_suffix(".item")
    items: list[Item] = []
    if item_file.exists():
        item_fields, item_rows = _recbole_rows(item_file)
        item_names = [name for name, _ in item_fields]
        id_column = item_names.index("item_id")
        title_column = next(
            (i for i, n in enumerate(item_names) if "title" in n or "name" in n), None
        )
        for row in item_rows:
            item_id = row[id_column]
            attributes: dict[str, Any] = {}
            for index, (name, kind) in enumerate(item_fields):
                if index in (id_column, title_column) or index >= len(row) or not row[index]:
                    continue
                attributes[name] = row[index].split() if kind == "token_seq" else row[index]
            title = row[title_column] if title_column is not None and row[title_column] else item_id
            items.append(Item(item_id, title, _url(item_id), None, attributes))
    else:
        items = [Item(i, i, _url(i)) for i in sorted({x.item_id for x in interactions})]
    return Dataset(path.stem, items, interactions)
