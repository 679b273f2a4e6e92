"""The hybrid recommender: popularity, EASE and content-based, blended as validation says.

Each part scores the whole catalogue for a contact's profile:

* **popularity** — ``log(1 + popularity)``, the same for everybody;
* **EASE** — the item-to-item model of :mod:`postwise.recommend.ease`;
* **content** — TF-IDF cosine similarity of titles and attributes
  (:mod:`postwise.recommend.content`, without its own prior: popularity is a part here).

Scores are standardised per contact (mean 0, deviation 1) and added with weights. The weights
are not constants: ``fit`` holds out the latest item of up to 2,000 contacts of the data it is
given, scores them with parts fitted on the rest, and picks, separately for *cold* contacts
(1 to 3 items) and *warm* ones, the weights on a 0.1 grid that rank the held-out items best
(NDCG@10). Every part alone is on the grid, so on those validation contacts the blend is at
least as good as the best part for each segment, and a blend replaces the best part alone only
when it beats it by more than two standard errors (smaller gains are noise that would lose to
that part on new data): the hybrid does not lose to its parts for lack of a better constant.
Contacts without history get the popularity ranking.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from postwise.recommend.content import ContentRecommender, prior_scores
from postwise.recommend.ease import EaseRecommender, ease_weights
from postwise.recommend.matrix import InteractionMatrix
from postwise.recommend.scoring import ProfileRecommender
from postwise.recommend.tuning import (
    COLD_MAX_ITEMS,
    best_blend,
    held_out_ranks,
    ndcg,
    standardise,
    validation_split,
)

__all__ = ["DEFAULT_BLEND", "HybridRecommender"]

log = logging.getLogger(__name__)

#: The parts, in the order of blend weights.
PARTS = ("popularity", "ease", "content")
#: Weights used when the data is too small to validate on (fewer than 20 contacts with two
#: items): mostly popularity for cold contacts, mostly EASE for warm ones.
DEFAULT_BLEND: dict[str, tuple[float, ...]] = {"cold": (0.5, 0.3, 0.2), "warm": (0.2, 0.6, 0.2)}


class HybridRecommender(ProfileRecommender):
    """Popularity, EASE and content-based blended per segment by validation."""

    name = "hybrid"
    description = (
        "Popularity, EASE and content-based blended with weights chosen on held-out data, "
        "separately for short and long histories."
    )

    def __init__(
        self,
        *,
        blend: dict[str, Sequence[float]] | None = None,
        ease: EaseRecommender | None = None,
        seed: int = 0,
    ) -> None:
        """``blend``: fixed ``{"cold": (p, e, c), "warm": (...)}`` weights (None: validated)."""
        super().__init__()
        self.fixed_blend = {k: tuple(float(x) for x in v) for k, v in (blend or {}).items()}
        self.ease = ease or EaseRecommender(seed=seed)
        self.content = ContentRecommender(prior=0.0, seed=seed)
        self.seed = seed
        self.blend: dict[str, tuple[float, ...]] = dict(DEFAULT_BLEND)
        #: What tuning chose and measured, for reports.
        self.tuned: dict[str, object] = {}
        self._popularity = np.zeros(0)
        self._popularity_standardised = np.zeros(0)

    @property
    def backend(self) -> str:
        return "popularity+ease+content"

    def fit_matrix(self, matrix: InteractionMatrix) -> None:
        validation = validation_split(matrix, seed=self.seed)
        self.ease.fit_matrix(matrix, validation)
        blend = dict(DEFAULT_BLEND)
        validated: dict[str, object] = {}
        if validation is not None and not (
            "cold" in self.fixed_blend and "warm" in self.fixed_blend
        ):
            # The parts, fitted without the held-out items, score the validation cases.
            half_life = self.ease.half_life
            weights, modelled = ease_weights(
                validation.matrix,
                float(self.ease.tuned.get("l2", 1.0)),  # type: ignore[arg-type]
                neighbours=self.ease.neighbours,
                max_items=self.ease.max_items,
            )
            profiles = validation.case_profiles(half_life)
            ease_scores = np.asarray((profiles @ weights).toarray(), dtype=np.float64)
            ease_scores[:, ~modelled] = -np.inf
            content = ContentRecommender(prior=0.0, half_life=half_life)
            content.fit_matrix(validation.matrix)
            content_scores = content.similarity(profiles)
            popularity = np.broadcast_to(prior_scores(validation.matrix), ease_scores.shape).copy()
            blocked = validation.blocked()
            everything = [popularity, ease_scores, content_scores]
            # The part best on all validation contacts is what each segment keeps unless a
            # blend or another part beats it clearly there: near-ties go to the overall best.
            overall = [
                float(ndcg(held_out_ranks(part, validation.held, blocked)).mean())
                for part in everything
            ]
            reference = int(np.argmax(overall))
            for segment, mask in (("cold", validation.cold), ("warm", ~validation.cold)):
                if segment in self.fixed_blend or mask.sum() < 10:
                    continue
                parts = [part[mask] for part in everything]
                weights_chosen, value = best_blend(
                    parts, validation.held[mask], blocked[mask], reference=reference
                )
                blend[segment] = weights_chosen
                validated[segment] = {
                    "weights": dict(zip(PARTS, weights_chosen, strict=True)),
                    "validation_ndcg": round(value, 4),
                    "cases": int(mask.sum()),
                }
        blend.update(self.fixed_blend)
        self.blend = blend
        self.content = ContentRecommender(prior=0.0, half_life=self.ease.half_life)
        self.content.fit_matrix(matrix)
        self._popularity = prior_scores(matrix)
        self._popularity_standardised = _standardise_one(self._popularity)
        self.tuned = {
            "ease": self.ease.tuned,
            "blend": {k: dict(zip(PARTS, v, strict=True)) for k, v in blend.items()},
            "validation": validated,
        }
        log.debug("hybrid tuned on validation: %s", self.tuned)
        self._install(matrix, self.ease.half_life)

    def score_profiles(self, profiles: sp.csr_matrix) -> np.ndarray:
        lengths = np.diff(profiles.indptr)
        return self._blend(profiles, lengths)

    def score_one(self, columns: np.ndarray, weights: np.ndarray) -> np.ndarray:
        segment = "cold" if len(columns) <= COLD_MAX_ITEMS else "warm"
        blend = self.blend[segment]
        result = blend[0] * self._popularity_standardised
        if blend[1] > 0:
            result = result + blend[1] * _standardise_one(self.ease.score_one(columns, weights))
        if blend[2] > 0:
            similarity = self.content.similarity_one(columns, weights)
            result = result + blend[2] * _standardise_one(similarity)
        return np.asarray(result, dtype=np.float64)

    def _blend(self, profiles: sp.csr_matrix, lengths: np.ndarray) -> np.ndarray:
        parts = [
            np.broadcast_to(self._popularity, (profiles.shape[0], len(self._popularity))),
            self.ease.score_profiles(profiles),
            self.content.similarity(profiles),
        ]
        standardised = [standardise(part) for part in parts]
        cold = (lengths <= COLD_MAX_ITEMS)[:, None]
        result = np.zeros_like(standardised[0])
        for index, part in enumerate(standardised):
            weight = np.where(cold, self.blend["cold"][index], self.blend["warm"][index])
            result += weight * part
        return result


def _standardise_one(scores: np.ndarray) -> np.ndarray:
    """:func:`~postwise.recommend.tuning.standardise` of one row."""
    return standardise(scores[None, :])[0]
