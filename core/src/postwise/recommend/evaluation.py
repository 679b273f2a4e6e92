"""Offline evaluation: hold out each contact's last interaction and see who predicts it.

For every contact with at least two interacted items, the item interacted with last is held
out; each recommender is fitted on everything else and asked for its top ``k`` for the contact
(items the contact already had are never recommended, so the held-out item competes with the
whole rest of the catalogue). Two figures per recommender:

* **hit rate@k**: the share of contacts whose held-out item is in their top ``k``;
* **coverage**: the share of the catalogue that appears in at least one top ``k`` (a
  recommender that shows everybody the same ten items has low coverage).

Held-out items outside the catalogue (inactive products) are dropped from the test: no
recommender may show them.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime

from postwise.recommend.base import Interaction, Item, Recommender

__all__ = ["EvaluationResult", "Split", "evaluate", "leave_last_out"]

_EPOCH = datetime.min.replace(tzinfo=UTC)


@dataclass(frozen=True)
class Split:
    """Training interactions and the held-out item of each evaluated contact."""

    train: list[Interaction]
    held_out: dict[int, str]


@dataclass(frozen=True)
class EvaluationResult:
    """The figures of one recommender."""

    recommender: str
    k: int
    contacts: int
    hits: int
    hit_rate: float
    coverage: float
    fit_seconds: float
    recommend_ms: float

    def to_dict(self) -> dict[str, object]:
        return {
            "recommender": self.recommender,
            "k": self.k,
            "contacts": self.contacts,
            "hits": self.hits,
            "hit_rate": round(self.hit_rate, 4),
            "coverage": round(self.coverage, 4),
            "fit_seconds": round(self.fit_seconds, 3),
            "recommend_ms": round(self.recommend_ms, 3),
        }


def leave_last_out(
    interactions: Iterable[Interaction],
    items: Sequence[Item],
    *,
    max_contacts: int | None = None,
) -> Split:
    """Hold out the last interacted item of every contact with at least two items.

    An interaction's time is ``at`` (missing times count as oldest); ties go to the greater
    item id so the split is deterministic. Interactions with the same item add up, so "the last
    item" is the one with the latest interaction. ``max_contacts`` evaluates a deterministic
    sample of contacts (by a hash of the id); the others keep all their interactions for
    training.
    """
    catalogue = {item.id for item in items}
    by_contact: dict[int, dict[str, datetime]] = {}
    kept = list(interactions)
    for interaction in kept:
        latest = by_contact.setdefault(interaction.contact_id, {})
        at = interaction.at or _EPOCH
        if interaction.item_id not in latest or at > latest[interaction.item_id]:
            latest[interaction.item_id] = at
    held_out: dict[int, str] = {}
    for contact_id, latest in by_contact.items():
        if len(latest) < 2:
            continue
        item_id = max(latest, key=lambda i: (latest[i], i))
        if item_id in catalogue:
            held_out[contact_id] = item_id
    if max_contacts is not None and len(held_out) > max_contacts:
        chosen = sorted(held_out, key=lambda c: (zlib.crc32(str(c).encode()), c))[:max_contacts]
        held_out = {c: held_out[c] for c in chosen}
    train = [i for i in kept if held_out.get(i.contact_id) != i.item_id]
    return Split(train, held_out)


def evaluate(
    factories: dict[str, Callable[[], Recommender]],
    split: Split,
    items: Sequence[Item],
    *,
    k: int = 10,
) -> list[EvaluationResult]:
    """Fit each recommender on ``split.train`` and score its top ``k`` on the held-out items."""
    results = []
    catalogue_size = len({item.id for item in items})
    for name, factory in factories.items():
        recommender = factory()
        started = time.perf_counter()
        recommender.fit(split.train, items)
        fit_seconds = time.perf_counter() - started
        hits = 0
        shown: set[str] = set()
        started = time.perf_counter()
        for contact_id, item_id in split.held_out.items():
            top = [item.id for item in recommender.recommend(contact_id, k)]
            hits += item_id in top
            shown.update(top)
        elapsed = time.perf_counter() - started
        contacts = len(split.held_out)
        results.append(
            EvaluationResult(
                recommender=name,
                k=k,
                contacts=contacts,
                hits=hits,
                hit_rate=hits / contacts if contacts else 0.0,
                coverage=len(shown) / catalogue_size if catalogue_size else 0.0,
                fit_seconds=fit_seconds,
                recommend_ms=1000 * elapsed / contacts if contacts else 0.0,
            )
        )
    return results
