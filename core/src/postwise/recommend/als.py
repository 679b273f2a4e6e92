"""ALS: matrix factorisation made for implicit feedback (Hu, Koren and Volinsky, 2008).

Every (contact, item) pair the contact did *not* interact with is a weak "no"; the pairs it did
interact with are "yes" with confidence ``alpha · profile weight``. Alternating least
squares fits contact and item factors to that; unlike the rating-prediction SVD of
``collaborative`` it needs no sampled negatives and does not depend on the units of event
weights. Training runs on the `implicit <https://github.com/benfred/implicit>`_ library (the
``postwise[ml]`` extra); the stored model is plain NumPy arrays, so serving needs no extra.

The number of factors and the recency half-life of profiles are chosen on a validation split of
the training data (:mod:`postwise.recommend.tuning`).
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any, Final, Literal

import numpy as np
import scipy.sparse as sp

from postwise.errors import ConfigurationError
from postwise.recommend.matrix import InteractionMatrix
from postwise.recommend.scoring import ProfileRecommender
from postwise.recommend.tuning import Validation, held_out_ranks, ndcg, validation_split

__all__ = ["AlsRecommender", "implicit_available"]

log = logging.getLogger(__name__)

#: (factors, half-life) pairs tried.
CANDIDATES: Final[tuple[tuple[int, float | None], ...]] = ((32, None), (32, 10.0), (64, 10.0))


def implicit_available() -> bool:
    """Whether the ``implicit`` library (the ``postwise[ml]`` extra) is installed."""
    return importlib.util.find_spec("implicit") is not None


class AlsRecommender(ProfileRecommender):
    """Implicit-feedback matrix factorisation (ALS), tuned on a validation split."""

    name = "als"
    description = "Implicit-feedback matrix factorisation (ALS, the implicit library)."

    def __init__(
        self,
        *,
        factors: int | None = None,
        half_life: float | Literal["auto"] | None = "auto",
        regularisation: float = 0.1,
        alpha: float = 10.0,
        iterations: int = 15,
        threads: int = 1,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if factors is not None and factors < 1:
            raise ConfigurationError(f"factors must be at least 1, got {factors}")
        self.factors = factors
        self.requested_half_life: float | Literal["auto"] | None = half_life
        self.regularisation = regularisation
        self.alpha = alpha
        self.iterations = iterations
        self.threads = threads
        self.seed = seed
        self.backend = "implicit"
        self.tuned: dict[str, object] = {}
        self._user_factors = np.zeros((0, 0), dtype=np.float32)
        self._item_factors = np.zeros((0, 0), dtype=np.float32)
        self._known = np.zeros(0, dtype=bool)

    def _candidates(self) -> list[tuple[int, float | None]]:
        requested = self.requested_half_life
        if self.factors is not None and requested != "auto":
            return [(self.factors, requested)]
        return [
            (self.factors or factors, half_life if requested == "auto" else requested)
            for factors, half_life in CANDIDATES
        ]

    def fit_matrix(self, matrix: InteractionMatrix, validation: Validation | None = None) -> None:
        if not implicit_available():
            raise ConfigurationError(
                "the als recommender needs the implicit library: pip install 'postwise[ml]'"
            )
        candidates = list(dict.fromkeys(self._candidates()))
        chosen = candidates[0]
        if len(candidates) > 1:
            validation = validation or validation_split(matrix, seed=self.seed)
        if validation is not None and len(candidates) > 1:
            blocked = validation.blocked()
            best: tuple[float, tuple[int, float | None]] | None = None
            for factors, half_life in candidates:
                users, items = self._train(validation.matrix, factors, half_life)
                del users
                profiles = validation.case_profiles(half_life)
                scores = self._solve(profiles, items)[:, : matrix.n_catalogue]
                scores[:, ~_known(validation.matrix)] = -np.inf
                value = float(ndcg(held_out_ranks(scores, validation.held, blocked)).mean())
                if best is None or value > best[0] + 1e-12:
                    best = (value, (factors, half_life))
            assert best is not None
            chosen = best[1]
            self.tuned = {
                "factors": chosen[0],
                "half_life": chosen[1],
                "validation_ndcg": round(best[0], 4),
                "validated": True,
            }
        else:
            self.tuned = {"factors": chosen[0], "half_life": chosen[1], "validated": False}
        users, items = self._train(matrix, *chosen)
        self._user_factors, self._item_factors = users, items
        self._known = _known(matrix)
        self._install(matrix, chosen[1])

    def _train(
        self, matrix: InteractionMatrix, factors: int, half_life: float | None
    ) -> tuple[np.ndarray, np.ndarray]:
        from implicit.cpu.als import AlternatingLeastSquares
        from threadpoolctl import threadpool_limits

        confidence = matrix.profile_matrix(half_life)
        confidence.data *= self.alpha
        # implicit runs its own threads; BLAS threads inside them only contend (implicit warns).
        with threadpool_limits(1, "blas"):
            model: Any = AlternatingLeastSquares(
                factors=factors,
                regularization=self.regularisation,
                iterations=self.iterations,
                num_threads=self.threads,
                random_state=self.seed,
            )
            model.fit(sp.csr_matrix(confidence, dtype=np.float32), show_progress=False)
        return (
            np.asarray(model.user_factors, dtype=np.float32),
            np.asarray(model.item_factors, dtype=np.float32),
        )

    def _solve(self, profiles: sp.csr_matrix, items: np.ndarray) -> np.ndarray:
        """Scores of profiles not seen in training: each contact's factors solved exactly."""
        y = items.astype(np.float64)
        gram = y.T @ y + self.regularisation * np.eye(y.shape[1])
        users = np.zeros((profiles.shape[0], y.shape[1]))
        for index in range(profiles.shape[0]):
            start, end = profiles.indptr[index], profiles.indptr[index + 1]
            columns = profiles.indices[start:end]
            confidence = self.alpha * profiles.data[start:end].astype(np.float64)
            rows = y[columns]
            # As implicit's solver: confidence c on interacted items, 1 elsewhere.
            a = gram + (rows.T * (confidence - 1.0)) @ rows
            b = (rows.T * confidence).sum(axis=1)
            users[index] = np.linalg.solve(a, b)
        scores = users @ y.T
        return np.asarray(scores, dtype=np.float64)

    def score_profiles(self, profiles: sp.csr_matrix) -> np.ndarray:
        matrix = self._matrix
        if matrix is None:
            return np.zeros((profiles.shape[0], 0))
        scores = self._solve(profiles, self._item_factors)[:, : matrix.n_catalogue]
        scores[:, ~self._known] = -np.inf
        return scores

    def scores(self, contact_id: int) -> np.ndarray | None:
        matrix = self._matrix
        row = matrix.row(contact_id) if matrix is not None else None
        if matrix is None or row is None or self._user_factors.shape[0] <= row:
            return None
        n = matrix.n_catalogue
        scores = self._item_factors[:n] @ self._user_factors[row]
        return np.where(self._known, scores.astype(np.float64), -np.inf)


def _known(matrix: InteractionMatrix) -> np.ndarray:
    known = np.zeros(matrix.n_catalogue, dtype=bool)
    touched = np.unique(matrix.weights.indices)
    known[touched[touched < matrix.n_catalogue]] = True
    return known
