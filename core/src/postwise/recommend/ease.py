"""EASE: a closed-form item-to-item model of implicit feedback (Steck, 2019).

EASE learns an item-by-item weight matrix ``B`` that reconstructs every contact's history from
the contact's other items, ``X ≈ X·B`` with a zero diagonal and an L2 penalty ``λ``; the closed
form is ``P = (XᵀX + λI)⁻¹``, ``B = -P / diag(P)``. A contact's scores are ``profile · B``. On
MovieLens and other public data it matches or beats far more elaborate models, and it has one
setting. Training costs one inversion of an items-by-items matrix, so it is limited to the
``max_items`` most interacted items (default 3,000: one inversion takes a few seconds and
36 MB in single precision); items beyond them are left unscored, for the hybrid to rank by
content and popularity.

Settings are chosen on a validation split of the training data (:mod:`postwise.recommend.tuning`):

* ``λ`` among 1, 3 and 10 times the mean number of contacts per item (up to 2,500 modelled
  items; above, 3 times, to spare the extra inversions), or the given ``l2``;
* the recency half-life of profiles (None, 3, 10 or 30 items), or the given ``half_life``.

The stored model keeps each item's ``neighbours`` strongest weights (default 200), so a block is
one sparse product over the contact's items.
"""

from __future__ import annotations

import logging
from typing import Final, Literal

import numpy as np
import scipy.linalg
import scipy.sparse as sp

from postwise.errors import ConfigurationError
from postwise.recommend.matrix import InteractionMatrix, gather_rows
from postwise.recommend.scoring import ProfileRecommender
from postwise.recommend.tuning import Validation, held_out_ranks, ndcg, validation_split

__all__ = ["EaseRecommender", "ease_weights"]

log = logging.getLogger(__name__)

#: Half-lives (in items) tried for profiles.
HALF_LIVES: Final[tuple[float | None, ...]] = (None, 3.0, 10.0, 30.0)
#: λ candidates, as multiples of the mean number of contacts per modelled item.
L2_FACTORS: Final = (1.0, 3.0, 10.0)
#: Above this many modelled items only the middle λ is tried.
_TUNE_L2_UP_TO: Final = 2500

Auto = Literal["auto"]


class EaseRecommender(ProfileRecommender):
    """Closed-form item-to-item model (EASE), tuned on a validation split."""

    name = "ease"
    description = "Item-to-item model of implicit feedback (EASE), recent items weighted more."

    def __init__(
        self,
        *,
        l2: float | None = None,
        half_life: float | Auto | None = "auto",
        neighbours: int = 200,
        max_items: int = 3000,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if l2 is not None and not l2 > 0:
            raise ConfigurationError(f"l2 must be positive, got {l2}")
        if neighbours < 1 or max_items < 2:
            raise ConfigurationError("neighbours must be at least 1 and max_items at least 2")
        self.l2 = l2
        self.requested_half_life: float | Auto | None = half_life
        self.neighbours = neighbours
        self.max_items = max_items
        self.seed = seed
        #: What tuning chose and measured, for reports (``{"l2": ..., "half_life": ...}``).
        self.tuned: dict[str, object] = {}
        self._weights = sp.csr_matrix((0, 0), dtype=np.float32)
        self._modelled = np.zeros(0, dtype=bool)

    def fit_matrix(self, matrix: InteractionMatrix, validation: Validation | None = None) -> None:
        """Tune on ``validation`` (default: a split of ``matrix``), then fit on ``matrix``."""
        validation = validation or validation_split(matrix, seed=self.seed)
        l2, half_life = self._tune(matrix, validation)
        self._weights, self._modelled = ease_weights(
            matrix, l2, neighbours=self.neighbours, max_items=self.max_items
        )
        self._install(matrix, half_life)

    def _candidates(self, matrix: InteractionMatrix) -> tuple[list[float], list[float | None]]:
        scope = _scope(matrix, self.max_items)
        counts = np.diff(matrix.weights.tocsc().indptr)[scope] if len(scope) else np.ones(1)
        mean = float(max(counts.mean(), 1.0))
        if self.l2 is not None:
            l2s = [self.l2]
        elif len(scope) <= _TUNE_L2_UP_TO:
            l2s = [factor * mean for factor in L2_FACTORS]
        else:
            l2s = [L2_FACTORS[1] * mean]
        requested = self.requested_half_life
        half_lives = list(HALF_LIVES) if requested == "auto" else [requested]
        return l2s, half_lives

    def _tune(
        self, matrix: InteractionMatrix, validation: Validation | None
    ) -> tuple[float, float | None]:
        l2s, half_lives = self._candidates(matrix)
        if validation is None or (len(l2s) == 1 and len(half_lives) == 1):
            self.tuned = {"l2": l2s[0], "half_life": half_lives[0], "validated": False}
            return l2s[0], half_lives[0]
        blocked = validation.blocked()
        best: tuple[float, float, float | None] | None = None
        for l2 in l2s:
            weights, modelled = ease_weights(
                validation.matrix, l2, neighbours=self.neighbours, max_items=self.max_items
            )
            for half_life in half_lives:
                scores = _score(validation.case_profiles(half_life), weights, modelled)
                value = float(ndcg(held_out_ranks(scores, validation.held, blocked)).mean())
                if best is None or value > best[0] + 1e-12:
                    best = (value, l2, half_life)
        assert best is not None
        self.tuned = {
            "l2": round(best[1], 3),
            "half_life": best[2],
            "validation_ndcg": round(best[0], 4),
            "validation_cases": len(validation),
            "validated": True,
        }
        log.debug("ease tuned on validation: %s", self.tuned)
        return best[1], best[2]

    def score_profiles(self, profiles: sp.csr_matrix) -> np.ndarray:
        return _score(profiles, self._weights, self._modelled)

    def score_one(self, columns: np.ndarray, weights: np.ndarray) -> np.ndarray:
        targets, products = gather_rows(self._weights, columns, weights)
        scores = np.bincount(targets, weights=products, minlength=len(self._modelled))
        scores = scores.astype(np.float64, copy=False)
        scores[~self._modelled] = -np.inf
        return scores


def _score(profiles: sp.csr_matrix, weights: sp.csr_matrix, modelled: np.ndarray) -> np.ndarray:
    scores = np.asarray((profiles @ weights).toarray(), dtype=np.float64)
    scores[:, ~modelled] = -np.inf
    return scores


def _scope(matrix: InteractionMatrix, max_items: int) -> np.ndarray:
    """The modelled columns: the ``max_items`` with the most contacts (at least one)."""
    counts = np.bincount(matrix.weights.indices, minlength=matrix.weights.shape[1])
    touched = np.flatnonzero(counts)
    if len(touched) > max_items:
        order = np.lexsort((touched, -counts[touched]))
        touched = np.sort(touched[order[:max_items]])
    return touched


def ease_weights(
    matrix: InteractionMatrix, l2: float, *, neighbours: int = 200, max_items: int = 3000
) -> tuple[sp.csr_matrix, np.ndarray]:
    """The sparsified EASE weights (all columns by catalogue columns) and the modelled mask."""
    n_cols, n_catalogue = matrix.weights.shape[1], matrix.n_catalogue
    modelled = np.zeros(n_catalogue, dtype=bool)
    scope = _scope(matrix, max_items)
    if len(scope) < 2:
        return sp.csr_matrix((n_cols, n_catalogue), dtype=np.float32), modelled
    x = matrix.profile_matrix(None)[:, scope]
    dtype = np.float64 if len(scope) <= 2000 else np.float32
    gram: np.ndarray = np.asarray((x.T @ x).toarray(), dtype=dtype)
    gram.flat[:: gram.shape[0] + 1] += l2
    # Cholesky inverse in place: half the work of a general inverse and no second copy.
    factor, info = (
        scipy.linalg.lapack.dpotrf(gram, overwrite_a=1)
        if dtype == np.float64
        else (scipy.linalg.lapack.spotrf(gram, overwrite_a=1))
    )
    if info != 0:
        raise ConfigurationError(f"EASE: the Gram matrix is not positive definite (info {info})")
    del gram
    potri = scipy.linalg.lapack.dpotri if dtype == np.float64 else scipy.linalg.lapack.spotri
    inverse, info = potri(factor, overwrite_c=1)
    del factor
    if info != 0:
        raise ConfigurationError(f"EASE: inverting the Gram matrix failed (info {info})")
    # potri fills the upper triangle only.
    inverse = np.triu(inverse) + np.triu(inverse, 1).T
    diagonal = np.diag(inverse).copy()
    inverse /= -diagonal[None, :]
    np.fill_diagonal(inverse, 0.0)
    # inverse[i, j] is now B[i, j]: how much having item i says for item j.
    in_catalogue = scope < n_catalogue
    targets = scope[in_catalogue]
    b = inverse[:, in_catalogue]
    del inverse
    keep = min(neighbours, b.shape[1])
    if keep < b.shape[1]:
        top = np.argpartition(-b, keep - 1, axis=1)[:, :keep]
    else:
        top = np.broadcast_to(np.arange(b.shape[1]), (b.shape[0], keep))
    values = np.take_along_axis(b, top, axis=1).astype(np.float32)
    rows = np.repeat(scope, keep)
    weights = sp.csr_matrix(
        (values.ravel(), (rows, targets[top].ravel())), shape=(n_cols, n_catalogue)
    )
    weights.eliminate_zeros()
    modelled[targets] = True
    return weights, modelled
