r"""The always-valid test: an asymptotic confidence sequence (mixture SPRT) on two proportions.

**The construction.** For an estimate theta_hat with variance s^2 after ``N`` units, the
normal-mixture likelihood ratio of "theta = theta0", mixing scale rho (in standard deviations
of one unit), is::

    LR = (1 + N rho^2)^(-1/2) * exp(N rho^2 / (N rho^2 + 1) * z^2 / 2),
    z^2 = (theta_hat - theta0)^2 / s^2

It is (asymptotically) a martingale under the null, so by Ville's inequality the chance that it
*ever* exceeds 1/alpha is at most alpha: ``p = min(1, 1/LR)`` is valid at every look, and so is
its running minimum over looks. Inverting LR < 1/alpha gives the interval theta_hat +/- s c(N)::

    c(N)^2 = 2 (N rho^2 + 1) / (N rho^2) * ln(sqrt(N rho^2 + 1) / alpha)

This is GrowthBook's sequential interval (Waudby-Smith et al. 2023, eq. 9 and 155) and, for two
arms of n each, the mSPRT of STATS.md with tau^2 = 2 rho^2 V. rho comes from alpha and the
tuning N* (GrowthBook's eq. 161): rho^2 = (-2 ln alpha + ln(1 - 2 ln alpha)) / N*, which makes the
interval tightest when N = N*. Any fixed N* keeps the guarantee; it must not change mid-experiment.

**Indexed by exposures** (the default, for experiments whose audience keeps growing): N is the
exposures of the two arms compared; theta is the absolute lift p_B - p_A (which the decision
uses) or the delta-method relative lift.

**Indexed by outcomes** (for a send: recipients fixed at send, clicks arriving for days).
Counting by recipients would be wrong there: N stays constant while the evidence keeps growing,
and the click rate the absolute lift is about grows with it. Instead the test watches the
sequence of outcome events. If the variants do not differ, every recipient is alike, so each
next outcome comes from arm B with probability theta0 = n_B / (n_A + n_B), whatever the outcome
rate and however long outcomes take to arrive (exactly: B's share of those who have not
converted yet, which differs from theta0 by at most the outcome rate and only ever pulls the
share back towards theta0, so treating it as theta0 errs on the safe side). The test is the
confidence sequence above for that share theta, with N = K outcome events so far and the null
variance theta0 (1 - theta0), in the score (Wilson) form, so the p-value and the interval agree.
Each hourly look is a stopping time of the outcome sequence, so looking as often as one likes
keeps the guarantee while outcomes mature. The share maps one-to-one to the rate ratio,
p_B / p_A = theta / (1 - theta) * n_A / n_B, constant over time when the variants differ in how
many recipients respond rather than when: the relative lift is the stable estimand. The absolute
lift is reported conditional on the K outcomes seen so far,
p_B - p_A = theta K / n_B - (1 - theta) K / n_A, and grows as outcomes mature.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from postwise.errors import StatsError
from postwise.experiments.contract import Comparison, Index, Interval, StatsOptions
from postwise.experiments.data import VariantData
from postwise.experiments.effects import absolute_lift, relative_lift

__all__ = [
    "DEFAULT_TUNING",
    "SequentialTest",
    "always_valid_p_value",
    "boundary",
    "exposure_indexed_p_value",
    "outcome_indexed_p_value",
    "rho_squared",
]

#: Default N* per index: GrowthBook's default for exposures; for outcomes, a campaign's worth of
#: clicks. Both are only starting points: pass the planner's figure for the best power.
DEFAULT_TUNING: dict[Index, float] = {"exposures": 5000.0, "outcomes": 1000.0}

Floats = NDArray[np.float64]


def rho_squared(alpha: float, tuning: float) -> float:
    """Mixing variance rho^2 that makes the interval tightest after ``tuning`` units (N*)."""
    if not math.isfinite(tuning) or tuning <= 0:
        raise StatsError(
            f"sequential_tuning (N*) must be a positive number of units, got {tuning}",
            field="sequential_tuning",
        )
    log_alpha = math.log(alpha)
    return (-2.0 * log_alpha + math.log(1.0 - 2.0 * log_alpha)) / tuning


def boundary(n: ArrayLike, rho2: float, alpha: float) -> Floats:
    """c(N): the |z| beyond which the always-valid p-value drops below ``alpha``."""
    x = np.asarray(n, dtype=np.float64) * rho2
    with np.errstate(divide="ignore", invalid="ignore"):
        squared = 2.0 * (x + 1.0) / x * np.log(np.sqrt(x + 1.0) / alpha)
    return np.sqrt(np.where(x > 0, squared, np.inf))


def always_valid_p_value(
    estimate: ArrayLike, variance: ArrayLike, n: ArrayLike, rho2: float, null: ArrayLike = 0.0
) -> Floats:
    """min(1, 1/LR) of the normal-mixture SPRT; 1 where the variance carries no information."""
    est = np.asarray(estimate, dtype=np.float64)
    var = np.asarray(variance, dtype=np.float64)
    x = np.asarray(n, dtype=np.float64) * rho2
    informative = np.isfinite(var) & (var > 0) & np.isfinite(est) & (x > 0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        z2 = np.where(informative, (est - np.asarray(null)) ** 2 / var, 0.0)
        log_lr = x / (x + 1.0) * z2 / 2.0 - 0.5 * np.log1p(x)
        p = np.exp(-np.where(informative, log_lr, 0.0))
    return np.asarray(np.minimum(1.0, np.where(informative, p, 1.0)), dtype=np.float64)


def exposure_indexed_p_value(
    n_a: ArrayLike, c_a: ArrayLike, n_b: ArrayLike, c_b: ArrayLike, rho2: float
) -> Floats:
    """Always-valid p-value of ``p_B = p_A`` at one look, indexed by exposures (vectorised)."""
    estimate, variance = absolute_lift(n_a, c_a, n_b, c_b)
    total = np.asarray(n_a, dtype=np.float64) + np.asarray(n_b, dtype=np.float64)
    return always_valid_p_value(estimate, variance, total, rho2)


def _outcome_share(
    n_a: ArrayLike, c_a: ArrayLike, n_b: ArrayLike, c_b: ArrayLike
) -> tuple[Floats, Floats, Floats]:
    na = np.asarray(n_a, dtype=np.float64)
    nb = np.asarray(n_b, dtype=np.float64)
    cb = np.asarray(c_b, dtype=np.float64)
    k = np.asarray(c_a, dtype=np.float64) + cb
    with np.errstate(divide="ignore", invalid="ignore"):
        share = np.where(k > 0, cb / k, np.nan)
        null = np.where(na + nb > 0, nb / (na + nb), np.nan)
    return share, null, k


def outcome_indexed_p_value(
    n_a: ArrayLike, c_a: ArrayLike, n_b: ArrayLike, c_b: ArrayLike, rho2: float
) -> Floats:
    """Always-valid p-value of ``p_B = p_A`` at one look, indexed by outcome events.

    ``n_*`` are the (fixed) recipients and ``c_*`` the outcomes that have arrived so far.
    """
    share, null, k = _outcome_share(n_a, c_a, n_b, c_b)
    with np.errstate(divide="ignore", invalid="ignore"):
        variance = np.where(k > 0, null * (1.0 - null) / k, np.inf)
    return always_valid_p_value(share, variance, k, rho2, null=np.nan_to_num(null))


def _wilson_share_interval(
    share: float, k: float, rho2: float, alpha: float
) -> tuple[float, float]:
    """The theta with (theta_hat - theta)^2 K <= c(K)^2 theta (1 - theta): Wilson at c(K)."""
    c2 = float(boundary(k, rho2, alpha)) ** 2
    centre = share + c2 / (2.0 * k)
    spread = math.sqrt(c2) * math.sqrt(share * (1.0 - share) / k + c2 / (4.0 * k * k))
    scale = 1.0 + c2 / k
    return max(0.0, (centre - spread) / scale), min(1.0, (centre + spread) / scale)


def _ratio_minus_one(share: float, n_a: int, n_b: int) -> float:
    if share >= 1.0:
        return math.inf
    return share / (1.0 - share) * n_a / n_b - 1.0


class SequentialTest:
    """The always-valid test (see the module docstring); the default decision gate."""

    name = "sequential"
    always_valid = True
    decides = True

    def compare(self, variants: Sequence[VariantData], options: StatsOptions) -> list[Comparison]:
        """Compare each treatment with the control with confidence-sequence intervals."""
        rho2 = rho_squared(options.alpha, options.sequential_tuning)
        if options.index == "outcomes":
            return [self._by_outcomes(variants[0], t, rho2, options.alpha) for t in variants[1:]]
        if options.index != "exposures":
            raise StatsError(
                f"index must be 'exposures' or 'outcomes', got {options.index!r}", field="index"
            )
        return self._by_exposures(variants, rho2, options.alpha)

    @staticmethod
    def _by_exposures(
        variants: Sequence[VariantData], rho2: float, alpha: float
    ) -> list[Comparison]:
        control, treatments = variants[0], variants[1:]
        na = np.full(len(treatments), control.exposures)
        ca = np.full(len(treatments), control.conversions)
        nb = np.array([t.exposures for t in treatments])
        cb = np.array([t.conversions for t in treatments])
        total = na + nb
        c = boundary(total, rho2, alpha)
        abs_est, abs_var = absolute_lift(na, ca, nb, cb)
        rel_est, rel_var = relative_lift(na, ca, nb, cb)
        p_values = always_valid_p_value(abs_est, abs_var, total, rho2)
        with np.errstate(invalid="ignore"):
            abs_half = c * np.sqrt(abs_var)
            rel_half = c * np.sqrt(rel_var)
        comparisons = []
        for i, t in enumerate(treatments):
            absolute = Interval(
                float(abs_est[i]),
                float(abs_est[i] - abs_half[i]),
                float(abs_est[i] + abs_half[i]),
            )
            relative = None
            if not np.isnan(rel_est[i]):
                relative = Interval(
                    float(rel_est[i]),
                    float(rel_est[i] - rel_half[i]),
                    float(rel_est[i] + rel_half[i]),
                )
            comparisons.append(Comparison(t.name, float(p_values[i]), absolute, relative))
        return comparisons

    @staticmethod
    def _by_outcomes(
        control: VariantData, treatment: VariantData, rho2: float, alpha: float
    ) -> Comparison:
        n_a, c_a = control.exposures, control.conversions
        n_b, c_b = treatment.exposures, treatment.conversions
        k = c_a + c_b
        estimate = treatment.rate - control.rate
        if k == 0 or n_a == 0 or n_b == 0:
            return Comparison(
                treatment.name,
                1.0,
                Interval(estimate, -math.inf, math.inf),
                None if c_a == 0 else Interval(treatment.rate / control.rate - 1.0, -1.0, math.inf),
            )
        p_value = float(outcome_indexed_p_value(n_a, c_a, n_b, c_b, rho2))
        low, high = _wilson_share_interval(c_b / k, k, rho2, alpha)

        def lift(share: float) -> float:
            return share * k / n_b - (1.0 - share) * k / n_a

        absolute = Interval(estimate, lift(low), lift(high))
        relative = None
        if c_a > 0:
            relative = Interval(
                _ratio_minus_one(c_b / k, n_a, n_b),
                _ratio_minus_one(low, n_a, n_b),
                _ratio_minus_one(high, n_a, n_b),
            )
        return Comparison(treatment.name, p_value, absolute, relative)
