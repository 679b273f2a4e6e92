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

**Tuned to the planned effect** (``mde``, a relative minimum detectable effect). The normal
mixture above is centred on "no effect", so half its mass and most of its weight sit on effects
far smaller than the one the experiment was planned for, and it pays for them with power. With
``mde`` the mixture is instead two normal lobes centred on +/- ``MDE_CENTRE`` x the planned
effect, each with a standard deviation of ``MDE_SPREAD`` x the planned effect. For a prior
N(mu, tau^2) the mixture likelihood ratio is, in z units (z = theta_hat / s, lambda = mu / s,
kappa = tau^2 / s^2)::

    LR = (1 + kappa)^(-1/2) exp((kappa z^2 - lambda^2) / (2 (1 + kappa)))
         * cosh(lambda z / (1 + kappa))

for the symmetric pair of lobes. Any mixture of likelihood ratios is a martingale under the
null, so Ville's inequality gives the same guarantee (p = min(1, 1/LR) valid at every look);
the interval is the set of theta0 where LR < 1/alpha, found numerically. The lobes keep some
mass on every effect (tau > 0), so any true difference is found eventually and the interval
shrinks to zero width; but effects well below a half of the planned one are found late. The planned
effect in absolute terms is ``mde`` x the control's observed rate (exposure index) or the
outcome share implied by a rate ratio of 1 + ``mde`` (outcome index); like the variance, it is
a plug-in of the asymptotic construction. The centre and spread were chosen by simulation
(docs/experiments-statistics.md, "Power"): +10% on 3% looked at every 1,000 exposures per arm up
to 1.75x the fixed-horizon sample; other designs are reported beside it, untuned.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike, NDArray

from postwise.errors import StatsError
from postwise.experiments.contract import Comparison, Index, Interval, StatsOptions
from postwise.experiments.cuped import fit as cuped_fit
from postwise.experiments.data import VariantData
from postwise.experiments.effects import absolute_lift, relative_lift

__all__ = [
    "DEFAULT_TUNING",
    "MDE_CENTRE",
    "MDE_SPREAD",
    "SequentialTest",
    "always_valid_p_value",
    "boundary",
    "exposure_indexed_p_value",
    "mde_boundary",
    "mde_log_lr",
    "mde_p_value",
    "outcome_indexed_mde_p_value",
    "outcome_indexed_p_value",
    "rho_squared",
    "validate_mde",
]

#: Default N* per index: GrowthBook's default for exposures; for outcomes, a campaign's worth of
#: clicks. Both are only starting points: pass the planner's figure for the best power.
DEFAULT_TUNING: dict[Index, float] = {"exposures": 5000.0, "outcomes": 1000.0}

Floats = NDArray[np.float64]

#: Centre of each lobe of the effect-tuned mixture, as a multiple of the planned effect.
MDE_CENTRE = 0.8
#: Standard deviation of each lobe, as a multiple of the planned effect.
MDE_SPREAD = 0.2
_BISECTIONS = 64


def validate_mde(mde: float | None) -> float | None:
    """Check a relative minimum detectable effect: a number in (0, 10], or None."""
    if mde is None:
        return None
    if isinstance(mde, bool) or not isinstance(mde, int | float) or not math.isfinite(mde):
        raise StatsError(f"mde must be a number (0.10 = +10% relative), got {mde!r}", field="mde")
    if not 0.0 < mde <= 10.0:
        raise StatsError(
            f"mde is a relative effect in (0, 10] (0.10 = +10%), got {mde}", field="mde"
        )
    return float(mde)


def mde_log_lr(z: ArrayLike, lam: ArrayLike, kappa: ArrayLike) -> Floats:
    """log LR of the two-lobed mixture at z (see the module docstring); vectorised."""
    zz = np.asarray(z, dtype=np.float64)
    lm = np.asarray(lam, dtype=np.float64)
    kp = np.asarray(kappa, dtype=np.float64)
    u = lm * zz / (1.0 + kp)
    log_cosh = np.logaddexp(u, -u) - math.log(2.0)
    return np.asarray(
        -0.5 * np.log1p(kp) + (kp * zz * zz - lm * lm) / (2.0 * (1.0 + kp)) + log_cosh,
        dtype=np.float64,
    )


def _lobes(effect: ArrayLike, variance: ArrayLike) -> tuple[Floats, Floats]:
    """lambda and kappa of the lobes for a planned absolute effect and the estimate's variance."""
    eff = np.abs(np.asarray(effect, dtype=np.float64))
    var = np.asarray(variance, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ok = np.isfinite(var) & (var > 0) & np.isfinite(eff)
        sd = np.sqrt(np.where(ok, var, 1.0))
        lam = np.where(ok, MDE_CENTRE * eff / sd, 0.0)
        kappa = np.where(ok, (MDE_SPREAD * eff / sd) ** 2, 0.0)
    return lam, kappa


def mde_p_value(
    estimate: ArrayLike, variance: ArrayLike, effect: ArrayLike, null: ArrayLike = 0.0
) -> Floats:
    """min(1, 1/LR) of the effect-tuned mixture; 1 where there is no information."""
    est = np.asarray(estimate, dtype=np.float64)
    var = np.asarray(variance, dtype=np.float64)
    lam, kappa = _lobes(effect, var)
    informative = np.isfinite(var) & (var > 0) & np.isfinite(est) & (kappa > 0)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        z = np.where(informative, (est - np.asarray(null)) / np.sqrt(var), 0.0)
        p = np.exp(-np.maximum(mde_log_lr(z, lam, kappa), 0.0))
    return np.asarray(np.where(informative, np.minimum(1.0, p), 1.0), dtype=np.float64)


def mde_boundary(effect: ArrayLike, variance: ArrayLike, alpha: float) -> Floats:
    """The |z| at which the effect-tuned mixture reaches 1/alpha (inf without information)."""
    lam, kappa = _lobes(effect, variance)
    target = math.log(1.0 / alpha)
    low = np.zeros_like(lam)
    # log LR >= kappa z^2 / (2 (1 + kappa)) - lambda^2 / 2 - log(1 + kappa) / 2, so this is enough.
    with np.errstate(divide="ignore", invalid="ignore"):
        high = np.sqrt(
            np.where(
                kappa > 0,
                2.0 * (1.0 + kappa) / kappa * (target + lam * lam / 2 + 0.5 * np.log1p(kappa)),
                1.0,
            )
        )
    for _ in range(_BISECTIONS):
        mid = (low + high) / 2.0
        above = mde_log_lr(mid, lam, kappa) >= target
        high = np.where(above, mid, high)
        low = np.where(above, low, mid)
    return np.asarray(np.where(kappa > 0, high, np.inf), dtype=np.float64)


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


def _share_effect(n_a: ArrayLike, n_b: ArrayLike, mde: float) -> Floats:
    """The outcome share of arm B at a rate ratio of 1 + mde, minus its null value."""
    na = np.asarray(n_a, dtype=np.float64)
    nb = np.asarray(n_b, dtype=np.float64)
    ratio = 1.0 + mde
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.asarray(ratio * nb / (na + ratio * nb) - nb / (na + nb), dtype=np.float64)


def outcome_indexed_mde_p_value(
    n_a: ArrayLike, c_a: ArrayLike, n_b: ArrayLike, c_b: ArrayLike, mde: float
) -> Floats:
    """Always-valid p-value indexed by outcome events, with the mixture tuned to ``mde``."""
    share, null, k = _outcome_share(n_a, c_a, n_b, c_b)
    with np.errstate(divide="ignore", invalid="ignore"):
        variance = np.where(k > 0, null * (1.0 - null) / k, np.inf)
    effect = _share_effect(n_a, n_b, mde)
    return mde_p_value(share, variance, effect, null=np.nan_to_num(null))


def _wilson_share_interval(share: float, k: float, c2: float) -> tuple[float, float]:
    """The theta with (theta_hat - theta)^2 K <= c^2 theta (1 - theta): Wilson at c."""
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
    guarantees = (
        "always-valid: p-values and intervals hold at every look, however often anyone looks "
        "(Ville's inequality on a mixture likelihood ratio; asymptotic, with plug-in variances); "
        "with index='outcomes' also while outcomes mature after a send; false winners <= alpha"
    )

    def compare(self, variants: Sequence[VariantData], options: StatsOptions) -> list[Comparison]:
        """Compare each treatment with the control with confidence-sequence intervals."""
        mde = validate_mde(options.mde)
        rho2 = rho_squared(options.alpha, options.sequential_tuning)
        if options.index == "outcomes":
            return [
                self._by_outcomes(variants[0], t, rho2, options.alpha, mde) for t in variants[1:]
            ]
        if options.index != "exposures":
            raise StatsError(
                f"index must be 'exposures' or 'outcomes', got {options.index!r}", field="index"
            )
        return self._by_exposures(variants, rho2, options.alpha, mde, options.cuped)

    @staticmethod
    def _by_exposures(
        variants: Sequence[VariantData],
        rho2: float,
        alpha: float,
        mde: float | None = None,
        cuped: bool = True,
    ) -> list[Comparison]:
        control, treatments = variants[0], variants[1:]
        na = np.full(len(treatments), control.exposures)
        ca = np.full(len(treatments), control.conversions)
        nb = np.array([t.exposures for t in treatments])
        cb = np.array([t.conversions for t in treatments])
        total = na + nb
        abs_est, abs_var = absolute_lift(na, ca, nb, cb)
        rel_est, rel_var = relative_lift(na, ca, nb, cb)
        reduction: list[float | None] = [None] * len(treatments)
        adjusted = cuped_fit(variants)[0] if cuped else None
        if adjusted is not None:
            for i in range(len(treatments)):
                lift = adjusted.lift(0, i + 1)
                abs_est[i], abs_var[i] = lift.absolute, lift.absolute_variance
                rel_est[i], rel_var[i] = lift.relative, lift.relative_variance
                reduction[i] = lift.variance_reduction
        if mde is None:
            c = boundary(total, rho2, alpha)
            p_values = always_valid_p_value(abs_est, abs_var, total, rho2)
        else:
            effect = mde * control.rate
            c = mde_boundary(np.full(len(treatments), effect), abs_var, alpha)
            p_values = mde_p_value(abs_est, abs_var, effect)
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
            comparisons.append(
                Comparison(t.name, float(p_values[i]), absolute, relative, reduction[i])
            )
        return comparisons

    @staticmethod
    def _by_outcomes(
        control: VariantData,
        treatment: VariantData,
        rho2: float,
        alpha: float,
        mde: float | None = None,
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
        if mde is None:
            p_value = float(outcome_indexed_p_value(n_a, c_a, n_b, c_b, rho2))
            c2 = float(boundary(k, rho2, alpha)) ** 2
        else:
            p_value = float(outcome_indexed_mde_p_value(n_a, c_a, n_b, c_b, mde))
            null = n_b / (n_a + n_b)
            c2 = (
                float(mde_boundary(_share_effect(n_a, n_b, mde), null * (1 - null) / k, alpha)) ** 2
            )
        low, high = _wilson_share_interval(c_b / k, k, c2)

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
