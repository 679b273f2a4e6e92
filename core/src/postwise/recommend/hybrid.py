"""The hybrid recommender: collaborative and content-based, weighed by how much is known.

Collaborative filtering is the better judge of taste once a contact has a history, but with one
or two interactions its factors are little more than noise, and it cannot rank items nobody has
touched yet. Content-based filtering needs only one interaction and item metadata. The hybrid
scores each item as

    a * collaborative + (1 - a) * content,     a = h / (h + shrinkage)

where ``h`` is the number of distinct items in the contact's history and both scores are first
rescaled to 0..1 over the catalogue. With the default shrinkage of 2, a contact with one item
is ranked mostly by content (a = 0.33), one with ten items mostly by collaborative filtering
(a = 0.83). Contacts with no history at all (cold start) get the popularity ranking. The
default was chosen on generated clustered data (``postwise recommend evaluate --synthetic``):
2 was best or close to it for long and for short histories alike.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from postwise.errors import ConfigurationError
from postwise.recommend.base import Interaction, Item, Recommender
from postwise.recommend.collaborative import CollaborativeRecommender
from postwise.recommend.content import ContentRecommender
from postwise.recommend.matrix import InteractionMatrix, top_items

__all__ = ["HybridRecommender"]


class HybridRecommender(Recommender):
    """Collaborative filtering blended with content-based, popularity for cold-start contacts."""

    name = "hybrid"
    description = (
        "Collaborative and content-based blended by history length; popular items for "
        "contacts without history."
    )

    def __init__(
        self,
        shrinkage: float = 2.0,
        collaborative: CollaborativeRecommender | None = None,
        content: ContentRecommender | None = None,
    ) -> None:
        if shrinkage < 0:
            raise ConfigurationError(f"shrinkage must be 0 or more, got {shrinkage}")
        self.shrinkage = shrinkage
        self.collaborative = collaborative or CollaborativeRecommender()
        self.content = content or ContentRecommender()
        self._matrix: InteractionMatrix | None = None

    def fit(self, interactions: Iterable[Interaction], items: Sequence[Item]) -> None:
        matrix = InteractionMatrix.build(interactions, items)
        self.collaborative.fit_matrix(matrix)
        self.content.fit_matrix(matrix)
        self._matrix = matrix

    def collaborative_share(self, contact_id: int) -> float:
        """The weight ``a`` of collaborative filtering for this contact (0 without history)."""
        matrix = self._matrix
        row = matrix.row(contact_id) if matrix is not None else None
        if matrix is None or row is None:
            return 0.0
        # A row exists only for contacts with at least one item, so this never divides by 0.
        history = float(matrix.weights.indptr[row + 1] - matrix.weights.indptr[row])
        return history / (history + self.shrinkage)

    def scores(self, contact_id: int) -> np.ndarray | None:
        """Blended scores over the catalogue (``-inf``: neither part scores the item)."""
        if self._matrix is None or self._matrix.row(contact_id) is None:
            return None
        share = self.collaborative_share(contact_id)
        parts = [
            (share, self.collaborative.scores(contact_id)),
            (1.0 - share, self.content.scores(contact_id)),
        ]
        blended: np.ndarray | None = None
        scored: np.ndarray | None = None
        for weight, part in parts:
            if part is None:
                continue
            finite = np.isfinite(part)
            contribution = weight * _unit_scale(part, finite)
            blended = contribution if blended is None else blended + contribution
            scored = finite if scored is None else scored | finite
        if blended is None or scored is None:
            return None
        return np.where(scored, blended, -np.inf)

    def recommend(self, contact_id: int, n: int, *, exclude: Iterable[str] = ()) -> list[Item]:
        matrix = self._matrix
        if matrix is None or n <= 0:
            return []
        blocked = matrix.blocked(matrix.row(contact_id), exclude)
        return top_items(matrix, self.scores(contact_id), n, blocked)


def _unit_scale(scores: np.ndarray, finite: np.ndarray) -> np.ndarray:
    """Finite scores rescaled to 0..1 (all 1 when they are equal); others 0."""
    result = np.zeros(len(scores), dtype=np.float64)
    if not finite.any():
        return result
    values = scores[finite]
    low, high = float(values.min()), float(values.max())
    result[finite] = (values - low) / (high - low) if high > low else 1.0
    return result
