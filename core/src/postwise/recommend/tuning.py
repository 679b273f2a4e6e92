"""Choosing settings on a validation split of the training data, never on the test split.

Every learnt recommender tunes itself inside :meth:`fit`: it holds out the latest item of a
sample of the contacts it is given, fits candidate settings on the rest, keeps the ones that
rank the held-out items best (NDCG@10), and refits on everything with them. Because tuning only
ever sees the interactions handed to ``fit``, an offline evaluation that hides its test items
from ``fit`` (``postwise recommend evaluate``) can never tune on them.

Short histories are served differently from long ones, so the validation contacts come in two
segments: *cold* (1 to :data:`COLD_MAX_ITEMS` items) and *warm*. Contacts with few items are
rare in some data (every MovieLens user rated 20 films), so warm validation contacts are also
replayed as cold ones: the same held-out item, predicted from their latest one to three items
only.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from itertools import product
from typing import Final

import numpy as np
import scipy.sparse as sp

from postwise.recommend.matrix import InteractionMatrix

__all__ = [
    "COLD_MAX_ITEMS",
    "Validation",
    "blend_grid",
    "held_out_ranks",
    "ndcg",
    "segment_of",
    "standardise",
    "validation_split",
]

#: Contacts with at most this many distinct items are "cold"; more are "warm".
COLD_MAX_ITEMS: Final = 3
#: Ranks are judged at this cut-off while tuning (the size of a typical block and report).
TUNING_K: Final = 10
#: A blend replaces the best single part only when it beats it by this many standard errors of
#: the paired difference on the validation contacts.
_BLEND_MARGIN: Final = 2.0
#: Validation contacts times catalogue items scored at once, bounding tuning memory.
_MAX_CELLS: Final = 3_000_000


def segment_of(history_length: int) -> str:
    """``"cold"`` for 1..COLD_MAX_ITEMS items, ``"warm"`` above (0: ``"none"``)."""
    if history_length <= 0:
        return "none"
    return "cold" if history_length <= COLD_MAX_ITEMS else "warm"


@dataclass(frozen=True)
class Validation:
    """A training matrix and, per validation case, a profile to score and the item to find.

    Case ``c`` is row ``rows[c]`` of ``matrix`` predicting column ``held[c]`` from its latest
    ``keep_latest[c]`` items; ``cold[c]`` tells its segment.
    """

    matrix: InteractionMatrix
    rows: np.ndarray
    held: np.ndarray
    keep_latest: np.ndarray
    cold: np.ndarray
    #: Per pair of ``matrix``: how many of the contact's items are more recent (contacts
    #: without times: a random order), which decides what a cold replay keeps.
    order: np.ndarray

    def _kept(self) -> np.ndarray:
        """Per stored entry of ``matrix.weights[rows]``: whether the case keeps that item."""
        positions = sp.csr_matrix(
            (
                self.order.astype(np.float64) + 1.0,
                self.matrix.weights.indices,
                self.matrix.weights.indptr,
            ),
            shape=self.matrix.weights.shape,
        )[self.rows]
        # position + 1 <= keep_latest keeps a case's latest ``keep_latest`` items.
        limits = np.repeat(self.keep_latest, np.diff(positions.indptr))
        return np.asarray(positions.data <= limits)

    def case_profiles(self, half_life: float | None) -> sp.csr_matrix:
        """Profiles of every case: warm cases whole, cold cases their latest items only."""
        rows = self.matrix.profile_matrix(half_life)[self.rows]
        data = np.where(self._kept(), rows.data, 0.0).astype(np.float32)
        result = sp.csr_matrix((data, rows.indices, rows.indptr), shape=rows.shape)
        result.eliminate_zeros()
        return result

    def blocked(self) -> sp.csr_matrix:
        """Per case, the items its profile holds (never recommended).

        A cold replay blocks only the items it keeps, as a new contact with those items only
        would: blocking its whole history would hand popularity the held-out item.
        """
        seen = self.matrix.weights[self.rows]
        result = sp.csr_matrix(
            (self._kept(), seen.indices, seen.indptr), shape=seen.shape, dtype=bool
        )
        result.eliminate_zeros()
        return result

    def __len__(self) -> int:
        return len(self.rows)


def validation_split(
    matrix: InteractionMatrix,
    *,
    max_cases: int = 2000,
    cold_replay_share: float = 1.0,
    seed: int = 0,
) -> Validation | None:
    """Hold out each sampled contact's latest item; None when too few contacts have two.

    At most ``max_cases`` cases (fewer for a large catalogue, to bound memory); a share
    ``cold_replay_share`` of the warm contacts is replayed as cold (see the module docstring).
    """
    n_catalogue = matrix.n_catalogue
    if matrix.n_pairs == 0 or n_catalogue < 2:
        return None
    budget = max(50, min(max_cases, _MAX_CELLS // max(n_catalogue, 1)))
    counts = np.diff(matrix.weights.indptr)
    positions = matrix.recency_positions()
    pair_rows = np.repeat(np.arange(len(counts)), counts)
    rng = np.random.default_rng(seed)
    latest = np.flatnonzero(positions == 0)
    # Contacts without times have several items at position 0: pick one at random.
    latest = latest[rng.permutation(len(latest))]
    rows_all = pair_rows[latest]
    _, first = np.unique(rows_all, return_index=True)
    latest = latest[first]
    rows, cols = pair_rows[latest], matrix.weights.indices[latest]
    usable = (counts[rows] >= 2) & (cols < n_catalogue)
    rows, cols = rows[usable], cols[usable]
    if len(rows) < 20:
        return None
    if len(rows) > budget:
        chosen = np.sort(rng.choice(len(rows), size=budget, replace=False))
        rows, cols = rows[chosen], cols[chosen]
    train = matrix.without(rows, cols)
    # Rows keep their index: every sampled contact keeps at least one pair.
    history = counts[rows] - 1
    keep_latest = np.full(len(rows), np.iinfo(np.int32).max, dtype=np.int64)
    cold = history <= COLD_MAX_ITEMS
    warm = np.flatnonzero(~cold)
    replay = warm[rng.random(len(warm)) < cold_replay_share]
    case_rows = np.concatenate([rows, rows[replay]])
    case_held = np.concatenate([cols, cols[replay]])
    case_keep = np.concatenate([keep_latest, rng.integers(1, COLD_MAX_ITEMS + 1, len(replay))])
    case_cold = np.concatenate([cold, np.ones(len(replay), dtype=bool)])
    order = train.recency_positions()
    train_counts = np.diff(train.weights.indptr)
    train_rows = np.repeat(np.arange(len(train_counts)), train_counts)
    untimed = (
        np.bincount(train_rows, weights=~np.isnan(train.last_at), minlength=len(train_counts))[
            train_rows
        ]
        == 0
    )
    if untimed.any():
        shuffled = np.lexsort((rng.random(len(train_rows)), train_rows))
        rank = np.empty(len(train_rows), dtype=np.int64)
        rank[shuffled] = np.arange(len(train_rows)) - train.weights.indptr[train_rows[shuffled]]
        order = np.where(untimed, rank, order)
    return Validation(train, case_rows, case_held, case_keep, case_cold, order)


def standardise(scores: np.ndarray) -> np.ndarray:
    """Each row to mean 0 and deviation 1 over its finite scores; unscored items below all."""
    result = np.array(scores, dtype=np.float32, copy=True)
    finite = np.isfinite(result)
    counts = finite.sum(axis=1)
    safe = np.where(finite, result, 0.0)
    mean = safe.sum(axis=1) / np.maximum(counts, 1)
    deviation = np.sqrt(
        np.where(finite, (safe - mean[:, None]) ** 2, 0.0).sum(axis=1) / np.maximum(counts, 1)
    )
    deviation[deviation == 0.0] = 1.0
    result = ((safe - mean[:, None]) / deviation[:, None]).astype(np.float32)
    floor = np.where(finite, result, np.inf).min(axis=1, initial=np.inf)
    floor = np.where(np.isfinite(floor), floor, 0.0) - 1.0
    return np.where(finite, result, floor[:, None])


def held_out_ranks(scores: np.ndarray, held: np.ndarray, blocked: sp.csr_matrix) -> np.ndarray:
    """The 0-based rank of each case's held-out item among its unblocked items.

    Ties rank as :func:`postwise.recommend.matrix.top_items` breaks them (catalogue order).
    """
    scores = np.array(scores, dtype=np.float32, copy=True)
    n_cases, n_catalogue = scores.shape
    block = blocked[:, :n_catalogue].tocoo()
    scores[block.row, block.col] = -np.inf
    target = scores[np.arange(n_cases), held][:, None]
    columns = np.arange(n_catalogue)[None, :]
    ahead = (scores > target) | ((scores == target) & (columns < held[:, None]))
    return ahead.sum(axis=1)


def ndcg(ranks: np.ndarray, k: int = TUNING_K) -> np.ndarray:
    """Per case: ``1 / log2(rank + 2)`` when the held-out item is in the top ``k``, else 0."""
    return np.where(ranks < k, 1.0 / np.log2(ranks + 2.0), 0.0)


def blend_grid(parts: int, step: float = 0.1) -> Iterator[tuple[float, ...]]:
    """Every weight vector on the simplex with the given step (each part alone included)."""
    units = round(1.0 / step)
    for combo in product(range(units + 1), repeat=parts - 1):
        if sum(combo) <= units:
            yield (*(c * step for c in combo), (units - sum(combo)) * step)


def best_blend(
    parts: Sequence[np.ndarray],
    held: np.ndarray,
    blocked: sp.csr_matrix,
    *,
    step: float = 0.1,
    judge: Callable[[np.ndarray], float] | None = None,
    reference: int | None = None,
) -> tuple[tuple[float, ...], float]:
    """The weights of standardised ``parts`` whose blend ranks ``held`` best, and the score.

    ``judge`` turns per-case NDCG@10 into the figure to maximise (default: the mean). Every
    part alone is on the grid, so the chosen blend is never worse than the best part on these
    cases; a blend is kept only when it beats that part clearly (see below). ``reference``
    names the part to keep unless something beats it clearly (default: the best part alone on
    these cases).
    """
    standardised = [standardise(part) for part in parts]
    best: tuple[tuple[float, ...], float, np.ndarray] | None = None
    best_single: tuple[tuple[float, ...], float, np.ndarray] | None = None
    for weights in blend_grid(len(parts), step):
        blended = sum(w * s for w, s in zip(weights, standardised, strict=True) if w > 0)
        assert isinstance(blended, np.ndarray)
        gains = ndcg(held_out_ranks(blended, held, blocked))
        value = judge(gains) if judge is not None else float(gains.mean())
        if best is None or value > best[1] + 1e-12:
            best = (weights, value, gains)
        single = max(weights) > 1 - 1e-9
        if reference is not None:
            if single and weights[reference] > 1 - 1e-9:
                best_single = (weights, value, gains)
        elif single and (best_single is None or value > best_single[1] + 1e-12):
            best_single = (weights, value, gains)
    assert best is not None and best_single is not None
    # A blend must beat the best part alone by more than _BLEND_MARGIN standard errors of the
    # paired difference: with a few hundred validation contacts, smaller gains are noise, and
    # choosing noise would lose to that part on new data.
    difference = best[2] - best_single[2]
    error = float(difference.std(ddof=1)) / np.sqrt(len(difference)) if len(difference) > 1 else 0.0
    if best is not best_single and float(difference.mean()) <= _BLEND_MARGIN * error:
        return best_single[0], best_single[1]
    return best[0], best[1]
