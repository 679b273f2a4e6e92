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
from datetime import UTC, datetime

import numpy as np
import scipy.sparse as sp

from postwise.recommend.base import Interaction, Item

__all__ = ["InteractionMatrix", "top_items"]


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
        now = now or datetime.now(UTC)
        contacts = array("q")
        cols = array("i")
        weights = array("f")
        decayed = array("f")
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
            if half_life_days and interaction.at is not None:
                age_days = max(0.0, (now - interaction.at).total_seconds() / 86400)
                weight *= 0.5 ** (age_days / half_life_days)
            decayed.append(weight)

        contact_ids, rows = np.unique(np.frombuffer(contacts, dtype=np.int64), return_inverse=True)
        col_array = np.frombuffer(cols, dtype=np.int32)
        matrix = sp.csr_matrix(
            (np.frombuffer(weights, dtype=np.float32), (rows, col_array)),
            shape=(len(contact_ids), len(columns)),
            dtype=np.float32,
        )
        matrix.sum_duplicates()
        scores = np.bincount(
            col_array, weights=np.frombuffer(decayed, dtype=np.float32), minlength=len(columns)
        )[: len(catalogue)]
        # Ties (and items nobody touched) keep catalogue order, so the ranking is deterministic.
        popularity = np.lexsort((np.arange(len(catalogue)), -scores)).astype(np.int32)
        return cls(tuple(catalogue), columns, contact_ids, matrix, popularity)

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
