"""Deterministic variant assignment: the same contact always gets the same variant.

The bucket of a contact is the first 8 bytes of BLAKE2b over the experiment id and the contact
id, read as an unsigned 64-bit integer. The ids are joined unambiguously: the experiment id is
length-prefixed, so ("ab", "c") and ("a", "bc") hash different bytes. Because the experiment id
is part of the hash, a contact's bucket in one experiment says nothing about its bucket in
another: experiments are independent. An integer id is hashed as its decimal string, so
``42`` and ``"42"`` are the same contact. The digest depends on nothing but the two ids (not on
Python's per-process ``hash`` seed, the platform or the library version), so any process, now or
later, assigns the same way; the tests pin a table of assignments to keep it so.

The integer is compared with cumulative thresholds: first the holdout share (contacts who get
no variant at all, for measuring the campaign itself), then the weighted variants over what
remains. Changing the weights moves only the contacts near the moved thresholds.
"""

from __future__ import annotations

import bisect
import hashlib
import math
from collections.abc import Mapping, Sequence
from functools import lru_cache

from postwise.errors import StatsError
from postwise.experiments.data import WEIGHT_SUM_TOLERANCE

__all__ = ["VariantAssigner", "assign_variant"]

_SPACE = 1 << 64
#: Distinguishes our digests from any other use of BLAKE2b over the same bytes.
_PERSON = b"postwise-assign"

Weights = Mapping[str, float] | Sequence[tuple[str, float]]


def _encode(value: str | int, what: str) -> bytes:
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise StatsError(f"{what} must be a string or an integer, got {value!r}", field=what)
    text = str(value)
    if not text:
        raise StatsError(f"{what} must not be empty", field=what)
    return text.encode("utf-8")


class VariantAssigner:
    """Assignment for one experiment, with the weights validated once (use it in send loops)."""

    __slots__ = ("_names", "_prefix", "_thresholds", "experiment_id", "holdout")

    def __init__(self, experiment_id: str | int, weights: Weights, *, holdout: float = 0.0):
        """Validate ``weights`` (name -> weight, summing to 1) and the ``holdout`` share."""
        items = list(weights.items()) if isinstance(weights, Mapping) else list(weights)
        if not items:
            raise StatsError("an experiment needs at least one variant to assign", field="weights")
        names = [name for name, _ in items]
        if len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
            raise StatsError(
                f"variant names must be distinct non-empty strings, got {names!r}", field="weights"
            )
        values = [w for _, w in items]
        if not all(
            isinstance(w, int | float) and not isinstance(w, bool) and math.isfinite(w) and w > 0
            for w in values
        ):
            raise StatsError(f"weights must be positive numbers, got {values!r}", field="weights")
        total = math.fsum(values)
        if abs(total - 1.0) > WEIGHT_SUM_TOLERANCE:
            raise StatsError(f"weights must sum to 1, they sum to {total:.6g}", field="weights")
        if not (isinstance(holdout, int | float) and 0.0 <= holdout < 1.0):
            raise StatsError(f"holdout must be a share in [0, 1), got {holdout!r}", field="holdout")
        encoded = _encode(experiment_id, "experiment_id")
        self.experiment_id = experiment_id
        self.holdout = float(holdout)
        self._prefix = len(encoded).to_bytes(4, "big") + encoded
        self._names = names
        # Integer thresholds keep the mapping exact and identical on every platform.
        cumulative, thresholds = 0.0, []
        for value in values[:-1]:
            cumulative += value / total
            thresholds.append(round((self.holdout + (1 - self.holdout) * cumulative) * _SPACE))
        self._thresholds = [round(self.holdout * _SPACE), *thresholds]

    def bucket(self, contact_id: str | int) -> int:
        """The contact's position in [0, 2^64) for this experiment."""
        digest = hashlib.blake2b(
            self._prefix + _encode(contact_id, "contact_id"), digest_size=8, person=_PERSON
        ).digest()
        return int.from_bytes(digest, "big")

    def assign(self, contact_id: str | int) -> str | None:
        """The contact's variant name, or None when the contact is in the holdout."""
        position = bisect.bisect_right(self._thresholds, self.bucket(contact_id))
        return None if position == 0 else self._names[position - 1]


def assign_variant(
    experiment_id: str | int,
    contact_id: str | int,
    variants_with_weights: Weights,
    holdout: float = 0.0,
) -> str | None:
    """The variant of ``contact_id`` in ``experiment_id``; None means the holdout.

    ``variants_with_weights`` maps variant name to weight (or is a sequence of pairs), weights
    summing to 1. The same inputs give the same answer in every process and version. For many
    contacts of one experiment build a :class:`VariantAssigner` once instead.
    """
    items = (
        tuple(variants_with_weights.items())
        if isinstance(variants_with_weights, Mapping)
        else tuple(variants_with_weights)
    )
    try:
        assigner = _cached_assigner(experiment_id, items, holdout)
    except TypeError:  # unhashable input: validate it uncached, which also reports the problem
        assigner = VariantAssigner(experiment_id, items, holdout=holdout)
    return assigner.assign(contact_id)


@lru_cache(maxsize=256)
def _cached_assigner(
    experiment_id: str | int, items: tuple[tuple[str, float], ...], holdout: float
) -> VariantAssigner:
    # A send loop calls assign_variant with the same experiment for every recipient.
    return VariantAssigner(experiment_id, items, holdout=holdout)
