"""The popularity recommender: the most-interacted items, minus what the contact already has.

It is the cold-start baseline every other recommender falls back to: it needs no history for
the contact and answers in microseconds from a precomputed ranking.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from postwise.recommend.base import Interaction, Item, Recommender

__all__ = ["PopularityRecommender"]


class PopularityRecommender(Recommender):
    """Ranks items by total interaction weight, optionally decayed by age."""

    name = "popularity"
    description = "Most popular items the contact has not interacted with yet."

    def __init__(self, half_life_days: float | None = 30.0) -> None:
        self.half_life_days = half_life_days
        self._ranking: list[Item] = []
        self._seen: dict[int, set[str]] = {}

    def fit(self, interactions: Iterable[Interaction], items: Sequence[Item]) -> None:
        catalogue = {item.id: item for item in items}
        scores: dict[str, float] = defaultdict(float)
        seen: dict[int, set[str]] = defaultdict(set)
        now = datetime.now(UTC)
        for interaction in interactions:
            if interaction.item_id not in catalogue:
                continue
            weight = interaction.weight
            if self.half_life_days and interaction.at is not None:
                age_days = max(0.0, (now - interaction.at).total_seconds() / 86400)
                weight *= 0.5 ** (age_days / self.half_life_days)
            scores[interaction.item_id] += weight
            seen[interaction.contact_id].add(interaction.item_id)
        # Items nobody touched still rank, after the popular ones, in catalogue order.
        order = {item.id: index for index, item in enumerate(items)}
        ranked = sorted(catalogue, key=lambda item_id: (-scores[item_id], order[item_id]))
        self._ranking = [catalogue[item_id] for item_id in ranked]
        self._seen = dict(seen)

    def recommend(self, contact_id: int, n: int, *, exclude: Iterable[str] = ()) -> list[Item]:
        if n <= 0:
            return []
        skip = self._seen.get(contact_id, set()) | set(exclude)
        result: list[Item] = []
        for item in self._ranking:
            if item.id not in skip:
                result.append(item)
                if len(result) == n:
                    break
        return result
