"""Recommenders that score the catalogue from a contact's *profile*.

A profile is the contact's history as one weight per item (see
:meth:`postwise.recommend.matrix.InteractionMatrix.profile_matrix`): its strongest interaction
counts 1, and with a recency half-life its older items count less. The EASE, content-based and
hybrid recommenders score any such profile, which is what lets them tune themselves on
validation profiles (:mod:`postwise.recommend.tuning`) and answer a block with one sparse
product.
"""

from __future__ import annotations

import abc
from collections.abc import Iterable, Sequence

import numpy as np
import scipy.sparse as sp

from postwise.recommend.base import Interaction, Item, Recommender
from postwise.recommend.matrix import InteractionMatrix, top_items

__all__ = ["ProfileRecommender"]


class ProfileRecommender(Recommender):
    """Scores every catalogue item from the contact's profile; ``-inf`` means unscored."""

    #: Recency half-life of profiles, in items (None: every item of the history counts alike).
    half_life: float | None = None

    def __init__(self) -> None:
        self._matrix: InteractionMatrix | None = None
        self._profiles = sp.csr_matrix((0, 0), dtype=np.float32)

    def fit(self, interactions: Iterable[Interaction], items: Sequence[Item]) -> None:
        self.fit_matrix(InteractionMatrix.build(interactions, items))

    @abc.abstractmethod
    def fit_matrix(self, matrix: InteractionMatrix) -> None:
        """Learn from an already built matrix (and tune on a validation split of it)."""

    @abc.abstractmethod
    def score_profiles(self, profiles: sp.csr_matrix) -> np.ndarray:
        """Scores (profiles by catalogue items) of profiles over the matrix's columns."""

    def _install(self, matrix: InteractionMatrix, half_life: float | None) -> None:
        self._matrix = matrix
        self.half_life = half_life
        self._profiles = matrix.profile_matrix(half_life)

    @property
    def matrix(self) -> InteractionMatrix | None:
        """What the recommender was fitted on (None before fitting)."""
        return self._matrix

    def profile(self, contact_id: int) -> tuple[np.ndarray, np.ndarray] | None:
        """The contact's profile as columns and weights, or None without history."""
        matrix = self._matrix
        row = matrix.row(contact_id) if matrix is not None else None
        if row is None:
            return None
        start, end = self._profiles.indptr[row], self._profiles.indptr[row + 1]
        if start == end:
            return None
        return self._profiles.indices[start:end], self._profiles.data[start:end]

    def score_one(self, columns: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """Scores of one profile (columns and weights); override with a faster path."""
        profile = sp.csr_matrix(
            (weights, columns, [0, len(columns)]), shape=(1, self._profiles.shape[1])
        )
        return np.asarray(self.score_profiles(profile)[0], dtype=np.float64)

    def scores(self, contact_id: int) -> np.ndarray | None:
        """Scores of every catalogue item for the contact, or None without history."""
        profile = self.profile(contact_id)
        if profile is None:
            return None
        return self.score_one(*profile)

    def recommend(self, contact_id: int, n: int, *, exclude: Iterable[str] = ()) -> list[Item]:
        matrix = self._matrix
        if matrix is None or n <= 0:
            return []
        blocked = matrix.blocked(matrix.row(contact_id), exclude)
        return top_items(matrix, self.scores(contact_id), n, blocked)
