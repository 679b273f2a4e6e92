"""Interactions as a sparse contacts-by-items matrix, shared by the learnt recommenders.

:class:`InteractionMatrix` is what the collaborative, content-based and hybrid recommenders
learn from and answer with. It is built in one pass over an iterable of interactions (which may
be a generator streaming from the database) into compact typed arrays, so memory grows with
the number of distinct (contact, item) pairs, about 12 bytes each, never with Python objects
per interaction.

Columns are the catalogue first, in catalogue order, then items that appear in interactions but
not in the catalogue (discontinued products): they still say something about a contact's taste,
but are never recommended.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import scipy.sparse as sp

from postwise.recommend.base import Interaction, Item

__all__ = ["InteractionMatrix", "gather_rows", "top_items"]


@dataclass(frozen=True, slots=True, eq=False)
class InteractionMatrix:
    """Summed interaction weights per (contact, item), plus the popularity ranking."""

    #: The recommendable items; column ``j < len(items)`` is ``items[j]``.
    items: tuple[Item, ...]
    #: Column index of every known item id (catalogue and interaction-only items).
    columns: dict[str, int]
    #: Sorted contact ids; row ``r`` of :attr:`weights` belongs to ``contact_ids[r]``.
    contact_ids: np.ndarray
    #: ``float32`` CSR matrix, contacts by columns, the summed weight of each pair.
    weights: sp.csr_matrix
    #: Catalogue columns, most popular first (decayed weight, then catalogue order).
    popularity: np.ndarray
    #: Seconds since the epoch of each pair's latest interaction, aligned with
    #: ``weights.data`` (NaN when the interaction had no time).
    last_at: np.ndarray
    #: Decayed popularity score of every catalogue column (what :attr:`popularity` sorts).
    popularity_scores: np.ndarray

    @classmethod
    def build(
        cls,
        interactions: Iterable[Interaction],
        items: Sequence[Item],
        *,
        half_life_days: float | None = 30.0,
        now: datetime | None = None,
    ) -> InteractionMatrix:
        """Read ``interactions`` once; weights that are not positive and finite are dropped.

        ``half_life_days`` decays the popularity ranking by the age of each interaction (the
        matrix itself keeps the undecayed weights).
        """
        columns: dict[str, int] = {}
        catalogue: list[Item] = []
        for item in items:
            if item.id not in columns:
                columns[item.id] = len(catalogue)
                catalogue.append(item)
        contacts = array("q")
        cols = array("i")
        weights = array("f")
        times = array("d")
        for interaction in interactions:
            weight = float(interaction.weight)
            if not (weight > 0.0 and math.isfinite(weight)):
                continue
            column = columns.get(interaction.item_id)
            if column is None:
                column = columns[interaction.item_id] = len(columns)
            contacts.append(int(interaction.contact_id))
            cols.append(column)
            weights.append(weight)
            at = interaction.at
            times.append(at.timestamp() if at is not None else math.nan)
        weight_array = np.frombuffer(weights, dtype=np.float32)
        time_array = np.frombuffer(times, dtype=np.float64)
        decayed = weight_array.astype(np.float64)
        known = ~np.isnan(time_array)
        if half_life_days and known.any():
            # Ages count from ``now``, or else from the latest interaction: the ranking is the
            # same either way, and the model's bytes do not depend on when it was trained.
            reference = now.timestamp() if now is not None else float(time_array[known].max())
            ages = np.maximum(0.0, reference - time_array[known]) / 86400.0
            decayed[known] *= 0.5 ** (ages / half_life_days)
        return cls.from_arrays(
            tuple(catalogue),
            columns,
            np.frombuffer(contacts, dtype=np.int64),
            np.frombuffer(cols, dtype=np.int32),
            weight_array,
            time_array,
            decayed,
        )

    @classmethod
    def from_arrays(  # noqa: PLR0917 - parallel arrays, always passed together
        cls,
        items: tuple[Item, ...],
        columns: dict[str, int],
        contacts: np.ndarray,
        cols: np.ndarray,
        weights: np.ndarray,
        times: np.ndarray,
        decayed: np.ndarray | None = None,
    ) -> InteractionMatrix:
        """The matrix of parallel arrays of interactions (repeated pairs add up)."""
        contact_ids, rows = np.unique(contacts.astype(np.int64), return_inverse=True)
        n_rows, n_cols = len(contact_ids), len(columns)
        # One entry per pair, in CSR order: sums of weights, the latest time.
        keys = rows.astype(np.int64) * max(n_cols, 1) + cols.astype(np.int64)
        unique_keys, slot = np.unique(keys, return_inverse=True)
        summed = np.bincount(slot, weights=weights, minlength=len(unique_keys))
        known = ~np.isnan(times)
        latest = np.full(len(unique_keys), -np.inf)
        np.maximum.at(latest, slot[known], times[known])
        latest[np.isinf(latest)] = np.nan
        pair_rows = unique_keys // max(n_cols, 1)
        indptr = np.zeros(n_rows + 1, dtype=np.int64)
        np.cumsum(np.bincount(pair_rows, minlength=n_rows), out=indptr[1:])
        matrix = sp.csr_matrix(
            (
                summed.astype(np.float32),
                (unique_keys % max(n_cols, 1)).astype(np.int32),
                indptr,
            ),
            shape=(n_rows, n_cols),
        )
        base = decayed if decayed is not None else weights
        scores = np.bincount(
            cols.astype(np.int64), weights=base.astype(np.float64), minlength=n_cols
        )[: len(items)]
        # Ties (and items nobody touched) keep catalogue order, so the ranking is deterministic.
        popularity = np.lexsort((np.arange(len(items)), -scores)).astype(np.int32)
        return cls(tuple(items), columns, contact_ids, matrix, popularity, latest, scores)

    def without(self, contact_rows: np.ndarray, item_columns: np.ndarray) -> InteractionMatrix:
        """This matrix less one pair per given row (a validation split); same columns."""
        coo = self.weights.tocoo()
        drop = np.zeros(self.weights.shape[0], dtype=np.int64) - 1
        drop[contact_rows] = item_columns
        keep = coo.col != drop[coo.row]
        return InteractionMatrix.from_arrays(
            self.items,
            self.columns,
            self.contact_ids[coo.row[keep]],
            coo.col[keep].astype(np.int32),
            coo.data[keep],
            self.last_at[keep],
        )

    def recency_positions(self) -> np.ndarray:
        """For each pair (aligned with ``weights.data``): 0 for the contact's latest item, 1
        for the one before, and so on (pairs without a time count as oldest; ties: the
        greater column is later). Contacts without any time: 0 for every item."""
        n_pairs = self.n_pairs
        counts = np.diff(self.weights.indptr)
        rows = np.repeat(np.arange(self.weights.shape[0]), counts)
        times = np.nan_to_num(self.last_at, nan=-np.inf)
        order = np.lexsort((self.weights.indices, times, rows))
        ends = np.repeat(self.weights.indptr[1:], counts)
        positions = np.empty(n_pairs, dtype=np.int64)
        # order is grouped by row, oldest first: position = (row end - 1) - place in order.
        positions[order] = ends - 1 - np.arange(n_pairs)
        # A contact none of whose interactions has a time has no order: all its items are 0.
        timed = np.bincount(rows, weights=~np.isnan(self.last_at), minlength=len(counts)) > 0
        positions[~timed[rows]] = 0
        return positions

    def profile_matrix(self, half_life: float | None) -> sp.csr_matrix:
        """Contacts by columns: each pair's profile weight.

        The weight is ``log(1 + weight) / log(1 + the contact's largest weight)`` (so event
        weight units do not matter, and a purchase still counts more than a view), times
        ``0.5 ** (position / half_life)`` where position 0 is the contact's latest item:
        recent interests count more. ``half_life`` None: no decay.
        """
        values = np.log1p(self.weights.data.astype(np.float64))
        if self.n_pairs:
            counts = np.diff(self.weights.indptr)
            nonempty = counts > 0
            row_max = np.zeros(len(counts))
            row_max[nonempty] = np.maximum.reduceat(values, self.weights.indptr[:-1][nonempty])
            values = values / np.repeat(np.where(row_max > 0, row_max, 1.0), counts)
        if half_life is not None and self.n_pairs:
            values = values * 0.5 ** (self.recency_positions() / half_life)
        return sp.csr_matrix(
            (values.astype(np.float32), self.weights.indices, self.weights.indptr),
            shape=self.weights.shape,
        )

    @property
    def n_catalogue(self) -> int:
        """How many columns are recommendable items."""
        return len(self.items)

    @property
    def n_pairs(self) -> int:
        """Distinct (contact, item) pairs."""
        return int(self.weights.nnz)

    def row(self, contact_id: int) -> int | None:
        """The row of ``contact_id``, or None when the contact has no interactions."""
        index = int(np.searchsorted(self.contact_ids, contact_id))
        if index < len(self.contact_ids) and int(self.contact_ids[index]) == contact_id:
            return index
        return None

    def history(self, row: int) -> tuple[np.ndarray, np.ndarray]:
        """The columns a row interacted with, and the summed weights."""
        start, end = self.weights.indptr[row], self.weights.indptr[row + 1]
        return self.weights.indices[start:end], self.weights.data[start:end]

    def blocked(self, row: int | None, exclude: Iterable[str]) -> np.ndarray:
        """A mask over the catalogue: items the contact already has, and ``exclude``."""
        mask = np.zeros(self.n_catalogue, dtype=bool)
        if row is not None:
            seen, _ = self.history(row)
            mask[seen[seen < self.n_catalogue]] = True
        for item_id in exclude:
            column = self.columns.get(item_id)
            if column is not None and column < self.n_catalogue:
                mask[column] = True
        return mask


def top_items(
    matrix: InteractionMatrix, scores: np.ndarray | None, n: int, blocked: np.ndarray
) -> list[Item]:
    """The ``n`` best unblocked items by ``scores`` (catalogue order breaks ties).

    Items whose score is not finite are unscored; when fewer than ``n`` items are scored the
    rest comes from the popularity ranking, so every contact gets a full block if the catalogue
    allows it.
    """
    if n <= 0 or matrix.n_catalogue == 0:
        return []
    chosen: list[int] = []
    if scores is not None:
        candidates = np.flatnonzero(~blocked & np.isfinite(scores))
        values = scores[candidates]
        if len(candidates) > n:
            # Keep everything tied with the n-th best so the tie-break below sees all of them.
            threshold = np.partition(values, len(values) - n)[len(values) - n]
            keep = values >= threshold
            candidates, values = candidates[keep], values[keep]
        order = np.lexsort((candidates, -values))
        chosen = [int(c) for c in candidates[order[:n]]]
    if len(chosen) < n:
        taken = set(chosen)
        for value in matrix.popularity:
            column = int(value)
            if not blocked[column] and column not in taken:
                chosen.append(column)
                if len(chosen) == n:
                    break
    return [matrix.items[column] for column in chosen]


def gather_rows(
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
