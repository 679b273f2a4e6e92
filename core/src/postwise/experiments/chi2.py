"""The fixed-horizon test: Pearson's chi-squared on the 2x2 table of each treatment vs control.

Valid for one look planned in advance (see :func:`postwise.experiments.planning.plan`). Run at
every look until p < alpha, it declares false winners far more often than alpha: that is what the
sequential test exists for.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import special

from postwise.experiments.contract import Comparison, Interval, StatsOptions
from postwise.experiments.data import VariantData
from postwise.experiments.effects import absolute_lift, relative_lift

__all__ = ["ChiSquaredTest", "pearson_chi2_p_value"]


def pearson_chi2_p_value(
    n_a: ArrayLike, c_a: ArrayLike, n_b: ArrayLike, c_b: ArrayLike
) -> NDArray[np.float64]:
    """P-value of Pearson's chi-squared test of the 2x2 table, without continuity correction.

    Equal to ``scipy.stats.chi2_contingency(table, correction=False)`` and to the two-sided
    pooled z-test. A table with an empty row or column carries no evidence: p = 1.
    """
    na = np.asarray(n_a, dtype=np.float64)
    nb = np.asarray(n_b, dtype=np.float64)
    ca = np.asarray(c_a, dtype=np.float64)
    cb = np.asarray(c_b, dtype=np.float64)
    total = na + nb
    converted = ca + cb
    denominator = na * nb * converted * (total - converted)
    with np.errstate(divide="ignore", invalid="ignore"):
        statistic = np.where(
            denominator > 0, total * (ca * (nb - cb) - cb * (na - ca)) ** 2 / denominator, 0.0
        )
    return np.asarray(special.chdtrc(1.0, statistic), dtype=np.float64)


def _normal_interval(estimate: float, variance: float, z: float) -> Interval:
    if not np.isfinite(variance):
        return Interval(estimate, -np.inf, np.inf)
    half = z * float(np.sqrt(variance))
    return Interval(estimate, estimate - half, estimate + half)


class ChiSquaredTest:
    """Pearson chi-squared p-values with Wald / delta-method intervals, for a single look."""

    name = "chi2"
    always_valid = False
    decides = True

    def compare(self, variants: Sequence[VariantData], options: StatsOptions) -> list[Comparison]:
        """Compare each treatment with the control at the fixed horizon."""
        control, treatments = variants[0], variants[1:]
        na = np.full(len(treatments), control.exposures)
        ca = np.full(len(treatments), control.conversions)
        nb = np.array([t.exposures for t in treatments])
        cb = np.array([t.conversions for t in treatments])
        p_values = pearson_chi2_p_value(na, ca, nb, cb)
        abs_est, abs_var = absolute_lift(na, ca, nb, cb)
        rel_est, rel_var = relative_lift(na, ca, nb, cb)
        z = float(special.ndtri(1.0 - options.alpha / 2.0))
        return [
            Comparison(
                variant=t.name,
                p_value=float(p_values[i]),
                absolute=_normal_interval(float(abs_est[i]), float(abs_var[i]), z),
                relative=None
                if np.isnan(rel_est[i])
                else _normal_interval(float(rel_est[i]), float(rel_var[i]), z),
            )
            for i, t in enumerate(treatments)
        ]
