r"""CUPED: the lift estimated with a pre-exposure covariate, for less variance (Deng et al. 2013).

With X known before exposure (so the treatment cannot move it) and theta = cov(X, Y) / var(X),
the adjusted mean of each arm is::

    Y_adj = mean(Y) - theta (mean(X) - pooled mean(X))

It has the same expectation as mean(Y) (randomisation makes the arms' X alike) and the variance
(var(Y) - 2 theta cov(X, Y) + theta^2 var(X)) / n, that is var(Y) (1 - rho^2) / n at the best
theta. theta is estimated on all arms pooled, from the within-arm (co)variances, so a treatment
effect does not leak into it. The always-valid test then runs on the adjusted difference and
its variance exactly as on the raw ones; a sample that needs a fraction ``1 - reduction`` of the
variance needs the same fraction of the exposures for the same power.

**Missing covariates.** Contacts of an arm without the covariate are given the pooled mean of
those who have it: an imputation that uses nothing from after exposure, so the estimate stays
unbiased; it only reduces the variance less. When no contact of the compared arms has it, or it
does not vary, the adjustment is skipped and the warning says so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from postwise.experiments.data import VariantData

Floats = NDArray[np.float64]

__all__ = ["AdjustedLift", "CupedFit", "adjusted_difference", "fit"]


@dataclass(frozen=True, slots=True)
class _Arm:
    n: float
    mean_y: float
    mean_x: float
    var_y: float
    var_x: float
    cov: float


@dataclass(frozen=True, slots=True)
class AdjustedLift:
    """One treatment against the control, adjusted."""

    absolute: float
    absolute_variance: float
    #: NaN when the adjusted control rate is not positive.
    relative: float
    relative_variance: float
    #: 1 - adjusted variance / unadjusted variance of the absolute lift.
    variance_reduction: float


@dataclass(frozen=True, slots=True)
class CupedFit:
    """The pooled fit of one analysis: theta, the correlation, and how complete X was."""

    theta: float
    correlation: float
    #: Share of exposed contacts (all arms) that had the covariate.
    coverage: float
    arms: tuple[_Arm, ...]
    pooled_x: float

    def lift(self, control: int, treatment: int) -> AdjustedLift:
        """Adjusted absolute and relative lift of arm ``treatment`` over arm ``control``."""
        a, b = self.arms[control], self.arms[treatment]
        adj_a = a.mean_y - self.theta * (a.mean_x - self.pooled_x)
        adj_b = b.mean_y - self.theta * (b.mean_x - self.pooled_x)

        def variance(arm: _Arm) -> float:
            value = arm.var_y - 2 * self.theta * arm.cov + self.theta**2 * arm.var_x
            return max(value, 0.0) / arm.n

        var_a, var_b = variance(a), variance(b)
        raw = a.var_y / a.n + b.var_y / b.n
        if adj_a > 0:
            relative = adj_b / adj_a - 1.0
            relative_variance = var_b / adj_a**2 + var_a * adj_b**2 / adj_a**4
        else:
            relative, relative_variance = math.nan, math.nan
        absolute_variance = var_a + var_b
        return AdjustedLift(
            absolute=adj_b - adj_a,
            absolute_variance=absolute_variance,
            relative=relative,
            relative_variance=relative_variance,
            variance_reduction=1.0 - absolute_variance / raw if raw > 0 else 0.0,
        )


def fit(variants: Sequence[VariantData]) -> tuple[CupedFit | None, str | None]:
    """The pooled CUPED fit, or (None, why not) when it cannot be made.

    Needs a :class:`~postwise.experiments.data.Covariate` on every variant (already checked
    against its counts) and at least one exposure per arm.
    """
    covariates = [v.covariate for v in variants]
    if any(c is None for c in covariates):
        lacking = [v.name for v in variants if v.covariate is None]
        return None, f"no covariate sums for {', '.join(lacking)}; the lift is not adjusted"
    if any(v.exposures == 0 for v in variants):
        return None, "a variant has no exposures; the lift is not adjusted"
    have = sum(c.count for c in covariates if c is not None)
    exposed = sum(v.exposures for v in variants)
    if have == 0:
        return None, "no exposed contact has the covariate; the lift is not adjusted"
    pooled_x = math.fsum(c.total for c in covariates if c is not None) / have
    arms = []
    within_cov = within_var = within_var_y = 0.0
    for v, c in zip(variants, covariates, strict=True):
        assert c is not None
        n = float(v.exposures)
        missing = n - c.count
        sum_x = c.total + missing * pooled_x
        sum_xx = c.squares + missing * pooled_x**2
        sum_xy = c.cross + pooled_x * (v.conversions - c.conversions)
        mean_y, mean_x = v.conversions / n, sum_x / n
        var_x = max(sum_xx / n - mean_x**2, 0.0)
        cov = sum_xy / n - mean_x * mean_y
        var_y = mean_y * (1.0 - mean_y)
        arms.append(_Arm(n, mean_y, mean_x, var_y, var_x, cov))
        within_cov += n * cov
        within_var += n * var_x
        within_var_y += n * var_y
    # The imputed contacts carry no variance; a covariate that does not vary explains nothing.
    if within_var <= 1e-12 * max(1.0, pooled_x**2) * exposed:
        return None, "the covariate does not vary across contacts; the lift is not adjusted"
    theta = within_cov / within_var
    correlation = within_cov / math.sqrt(within_var * within_var_y) if within_var_y > 0 else 0.0
    return (
        CupedFit(
            theta=theta,
            correlation=correlation,
            coverage=have / exposed,
            arms=tuple(arms),
            pooled_x=pooled_x,
        ),
        None,
    )


def adjusted_difference(
    a: tuple[ArrayLike, ArrayLike, ArrayLike, ArrayLike, ArrayLike],
    b: tuple[ArrayLike, ArrayLike, ArrayLike, ArrayLike, ArrayLike],
) -> tuple[Floats, Floats, Floats]:
    """Vectorised two-arm CUPED for simulations: (estimate, variance, unadjusted variance).

    Each arm is (n, sum Y, sum X, sum X^2, sum XY) over all its contacts (no missing X); the
    same arithmetic as :func:`fit` followed by ``lift(0, 1)`` for two variants.
    """
    arms = []
    for n, sy, sx, sxx, sxy in (a, b):
        nn = np.asarray(n, dtype=np.float64)
        my = np.asarray(sy, dtype=np.float64) / nn
        mx = np.asarray(sx, dtype=np.float64) / nn
        vx = np.maximum(np.asarray(sxx, dtype=np.float64) / nn - mx**2, 0.0)
        cov = np.asarray(sxy, dtype=np.float64) / nn - mx * my
        arms.append((nn, my, mx, my * (1 - my), vx, cov))
    (na, ya, xa, vya, vxa, ca), (nb, yb, xb, vyb, vxb, cb) = arms
    with np.errstate(divide="ignore", invalid="ignore"):
        theta = np.where(na * vxa + nb * vxb > 0, (na * ca + nb * cb) / (na * vxa + nb * vxb), 0.0)
        estimate = yb - ya - theta * (xb - xa)
        variance = (np.maximum(vya - 2 * theta * ca + theta**2 * vxa, 0.0) / na) + (
            np.maximum(vyb - 2 * theta * cb + theta**2 * vxb, 0.0) / nb
        )
        raw = vya / na + vyb / nb
    return estimate, variance, raw
