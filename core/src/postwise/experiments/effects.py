"""Lift estimates and their variances for two proportions (vectorised over numpy arrays).

The relative lift uses the delta method, with the same formula as GrowthBook's gbstats
(``frequentist_variance`` with ``relative=True``), so our intervals and theirs agree::

    Var((p_B - p_A) / p_A) ~ v_B / (p_A^2 n_B) + v_A p_B^2 / (p_A^4 n_A),   v = p (1 - p)
"""

from __future__ import annotations

from typing import TypeAlias

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = ["absolute_lift", "relative_lift"]

Floats: TypeAlias = NDArray[np.float64]


def _rates(n_a: ArrayLike, c_a: ArrayLike, n_b: ArrayLike, c_b: ArrayLike) -> tuple[Floats, ...]:
    na = np.asarray(n_a, dtype=np.float64)
    nb = np.asarray(n_b, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        pa = np.where(na > 0, np.asarray(c_a, dtype=np.float64) / na, 0.0)
        pb = np.where(nb > 0, np.asarray(c_b, dtype=np.float64) / nb, 0.0)
    return na, pa, nb, pb


def absolute_lift(
    n_a: ArrayLike, c_a: ArrayLike, n_b: ArrayLike, c_b: ArrayLike
) -> tuple[Floats, Floats]:
    """Estimate and variance of ``p_B - p_A`` (unpooled, as in a Wald interval)."""
    na, pa, nb, pb = _rates(n_a, c_a, n_b, c_b)
    with np.errstate(divide="ignore", invalid="ignore"):
        variance = np.where((na > 0) & (nb > 0), pa * (1 - pa) / na + pb * (1 - pb) / nb, np.inf)
    return pb - pa, variance


def relative_lift(
    n_a: ArrayLike, c_a: ArrayLike, n_b: ArrayLike, c_b: ArrayLike
) -> tuple[Floats, Floats]:
    """Estimate and delta-method variance of ``p_B / p_A - 1``; NaN where ``p_A`` is 0."""
    na, pa, nb, pb = _rates(n_a, c_a, n_b, c_b)
    with np.errstate(divide="ignore", invalid="ignore"):
        defined = (pa > 0) & (na > 0) & (nb > 0)
        estimate = np.where(defined, (pb - pa) / pa, np.nan)
        variance = np.where(
            defined,
            pb * (1 - pb) / (pa**2 * nb) + pa * (1 - pa) * pb**2 / (pa**4 * na),
            np.nan,
        )
    return estimate, variance
