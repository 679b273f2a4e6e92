"""Content-based filtering: items like the ones the contact interacted with.

Every catalogue item becomes a TF-IDF vector of its features:

* the words of its title (lower-cased, two letters or more, a few stop words left out);
* each string attribute as one feature ``name=value`` (``category=shoes``), and the words of
  string values longer than one word; lists of strings give one feature per element;
* booleans as ``name=true`` / ``name=false``. Numbers are left out: a price of 19 and one of
  21 would otherwise be as different as 19 and 1900.

Features found in more than half of the catalogue are dropped: they separate nothing. Rows are
L2-normalised, so a dot product is the cosine similarity. A contact's profile is the
sum of the vectors of the items it interacted with, each weighted by ``log(1 + weight)``; items
are ranked by their cosine similarity to the profile. Items sharing no feature with the profile
are not scored and come last, in popularity order, as do all items for contacts without
history. New items rank from their first day: they need metadata, not interactions.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from postwise.recommend.base import Interaction, Item, Recommender
from postwise.recommend.matrix import InteractionMatrix, top_items

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


class ContentRecommender(Recommender):
    """Items whose title and attributes resemble those of the contact's items (TF-IDF cosine)."""

    name = "content"
    description = "Items similar in title and attributes to what the contact viewed or bought."

    def __init__(self) -> None:
        self._matrix: InteractionMatrix | None = None
        self._vectors = sp.csr_matrix((0, 0), dtype=np.float32)
        self._postings = sp.csr_matrix((0, 0), dtype=np.float32)

    def fit(self, interactions: Iterable[Interaction], items: Sequence[Item]) -> None:
        self.fit_matrix(InteractionMatrix.build(interactions, items))

    def fit_matrix(self, matrix: InteractionMatrix) -> None:
        """Learn from an already built matrix (the hybrid shares one with collaborative)."""
        self._matrix = matrix
        self._vectors = _tfidf([item_features(item) for item in matrix.items])
        # Features x items: scoring walks only the items that share a feature with the profile.
        self._postings = self._vectors.T.tocsr()

    def scores(self, contact_id: int) -> np.ndarray | None:
        """Cosine similarity of every catalogue item to the contact's profile (``-inf``: none)."""
        matrix = self._matrix
        if matrix is None:
            return None
        row = matrix.row(contact_id)
        if row is None:
            return None
        columns, weights = matrix.history(row)
        in_catalogue = columns < matrix.n_catalogue
        if not in_catalogue.any():
            return None
        features, values = _gather(
            self._vectors, columns[in_catalogue], np.log1p(weights[in_catalogue])
        )
        if len(features) == 0:
            return None
        # The profile: the weighted sum of the history's item vectors, one value per feature.
        profile_features, slot = np.unique(features, return_inverse=True)
        weights_sum = np.bincount(slot, weights=values)
        profile = weights_sum / (float(np.linalg.norm(weights_sum)) or 1.0)
        items, products = _gather(self._postings, profile_features, profile)
        scores = np.bincount(items, weights=products, minlength=matrix.n_catalogue)
        return np.where(scores > 0.0, scores, -np.inf)

    def recommend(self, contact_id: int, n: int, *, exclude: Iterable[str] = ()) -> list[Item]:
        matrix = self._matrix
        if matrix is None or n <= 0:
            return []
        blocked = matrix.blocked(matrix.row(contact_id), exclude)
        return top_items(matrix, self.scores(contact_id), n, blocked)


def _gather(
    matrix: sp.csr_matrix, rows: np.ndarray, weights: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """The column indices and weighted values of ``rows`` of ``matrix``, concatenated."""
    starts = matrix.indptr[rows]
    lengths = matrix.indptr[rows + 1] - starts
    # Concatenated ranges start..start+length without a Python loop.
    shifts = starts - np.concatenate(([0], np.cumsum(lengths)[:-1]))
    positions = np.repeat(shifts, lengths) + np.arange(int(lengths.sum()))
    values = matrix.data[positions].astype(np.float64) * np.repeat(weights, lengths)
    return matrix.indices[positions], values


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
