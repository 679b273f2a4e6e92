"""Content-based filtering: items like the ones the contact interacted with.

Every catalogue item becomes a TF-IDF vector of its features:

* the words of its title (lower-cased, two letters or more, a few stop words left out);
* each string attribute as one feature ``name=value`` (``category=shoes``), and the words of
  string values longer than one word; lists of strings give one feature per element;
* booleans as ``name=true`` / ``name=false``. Numbers are left out: a price of 19 and one of
  21 would otherwise be as different as 19 and 1900.

Features found in more than half of the catalogue are dropped: they separate nothing. Rows are
L2-normalised, so a dot product is the cosine similarity. A contact's profile is the
sum of the vectors of the items in its profile (see :mod:`postwise.recommend.scoring`: the
strongest interaction counts 1, older items less with a recency half-life); items are ranked by
their cosine similarity to the profile plus a popularity prior, ``prior · log(1 + popularity) /
log(1 + top popularity)``: between two equally similar items the one more contacts chose is the
safer bet, and items sharing no feature with the profile follow in popularity order. The prior
weight and the half-life are chosen on a validation split of the training data
(:mod:`postwise.recommend.tuning`). Contacts without history get the popularity ranking. New
items rank from their first day: they need metadata, not interactions.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from typing import Any, Final, Literal

import numpy as np
import scipy.sparse as sp

from postwise.errors import ConfigurationError
from postwise.recommend.base import Item
from postwise.recommend.matrix import InteractionMatrix, gather_rows
from postwise.recommend.scoring import ProfileRecommender
from postwise.recommend.tuning import Validation, held_out_ranks, ndcg, validation_split

__all__ = ["ContentRecommender", "item_features"]

_WORD = re.compile(r"[^\W_]{2,}")
_STOP_WORDS = frozenset(
    {"an", "and", "are", "as", "at", "be", "by", "for", "from", "in", "into", "is", "it"}
    | {"of", "on", "or", "our", "the", "to", "with", "you", "your"}
)
#: Features found in more than this share of the catalogue are dropped.
_MAX_DOCUMENT_SHARE = 0.5
#: Longer attribute values are free text: their words count, the whole value does not.
_MAX_VALUE_FEATURE = 80


def _words(text: str) -> Iterator[str]:
    for word in _WORD.findall(text.lower()):
        if word not in _STOP_WORDS:
            yield word


def _attribute_features(name: str, value: Any) -> Iterator[str]:
    key = name.strip().lower()
    if isinstance(value, bool):
        yield f"{key}={'true' if value else 'false'}"
    elif isinstance(value, str):
        text = value.strip().lower()
        if text and len(text) <= _MAX_VALUE_FEATURE:
            yield f"{key}={text}"
        if " " in text:
            yield from _words(text)
    elif isinstance(value, list | tuple):
        for element in value:
            if isinstance(element, str | bool):
                yield from _attribute_features(name, element)


def item_features(item: Item) -> list[str]:
    """The features of ``item`` (see the module docstring), with repeats."""
    features = list(_words(item.title))
    attributes: Mapping[str, Any] = item.attributes or {}
    for name in sorted(attributes):
        features.extend(_attribute_features(name, attributes[name]))
    return features


class ContentRecommender(ProfileRecommender):
    """Items whose title and attributes resemble those of the contact's items (TF-IDF cosine),
    with a popularity prior."""

    name = "content"
    description = "Items similar in title and attributes to what the contact viewed or bought."

    def __init__(
        self,
        *,
        prior: float | None = None,
        half_life: float | Literal["auto"] | None = "auto",
        seed: int = 0,
    ) -> None:
        """``prior``: the weight of popularity (None: chosen on a validation split)."""
        super().__init__()
        if prior is not None and prior < 0:
            raise ConfigurationError(f"prior must be 0 or more, got {prior}")
        self.prior = prior
        self.requested_half_life: float | Literal["auto"] | None = half_life
        self.seed = seed
        #: What tuning chose and measured.
        self.tuned: dict[str, object] = {}
        self._vectors = sp.csr_matrix((0, 0), dtype=np.float32)
        self._postings = sp.csr_matrix((0, 0), dtype=np.float32)
        self._popularity = np.zeros(0)

    def fit_matrix(self, matrix: InteractionMatrix, validation: Validation | None = None) -> None:
        self._vectors = _tfidf([item_features(item) for item in matrix.items])
        # Features x items: scoring walks only the items that share a feature with the profile.
        self._postings = self._vectors.T.tocsr()
        priors = list(PRIORS) if self.prior is None else [self.prior]
        requested = self.requested_half_life
        half_lives = list(HALF_LIVES) if requested == "auto" else [requested]
        if validation is None and (len(priors) > 1 or len(half_lives) > 1):
            validation = validation_split(matrix, seed=self.seed)
        prior, half_life = priors[0], half_lives[0]
        if validation is not None and (len(priors) > 1 or len(half_lives) > 1):
            blocked = validation.blocked()
            popularity = prior_scores(validation.matrix)
            best: tuple[float, float, float | None] | None = None
            for candidate_half_life in half_lives:
                similarity = self.similarity(validation.case_profiles(candidate_half_life))
                for candidate_prior in priors:
                    scores = _with_prior(similarity, popularity, candidate_prior)
                    value = float(ndcg(held_out_ranks(scores, validation.held, blocked)).mean())
                    if best is None or value > best[0] + 1e-12:
                        best = (value, candidate_prior, candidate_half_life)
            assert best is not None
            _, prior, half_life = best
            self.tuned = {
                "prior": prior,
                "half_life": half_life,
                "validation_ndcg": round(best[0], 4),
                "validated": True,
            }
        else:
            self.tuned = {"prior": prior, "half_life": half_life, "validated": False}
        self.prior_weight = prior
        self._popularity = prior_scores(matrix)
        self._install(matrix, half_life)

    def similarity(self, profiles: sp.csr_matrix) -> np.ndarray:
        """Cosine similarity of each profile to every catalogue item (``-inf``: none)."""
        n_catalogue = self._vectors.shape[0]
        cases = sp.csr_matrix(profiles[:, :n_catalogue], dtype=np.float64)
        profile = cases @ self._vectors
        profile = sp.csr_matrix(profile)
        norms = np.sqrt(np.asarray(profile.multiply(profile).sum(axis=1)).ravel())
        norms[norms == 0.0] = 1.0
        profile = sp.diags(1.0 / norms) @ profile
        scores = np.asarray((profile @ self._postings).toarray(), dtype=np.float64)
        return np.where(scores > 0.0, scores, -np.inf)

    def similarity_one(self, columns: np.ndarray, weights: np.ndarray) -> np.ndarray:
        """:meth:`similarity` of one profile given as columns and weights (the fast path)."""
        n_catalogue = self._vectors.shape[0]
        inside = columns < n_catalogue
        features, values = gather_rows(self._vectors, columns[inside], weights[inside])
        if len(features) == 0:
            return np.full(n_catalogue, -np.inf)
        profile_features, slot = np.unique(features, return_inverse=True)
        sums = np.bincount(slot, weights=values)
        profile = sums / (float(np.linalg.norm(sums)) or 1.0)
        items, products = gather_rows(self._postings, profile_features, profile)
        scores = np.bincount(items, weights=products, minlength=n_catalogue)
        return np.where(scores > 0.0, scores, -np.inf)

    def score_profiles(self, profiles: sp.csr_matrix) -> np.ndarray:
        return _with_prior(self.similarity(profiles), self._popularity, self.prior_weight)

    def score_one(self, columns: np.ndarray, weights: np.ndarray) -> np.ndarray:
        similarity = self.similarity_one(columns, weights)
        return _with_prior(similarity[None, :], self._popularity, self.prior_weight)[0]


#: Popularity prior weights tried (cosine similarity is 0..1, the prior 0..1 times this).
PRIORS: Final = (0.0, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2)
#: Recency half-lives (in items) tried for content profiles.
HALF_LIVES: Final[tuple[float | None, ...]] = (None, 3.0, 10.0)


def prior_scores(matrix: InteractionMatrix) -> np.ndarray:
    """Popularity as a prior in 0..1: ``log(1 + score) / log(1 + best score)``."""
    values = np.log1p(np.maximum(matrix.popularity_scores.astype(np.float64), 0.0))
    top = float(values.max()) if len(values) else 0.0
    return values / top if top > 0 else values


def _with_prior(similarity: np.ndarray, popularity: np.ndarray, prior: float) -> np.ndarray:
    if prior <= 0:
        return similarity
    # Items sharing nothing with the profile rank by the prior alone, after similar ones.
    return np.where(np.isfinite(similarity), similarity, 0.0) + prior * popularity[None, :]


def _tfidf(documents: list[list[str]]) -> sp.csr_matrix:
    """L2-normalised TF-IDF rows (sublinear term frequency, smoothed IDF)."""
    vocabulary: dict[str, int] = {}
    indptr = [0]
    indices: list[int] = []
    counts: list[float] = []
    for features in documents:
        row: dict[int, int] = {}
        for feature in features:
            column = vocabulary.setdefault(feature, len(vocabulary))
            row[column] = row.get(column, 0) + 1
        for column in sorted(row):
            indices.append(column)
            counts.append(1.0 + math.log(row[column]))
        indptr.append(len(indices))
    matrix = sp.csr_matrix(
        (np.asarray(counts, dtype=np.float64), np.asarray(indices, dtype=np.int32), indptr),
        shape=(len(documents), len(vocabulary)),
    )
    n_documents = len(documents)
    document_frequency = np.bincount(matrix.indices, minlength=len(vocabulary))
    idf = np.log((1.0 + n_documents) / (1.0 + document_frequency)) + 1.0
    # A feature of most items (the shop's name in every title) separates nothing, yet would
    # make every item similar to every other and cost a walk over the whole catalogue.
    idf[document_frequency > _MAX_DOCUMENT_SHARE * n_documents] = 0.0
    matrix = matrix @ sp.diags(idf)
    matrix.eliminate_zeros()
    norms = np.sqrt(np.asarray(matrix.multiply(matrix).sum(axis=1)).ravel())
    norms[norms == 0.0] = 1.0
    return sp.csr_matrix(sp.diags(1.0 / norms) @ matrix, dtype=np.float32)
