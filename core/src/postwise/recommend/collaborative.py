"""Collaborative filtering: matrix factorisation (SVD) of implicit feedback.

Contacts and items get latent factor vectors such that a contact's vector points towards the
items contacts with similar histories interacted with. Interactions are implicit (views,
clicks, purchases: no "disliked" signal), so each observed pair becomes a positive rating that
grows with its summed weight, ``1 + log(1 + weight)``, and for every contact twice as many
items it never touched are sampled as ratings of 0 (negative sampling). Without the negatives a
rating-prediction model sees only positives and learns nothing that separates items.

Two backends fit the same scores, ``bias_i + q_i · p_u``:

* ``surprise`` (the ``postwise[ml]`` extra, scikit-surprise): biased SVD trained by stochastic
  gradient descent, the design card's choice. The ratings reach it through an array-backed
  trainset, so training memory stays at about 12 bytes per rating instead of surprise's Python
  lists of tuples.
* ``numpy`` (always available): truncated SVD of the ``log(1 + weight)`` matrix with SciPy
  (PureSVD), used when scikit-surprise is not installed.

Contacts without history, and items nobody interacted with, have no factors: the former get the
popularity ranking, the latter are ranked after scored items.
"""

from __future__ import annotations

import importlib.util
import logging
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, Literal

import numpy as np

from postwise.errors import ConfigurationError
from postwise.recommend.base import Interaction, Item, Recommender
from postwise.recommend.matrix import InteractionMatrix, top_items

__all__ = ["Backend", "CollaborativeRecommender", "surprise_available"]

log = logging.getLogger(__name__)

Backend = Literal["auto", "surprise", "numpy"]

#: Ratings handed to surprise's training loop per Python list conversion.
_RATING_CHUNK = 65536
#: Up to this many cells a dense SVD is quick and exact; above it, ARPACK's truncated one.
_DENSE_SVD_CELLS = 250_000


def surprise_available() -> bool:
    """Whether scikit-surprise (the ``postwise[ml]`` extra) is installed."""
    return importlib.util.find_spec("surprise") is not None


class CollaborativeRecommender(Recommender):
    """Items that contacts with similar histories interacted with (implicit-feedback SVD)."""

    name = "collaborative"
    description = "Matrix factorisation of interactions: what contacts with similar taste chose."

    def __init__(
        self,
        *,
        factors: int = 32,
        epochs: int = 20,
        learning_rate: float = 0.02,
        regularisation: float = 0.1,
        negatives: float = 2.0,
        seed: int = 0,
        backend: Backend = "auto",
    ) -> None:
        """``factors`` latent dimensions, learnt over ``epochs`` passes (surprise backend).

        ``negatives`` sampled zero ratings per observed pair; ``backend`` "auto" uses surprise
        when installed. The defaults were tuned with ``postwise recommend evaluate
        --synthetic``: stronger regularisation and two negatives per positive mattered most.
        """
        if factors < 1:
            raise ConfigurationError(f"factors must be at least 1, got {factors}")
        if negatives < 0:
            raise ConfigurationError(f"negatives must be 0 or more, got {negatives}")
        if backend not in ("auto", "surprise", "numpy"):
            raise ConfigurationError(
                f"backend must be 'auto', 'surprise' or 'numpy', got {backend!r}"
            )
        if backend == "surprise" and not surprise_available():
            raise ConfigurationError(
                "the 'surprise' backend needs scikit-surprise: pip install 'postwise[ml]', "
                "or use backend='numpy'"
            )
        self.factors = factors
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.regularisation = regularisation
        self.negatives = negatives
        self.seed = seed
        self.requested_backend: Backend = backend
        #: The backend the last fit used ("surprise" or "numpy"); None before fitting.
        self.backend: str | None = None
        self._matrix: InteractionMatrix | None = None
        self._user_factors = np.zeros((0, 0), dtype=np.float32)
        self._item_factors = np.zeros((0, 0), dtype=np.float32)
        self._item_bias = np.zeros(0, dtype=np.float32)
        self._known_items = np.zeros(0, dtype=bool)

    def fit(self, interactions: Iterable[Interaction], items: Sequence[Item]) -> None:
        self.fit_matrix(InteractionMatrix.build(interactions, items))

    def fit_matrix(self, matrix: InteractionMatrix) -> None:
        """Learn from an already built matrix (the hybrid shares one with content-based)."""
        use_surprise = self.requested_backend == "surprise" or (
            self.requested_backend == "auto" and surprise_available()
        )
        self.backend = "surprise" if use_surprise else "numpy"
        self._matrix = matrix
        n_rows, n_cols = matrix.weights.shape
        self._known_items = np.zeros(matrix.n_catalogue, dtype=bool)
        if matrix.n_pairs:
            touched = np.unique(matrix.weights.indices)
            self._known_items[touched[touched < matrix.n_catalogue]] = True
        if matrix.n_pairs == 0 or n_cols < 2:
            # Nothing to factorise: every contact is answered from popularity.
            self._user_factors = np.zeros((n_rows, 0), dtype=np.float32)
            self._item_factors = np.zeros((n_cols, 0), dtype=np.float32)
            self._item_bias = np.zeros(n_cols, dtype=np.float32)
            return
        if use_surprise:
            users, items, bias = self._fit_surprise(matrix)
        else:
            users, items, bias = self._fit_numpy(matrix)
        self._user_factors = users.astype(np.float32)
        self._item_factors = items.astype(np.float32)
        self._item_bias = bias.astype(np.float32)

    def scores(self, contact_id: int) -> np.ndarray | None:
        """Scores of every catalogue item for the contact (``-inf``: no factors), or None."""
        matrix = self._matrix
        if matrix is None:
            return None
        row = matrix.row(contact_id)
        if row is None or self._user_factors.shape[1] == 0:
            return None
        n = matrix.n_catalogue
        scores = self._item_factors[:n] @ self._user_factors[row] + self._item_bias[:n]
        return np.where(self._known_items, scores.astype(np.float64), -np.inf)

    def recommend(self, contact_id: int, n: int, *, exclude: Iterable[str] = ()) -> list[Item]:
        matrix = self._matrix
        if matrix is None or n <= 0:
            return []
        blocked = matrix.blocked(matrix.row(contact_id), exclude)
        return top_items(matrix, self.scores(contact_id), n, blocked)

    def _training_ratings(
        self, matrix: InteractionMatrix
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Positive ratings from the matrix plus sampled zero ratings, in shuffled order."""
        coo = matrix.weights.tocoo()
        n_cols = matrix.weights.shape[1]
        rows = coo.row.astype(np.int64)
        cols = coo.col.astype(np.int64)
        ratings = 1.0 + np.log1p(coo.data.astype(np.float64))
        rng = np.random.default_rng(self.seed)
        whole = int(self.negatives)
        neg_rows = np.repeat(rows, whole)
        if self.negatives > whole:
            extra = rng.random(len(rows)) < self.negatives - whole
            neg_rows = np.concatenate([neg_rows, rows[extra]])
        if len(neg_rows):
            neg_cols = rng.integers(0, n_cols, size=len(neg_rows))
            # A sampled item the contact did interact with is not a negative: drop it.
            positive_keys = rows * n_cols + cols
            keys = np.unique(neg_rows * n_cols + neg_cols)
            keys = keys[~np.isin(keys, positive_keys, assume_unique=True)]
            rows = np.concatenate([rows, keys // n_cols])
            cols = np.concatenate([cols, keys % n_cols])
            ratings = np.concatenate([ratings, np.zeros(len(keys))])
        # SGD converges badly on ratings grouped by contact; shuffle once, deterministically.
        order = rng.permutation(len(rows))
        return rows[order].astype(np.int32), cols[order].astype(np.int32), ratings[order]

    def _fit_surprise(self, matrix: InteractionMatrix) -> tuple[np.ndarray, ...]:
        from surprise import SVD

        rows, cols, ratings = self._training_ratings(matrix)
        trainset = _array_trainset(rows, cols, ratings, matrix.weights.shape)
        algo = SVD(
            n_factors=self.factors,
            n_epochs=self.epochs,
            lr_all=self.learning_rate,
            reg_all=self.regularisation,
            random_state=self.seed,
        )
        algo.fit(trainset)
        return np.asarray(algo.pu), np.asarray(algo.qi), np.asarray(algo.bi)

    def _fit_numpy(self, matrix: InteractionMatrix) -> tuple[np.ndarray, ...]:
        values = matrix.weights.copy().astype(np.float64)
        values.data = np.log1p(values.data)
        n_rows, n_cols = values.shape
        k = min(self.factors, min(n_rows, n_cols) - 1)
        if k < 1:
            return (np.zeros((n_rows, 0)), np.zeros((n_cols, 0)), np.zeros(n_cols))
        if n_rows * n_cols <= _DENSE_SVD_CELLS:
            u, s, vt = np.linalg.svd(values.toarray(), full_matrices=False)
            u, s, vt = u[:, :k], s[:k], vt[:k]
        else:
            from scipy.sparse.linalg import svds

            u, s, vt = svds(values, k=k, random_state=self.seed)
        # The reconstruction U·S·Vᵀ scores items; PureSVD has no separate item bias.
        return u * s, vt.T, np.zeros(n_cols)


def _array_trainset(
    rows: np.ndarray, cols: np.ndarray, ratings: np.ndarray, shape: tuple[int, int]
) -> Any:
    """A surprise trainset that streams its ratings from arrays.

    surprise's SVD reads a trainset only through ``all_ratings()``, ``global_mean`` and the
    user and item counts; its own trainsets hold every rating twice as Python tuples (a few
    hundred bytes each), which the arrays replace.
    """
    from surprise import Trainset

    class ArrayTrainset(Trainset):
        def all_ratings(self) -> Iterator[tuple[int, int, float]]:
            for start in range(0, len(ratings), _RATING_CHUNK):
                end = start + _RATING_CHUNK
                yield from zip(
                    rows[start:end].tolist(),
                    cols[start:end].tolist(),
                    ratings[start:end].tolist(),
                    strict=True,
                )

    n_rows, n_cols = shape
    trainset = ArrayTrainset(
        ur={},
        ir={},
        n_users=n_rows,
        n_items=n_cols,
        n_ratings=len(ratings),
        rating_scale=(0.0, float(ratings.max()) if len(ratings) else 1.0),
        raw2inner_id_users={},
        raw2inner_id_items={},
    )
    trainset._global_mean = float(ratings.mean()) if len(ratings) else 0.0
    return trainset
