"""The contract of recommenders.

A recommender learns from interactions (who viewed, bought or clicked what) and item metadata,
and answers ``recommend(contact_id, n)`` at render time. Rendering happens on the hot send path,
so ``recommend`` must answer from memory: all learning happens in :meth:`Recommender.fit`.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

__all__ = ["Interaction", "Item", "Recommender"]


@dataclass(frozen=True, slots=True)
class Item:
    """A recommendable item (product, article, course...)."""

    id: str
    title: str
    url: str
    image_url: str | None = None
    attributes: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "url": self.url,
            "image_url": self.image_url,
            **dict(self.attributes),
        }


@dataclass(frozen=True, slots=True)
class Interaction:
    """A contact's interaction with an item; ``weight`` expresses its strength (a rating)."""

    contact_id: int
    item_id: str
    weight: float = 1.0
    at: datetime | None = None


class Recommender(abc.ABC):
    """Ranks items for a contact."""

    name: ClassVar[str]
    description: ClassVar[str] = ""

    @abc.abstractmethod
    def fit(self, interactions: Iterable[Interaction], items: Sequence[Item]) -> None:
        """Learn from ``interactions``; replaces what was learnt before."""

    @abc.abstractmethod
    def recommend(self, contact_id: int, n: int, *, exclude: Iterable[str] = ()) -> list[Item]:
        """Up to ``n`` items for ``contact_id``, best first, without the ids in ``exclude``."""
