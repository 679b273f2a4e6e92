"""Business rules applied to every recommender's ranking, after scoring.

A recommender ranks by taste; a shop also has rules. :func:`apply_rules` takes any
recommender's ranked candidates and

1. **excludes** what must never be shown: items the contact already bought (purchase events,
   collected at training), items out of stock (the item attribute named by ``stock_attribute``,
   default ``in_stock``, is ``false``, ``0``, ``"no"`` or a number at or below 0) and inactive
   items (retired through ``POST /v1/items`` with ``"active": false`` after the model was
   trained: serving re-reads both every minute);
2. **boosts** items by attribute: ``{"brand=acme": 1.5}`` multiplies the rank score
   ``1 / log2(rank + 2)`` of items whose ``brand`` is ``acme`` (or whose ``brand`` list holds
   it), so a boosted item moves up a few places without jumping over much better ones; a boost
   below 1 demotes;
3. **caps** each category (``max_per_category`` items with the same ``category_attribute``
   value per block), for diversity; items without a category are not capped.

Serving asks the recommender for more candidates than the block needs (three times, doubling
while rules remove too many), so rules never leave a block short while the catalogue allows.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from postwise.errors import ValidationError
from postwise.recommend.base import Interaction, Item, Recommender

__all__ = [
    "BusinessRules",
    "Purchases",
    "RuledModel",
    "apply_rules",
    "in_stock",
    "parse_boosts",
    "recommend_with_rules",
    "stock_value_available",
]

_OUT_OF_STOCK_WORDS = frozenset({"false", "no", "0", "out", "out of stock", "none"})
#: How many more candidates than the block needs are asked for at first.
_OVERFETCH = 3
_MAX_ROUNDS = 5


@dataclass(frozen=True)
class BusinessRules:
    """What serving applies on top of every recommender (see the module docstring)."""

    max_per_category: int | None = None
    category_attribute: str = "category"
    #: ``"attribute=value"`` → multiplier of the rank score (positive).
    boosts: Mapping[str, float] = field(default_factory=dict)
    stock_attribute: str = "in_stock"
    exclude_purchased: bool = True

    def __post_init__(self) -> None:
        if self.max_per_category is not None and self.max_per_category < 1:
            raise ValidationError("must be at least 1", field="max_per_category")
        parse_boosts(self.boosts)

    @property
    def reorders(self) -> bool:
        return bool(self.boosts) or self.max_per_category is not None


def parse_boosts(boosts: Mapping[str, float]) -> dict[tuple[str, str], float]:
    """``{"brand=acme": 1.5}`` → ``{("brand", "acme"): 1.5}``; bad entries raise."""
    parsed: dict[tuple[str, str], float] = {}
    for key, factor in boosts.items():
        name, sep, value = str(key).partition("=")
        if not sep or not name.strip() or not value.strip():
            raise ValidationError(
                f"boost {key!r} must be ATTRIBUTE=VALUE (for example brand=acme)", field="boosts"
            )
        if not (isinstance(factor, int | float) and math.isfinite(factor) and factor > 0):
            raise ValidationError(
                f"boost {key!r} must be a positive number, got {factor!r}", field="boosts"
            )
        parsed[(name.strip().lower(), value.strip().lower())] = float(factor)
    return parsed


def in_stock(item: Item, attribute: str = "in_stock") -> bool:
    """False when the item's stock attribute says it is out of stock."""
    return stock_value_available((item.attributes or {}).get(attribute))


def stock_value_available(value: Any) -> bool:
    """False for a stock attribute value meaning "out of stock" (false, 0, "no"...)."""
    if value is None:
        return True
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value > 0
    if isinstance(value, str):
        return value.strip().lower() not in _OUT_OF_STOCK_WORDS
    return True


def _values(item: Item, attribute: str) -> list[str]:
    value = (item.attributes or {}).get(attribute)
    if isinstance(value, list | tuple):
        return [str(v).strip().lower() for v in value if isinstance(v, str | int | float | bool)]
    if isinstance(value, str | int | float | bool):
        return [str(value).strip().lower()]
    return []


def apply_rules(
    candidates: Sequence[Item],
    n: int,
    rules: BusinessRules,
    *,
    unavailable: Iterable[str] = (),
) -> list[Item]:
    """The best ``n`` of ranked ``candidates`` under ``rules``."""
    blocked = set(unavailable)
    kept = [
        item
        for item in candidates
        if item.id not in blocked and in_stock(item, rules.stock_attribute)
    ]
    boosts = parse_boosts(rules.boosts)
    if boosts:
        scored = []
        for rank, item in enumerate(kept):
            factor = 1.0
            for (name, value), multiplier in boosts.items():
                if value in _values(item, name):
                    factor *= multiplier
            scored.append((-factor / math.log2(rank + 2), rank, item))
        kept = [item for _, _, item in sorted(scored, key=lambda entry: entry[:2])]
    if rules.max_per_category is None:
        return kept[:n]
    chosen: list[Item] = []
    per_category: dict[str, int] = {}
    attribute = rules.category_attribute
    for item in kept:
        categories = _values(item, attribute)
        key = categories[0] if categories else None
        if key is not None:
            if per_category.get(key, 0) >= rules.max_per_category:
                continue
            per_category[key] = per_category.get(key, 0) + 1
        chosen.append(item)
        if len(chosen) == n:
            break
    return chosen


class Purchases:
    """Which items each contact bought, as compact arrays (collected at training)."""

    def __init__(self, pairs: Iterable[tuple[int, str]] = ()) -> None:
        by_contact: dict[int, set[str]] = {}
        for contact_id, item_id in pairs:
            by_contact.setdefault(int(contact_id), set()).add(str(item_id))
        ids: dict[str, int] = {}
        contacts = sorted(by_contact)
        indptr = [0]
        columns: list[int] = []
        for contact_id in contacts:
            for item_id in sorted(by_contact[contact_id]):
                columns.append(ids.setdefault(item_id, len(ids)))
            indptr.append(len(columns))
        self._contacts = np.asarray(contacts, dtype=np.int64)
        self._indptr = np.asarray(indptr, dtype=np.int64)
        self._columns = np.asarray(columns, dtype=np.int32)
        self._items = tuple(ids)

    def __len__(self) -> int:
        return len(self._columns)

    def of(self, contact_id: int) -> list[str]:
        index = int(np.searchsorted(self._contacts, contact_id))
        if index >= len(self._contacts) or int(self._contacts[index]) != contact_id:
            return []
        start, end = self._indptr[index], self._indptr[index + 1]
        return [self._items[c] for c in self._columns[start:end]]


class RuledModel(Recommender):
    """A fitted recommender stored with what its rules need (the contacts' purchases)."""

    name = "ruled"
    description = "A fitted recommender with the data its business rules need."

    def __init__(self, inner: Recommender, purchases: Purchases | None = None) -> None:
        self.inner = inner
        self.purchases = purchases or Purchases()

    def fit(self, interactions: Iterable[Interaction], items: Sequence[Item]) -> None:
        self.inner.fit(interactions, items)

    def recommend(self, contact_id: int, n: int, *, exclude: Iterable[str] = ()) -> list[Item]:
        return self.inner.recommend(contact_id, n, exclude=exclude)

    def __getattr__(self, name: str) -> Any:
        # Reports read ``backend`` and ``tuned`` of the fitted recommender.
        if name in {"inner", "purchases"}:
            raise AttributeError(name)
        return getattr(self.inner, name)


def recommend_with_rules(
    recommender: Recommender,
    contact_id: int,
    n: int,
    rules: BusinessRules,
    *,
    unavailable: Iterable[str] = (),
    catalogue_size: int | None = None,
) -> list[Item]:
    """Up to ``n`` items of ``recommender`` for the contact with ``rules`` applied."""
    if n <= 0:
        return []
    blocked = set(unavailable)
    inner = recommender
    if isinstance(recommender, RuledModel):
        inner = recommender.inner
        if rules.exclude_purchased:
            blocked.update(recommender.purchases.of(contact_id))
    fetch: Callable[[int], list[Item]] = lambda m: inner.recommend(  # noqa: E731
        contact_id, m, exclude=blocked
    )
    if not rules.reorders and not blocked:
        return apply_rules(fetch(n), n, rules)
    wanted = max(n * _OVERFETCH, n + 10) if rules.reorders else n
    result: list[Item] = []
    for _ in range(_MAX_ROUNDS):
        candidates = fetch(wanted)
        result = apply_rules(candidates, n, rules, unavailable=blocked)
        exhausted = len(candidates) < wanted or (
            catalogue_size is not None and wanted >= catalogue_size
        )
        if len(result) >= n or exhausted:
            break
        wanted *= 2
    return result
