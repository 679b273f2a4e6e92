"""The item catalogue and the interactions recommenders learn from, as stored data.

Items live in the ``item`` table (:class:`postwise.db.models.CatalogueItem`), written through
``POST /v1/items``. Interactions are not a table of their own: they are the product events the
event pipeline already stores (``event`` rows) whose properties carry ``item_id``, for example
``{"type": "purchase", "contact_id": 7, "properties": {"item_id": "sku-42"}}``. Each event type
counts with a weight (:data:`DEFAULT_EVENT_WEIGHTS`); events of other types are ignored.

:func:`iter_interactions` lets the database sum the weights per (contact, item) and streams the
pairs, so training memory grows with distinct pairs, not with events.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import MappingProxyType
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from postwise.db.models import CatalogueItem, Event
from postwise.errors import ValidationError
from postwise.recommend.base import Interaction, Item
from postwise.recommend.rules import stock_value_available

__all__ = [
    "DEFAULT_EVENT_WEIGHTS",
    "MAX_ITEMS_PER_REQUEST",
    "InteractionSource",
    "UpsertResult",
    "item_dict",
    "iter_interactions",
    "iter_purchases",
    "list_items",
    "load_items",
    "parse_items",
    "parse_weights",
    "unavailable_items",
    "upsert_items",
]

#: How much one event of each type says about a contact's interest in its item.
DEFAULT_EVENT_WEIGHTS: Final[Mapping[str, float]] = MappingProxyType(
    {"view": 1.0, "click": 2.0, "add_to_cart": 3.0, "purchase": 5.0}
)
#: Items one upsert request may carry.
MAX_ITEMS_PER_REQUEST: Final = 1000

_RESERVED_ATTRIBUTES = frozenset({"id", "title", "url", "image_url"})
_MAX_ATTRIBUTES_BYTES = 16_384
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_URL = re.compile(r"^https?://[^/\s?#]+[^\s]*$")
_ITEM_FIELDS = ("id", "title", "url", "image_url", "attributes", "active")
_ITEM_TABLE = CatalogueItem.__table__  # type: ignore[attr-defined]
_EVENT_TABLE = Event.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True)
class InteractionSource:
    """Which events count as interactions, how much, and how far back training looks."""

    #: Event type → weight of one event; types not listed are ignored.
    weights: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_EVENT_WEIGHTS))
    #: Only events this recent count; None: all of them.
    lookback_days: int | None = 365
    #: At most this many (contact, item) pairs, the most recently active first; None: all.
    #: Bounds training memory (see docs/recommendations.md for the arithmetic).
    max_pairs: int | None = 2_000_000

    def __post_init__(self) -> None:
        if not self.weights:
            raise ValidationError("give at least one event type with a weight", field="weights")
        for event_type, weight in self.weights.items():
            if not (isinstance(weight, int | float) and math.isfinite(weight) and weight > 0):
                raise ValidationError(
                    f"the weight of {event_type!r} must be a positive number, got {weight!r}",
                    field="weights",
                )
        if self.lookback_days is not None and self.lookback_days < 1:
            raise ValidationError("must be at least 1 day", field="lookback_days")
        if self.max_pairs is not None and self.max_pairs < 1:
            raise ValidationError("must be at least 1", field="max_pairs")


def parse_weights(pairs: Iterable[str]) -> dict[str, float]:
    """``["view=1", "purchase=5"]`` → ``{"view": 1.0, "purchase": 5.0}``."""
    weights: dict[str, float] = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = math.nan
        if not sep or not name.strip() or not (math.isfinite(weight) and weight > 0):
            raise ValidationError(
                f"{pair!r} is not TYPE=WEIGHT with a positive weight (for example purchase=5)",
                field="weights",
            )
        weights[name.strip()] = weight
    return weights


def iter_interactions(
    engine: Engine,
    source: InteractionSource | None = None,
    *,
    now: datetime | None = None,
    batch: int = 5000,
) -> Iterator[Interaction]:
    """Interactions from stored events: one per (contact, item), weights summed, ``at`` the latest.

    Events without a contact, without ``item_id`` or flagged ``automated`` (link scanners) do
    not count. Rows stream from the database ``batch`` at a time; hold the iterator only while
    consuming it (it keeps a connection).
    """
    source = source or InteractionSource()
    event = _EVENT_TABLE.c
    item_id = event.properties["item_id"].as_string()
    weight = sa.case(
        *[(event.type == name, value) for name, value in source.weights.items()], else_=0.0
    )
    conditions = [
        event.type.in_(list(source.weights)),
        event.contact_id.is_not(None),
        item_id.is_not(None),
        event.automated == sa.false(),
    ]
    if source.lookback_days is not None:
        since = (now or datetime.now(UTC)) - timedelta(days=source.lookback_days)
        conditions.append(event.occurred_at >= since)
    # Grouping by the JSON expression directly would render it twice with separate bound
    # parameters, which PostgreSQL does not accept as the same expression: use a subquery.
    events = (
        sa.select(
            event.contact_id,
            item_id.label("item_id"),
            weight.label("weight"),
            event.occurred_at,
        )
        .where(*conditions)
        .subquery()
    )
    last = sa.func.max(events.c.occurred_at)
    pairs = sa.select(
        events.c.contact_id, events.c.item_id, sa.func.sum(events.c.weight), last
    ).group_by(events.c.contact_id, events.c.item_id)
    if source.max_pairs is not None:
        pairs = pairs.order_by(last.desc()).limit(source.max_pairs)
    with engine.connect() as connection:
        result = connection.execution_options(yield_per=batch).execute(pairs)
        for contact_id, item, total, last in result:
            # SQLite hands back naive datetimes; they are UTC like everything postwise stores.
            at = last.replace(tzinfo=UTC) if last is not None and last.tzinfo is None else last
            yield Interaction(int(contact_id), str(item), float(total), at)


#: Event types that count as buying an item (never recommended again to that contact).
PURCHASE_TYPES: Final = ("purchase",)


def iter_purchases(
    engine: Engine,
    *,
    types: Sequence[str] = PURCHASE_TYPES,
    lookback_days: int | None = 365,
    now: datetime | None = None,
) -> Iterator[tuple[int, str]]:
    """Distinct (contact, item) pairs of purchase events."""
    event = _EVENT_TABLE.c
    item_id = event.properties["item_id"].as_string()
    conditions = [
        event.type.in_(list(types)),
        event.contact_id.is_not(None),
        item_id.is_not(None),
    ]
    if lookback_days is not None:
        since = (now or datetime.now(UTC)) - timedelta(days=lookback_days)
        conditions.append(event.occurred_at >= since)
    pairs = sa.select(event.contact_id, item_id.label("item_id")).where(*conditions).subquery()
    query = sa.select(pairs.c.contact_id, pairs.c.item_id).distinct()
    with engine.connect() as connection:
        for contact_id, item in connection.execution_options(yield_per=5000).execute(query):
            yield int(contact_id), str(item)


def unavailable_items(engine: Engine, stock_attribute: str = "in_stock") -> set[str]:
    """Ids of items that are inactive or whose ``stock_attribute`` says out of stock."""
    table = _ITEM_TABLE.c
    query = sa.select(table.id, table.active, table.attributes[stock_attribute])
    result: set[str] = set()
    with engine.connect() as connection:
        for item_id, active, stock in connection.execution_options(yield_per=5000).execute(query):
            if not active or not stock_value_available(stock):
                result.add(str(item_id))
    return result


def load_items(engine: Engine, *, active_only: bool = True, batch: int = 5000) -> list[Item]:
    """The catalogue in id order, read ``batch`` rows at a time."""
    table = _ITEM_TABLE.c
    query = sa.select(table.id, table.title, table.url, table.image_url, table.attributes)
    if active_only:
        query = query.where(table.active == sa.true())
    with engine.connect() as connection:
        result = connection.execution_options(yield_per=batch).execute(query.order_by(table.id))
        return [
            Item(item_id, title, url, image_url, dict(attributes or {}))
            for item_id, title, url, image_url, attributes in result
        ]


@dataclass(frozen=True)
class UpsertResult:
    """How many items an upsert created and how many it changed."""

    created: int
    updated: int


def _text(value: Any, where: str, *, limit: int, required: bool = True) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValidationError("must be a non-empty string", field=where)
    if len(value) > limit:
        raise ValidationError(f"must be at most {limit} characters", field=where)
    if _CONTROL.search(value):
        raise ValidationError("must not contain control characters", field=where)
    return value


def _url(value: Any, where: str, *, required: bool) -> str | None:
    text = _text(value, where, limit=2000, required=required)
    if text is not None and not _URL.match(text):
        raise ValidationError("must be an absolute http:// or https:// URL", field=where)
    return text


def _attributes(value: Any, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValidationError("must be a JSON object", field=where)
    for name in value:
        if not isinstance(name, str) or not name or name.startswith("_"):
            raise ValidationError(
                f"attribute name {name!r} must be a non-empty string not starting with '_' "
                "(templates cannot read such names)",
                field=where,
            )
        if name in _RESERVED_ATTRIBUTES:
            raise ValidationError(
                f"attribute {name!r} would shadow the item's own field; give it as a field or "
                "rename it",
                field=f"{where}.{name}",
            )
    try:
        size = len(json.dumps(value, allow_nan=False))
    except ValueError:
        raise ValidationError("must hold only finite numbers", field=where) from None
    if size > _MAX_ATTRIBUTES_BYTES:
        raise ValidationError(
            f"are {size} bytes of JSON; keep them under {_MAX_ATTRIBUTES_BYTES}", field=where
        )
    return value


def parse_items(body: Any) -> list[dict[str, Any]]:
    """Validate an upsert body ``{"items": [...]}``; errors name the field (``items[3].url``)."""
    if not isinstance(body, dict) or set(body) != {"items"}:
        raise ValidationError('the body must be {"items": [...]}', field="items")
    raw = body["items"]
    if not isinstance(raw, list) or not raw:
        raise ValidationError("must be a non-empty list of items", field="items")
    if len(raw) > MAX_ITEMS_PER_REQUEST:
        raise ValidationError(
            f"holds {len(raw)} items; send at most {MAX_ITEMS_PER_REQUEST} per request",
            field="items",
        )
    parsed: list[dict[str, Any]] = []
    positions: dict[str, int] = {}
    for index, entry in enumerate(raw):
        where = f"items[{index}]"
        if not isinstance(entry, dict):
            raise ValidationError("must be a JSON object", field=where)
        unknown = sorted(set(entry) - set(_ITEM_FIELDS))
        if unknown:
            raise ValidationError(
                f"unknown field {unknown[0]!r}; allowed: {', '.join(_ITEM_FIELDS)}",
                field=f"{where}.{unknown[0]}",
            )
        item_id = _text(entry.get("id"), f"{where}.id", limit=200)
        assert item_id is not None
        if item_id in positions:
            raise ValidationError(
                f"item {item_id!r} appears twice (first at items[{positions[item_id]}])",
                field=f"{where}.id",
            )
        positions[item_id] = index
        active = entry.get("active", True)
        if not isinstance(active, bool):
            raise ValidationError("must be true or false", field=f"{where}.active")
        parsed.append(
            {
                "id": item_id,
                "title": _text(entry.get("title"), f"{where}.title", limit=500),
                "url": _url(entry.get("url"), f"{where}.url", required=True),
                "image_url": _url(entry.get("image_url"), f"{where}.image_url", required=False),
                "attributes": _attributes(entry.get("attributes"), f"{where}.attributes"),
                "active": active,
            }
        )
    return parsed


def upsert_items(session: Session, items: Sequence[dict[str, Any]]) -> UpsertResult:
    """Insert or replace items (as returned by :func:`parse_items`) in one statement."""
    if not items:
        return UpsertResult(0, 0)
    ids = [item["id"] for item in items]
    existing = set(session.exec(select(CatalogueItem.id).where(col(CatalogueItem.id).in_(ids))))
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    statement = insert(_ITEM_TABLE).values(list(items))
    statement = statement.on_conflict_do_update(
        index_elements=["id"],
        set_={name: statement.excluded[name] for name in _ITEM_FIELDS if name != "id"},
    )
    session.execute(statement)
    return UpsertResult(created=len(items) - len(existing), updated=len(existing))


def list_items(
    session: Session, *, after: str = "", limit: int = 100, active: bool | None = None
) -> list[CatalogueItem]:
    """Items in id order after ``after`` (keyset pagination); ``active`` filters."""
    query = select(CatalogueItem).where(col(CatalogueItem.id) > after)
    if active is not None:
        query = query.where(CatalogueItem.active == active)
    return list(session.exec(query.order_by(col(CatalogueItem.id)).limit(limit)))


def item_dict(row: CatalogueItem) -> dict[str, Any]:
    """The API view of a stored item."""
    return {
        "id": row.id,
        "title": row.title,
        "url": row.url,
        "image_url": row.image_url,
        "attributes": dict(row.attributes or {}),
        "active": row.active,
    }
