r"""Bandit mode: Thompson sampling moves traffic to better arms, with inference that survives it.

**Allocation.** At each look the weight of every arm is its posterior probability of being the
best (Beta-Binomial, the Bayesian readout's prior), integrated numerically (the same counts give
the same weights in every process), then mixed with a
uniform floor: ``w = floor + (1 - k floor) P(best)``, so no arm ever falls below ``floor`` and the
control keeps the traffic every comparison needs. The weights hold until the next look; each
such period is an *epoch*.

**Why ordinary inference breaks.** Pooling the counts of all epochs compares arms observed at
different times in different proportions: when the baseline drifts (a weekday, a season) an arm
that got its traffic in a good week looks better than it is, and the bias does not shrink with
more data. A false winner follows.

**What postwise does instead.** Within an epoch the weights are fixed, so the arms are a fair
randomised comparison there. The lift is estimated in each epoch and the epochs are combined
with weights ``n_A n_B / (n_A + n_B)`` that depend only on how many contacts each arm got (never
on outcomes)::

    theta_hat = sum_e w_e d_e / sum_e w_e,   Var = sum_e w_e^2 v_e / (sum_e w_e)^2

Given the past, each epoch's difference has mean zero under the null whatever the allocation
chose, so the running sum is a martingale and the mixture likelihood ratio of
:mod:`postwise.experiments.sequential` on (theta_hat, Var) keeps Ville's guarantee: the same
always-valid gate, at every look. This is the stratified (post-stratification by epoch) form of
inverse-propensity weighting: within an epoch every contact of an arm has the same propensity.

**The cost, stated in every bandit report.** Traffic moved to the leader buys less regret (fewer
contacts get the worse arm during the test), but the epoch weights ``n_A n_B / (n_A + n_B)`` fall
as the split becomes uneven, so a decision needs more exposures than an even split: measured in
docs/experiments-statistics.md ("Bandits"). Choose a bandit to earn while testing (subject lines,
send times), an even split to learn fastest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import special

from postwise.errors import StatsError
from postwise.experiments.contract import Interval
from postwise.experiments.data import VariantData, validate_alpha, validate_variants
from postwise.experiments.sequential import (
    always_valid_p_value,
    boundary,
    mde_boundary,
    mde_p_value,
    rho_squared,
    validate_mde,
)

__all__ = [
    "BANDIT_COST",
    "BanditComparison",
    "compare_epochs",
    "probability_best",
    "thompson_weights",
]

#: The cost of bandit mode, repeated in every bandit report.
BANDIT_COST = (
    "bandit mode moves traffic to the leading arms (less regret) but needs more exposures "
    "to reach a decision than an even split, and stops learning about arms held at the floor"
)
_GRID = 1001


def probability_best(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """P(arm i has the highest rate) under independent Beta(a_i, b_i) posteriors.

    Integrates f_i(x) prod_{j != i} F_j(x) on a grid spanning every posterior's central
    1 - 2e-9 mass (deterministic: the same counts give the same weights in every process).
    """
    low = float(np.min(special.betaincinv(a, b, 1e-9)))
    high = float(np.max(special.betaincinv(a, b, 1 - 1e-9)))
    x = np.linspace(low, high, _GRID)[:, None]
    log_pdf = (
        (a - 1) * np.log(np.clip(x, 1e-300, None))
        + (b - 1) * np.log1p(-np.clip(x, None, 1 - 1e-16))
        - special.betaln(a, b)
    )
    cdf = special.betainc(a, b, x)
    log_cdf = np.log(np.clip(cdf, 1e-300, None))
    others = log_cdf.sum(axis=1, keepdims=True) - log_cdf
    density = np.exp(log_pdf + others)
    mass = np.trapezoid(density, x[:, 0], axis=0)
    total = mass.sum()
    if not np.isfinite(total) or total <= 0:
        return np.full(len(a), 1.0 / len(a))
    return np.asarray(mass / total, dtype=np.float64)


def thompson_weights(
    variants: Sequence[VariantData], *, floor: float, prior: tuple[float, float] = (1.0, 1.0)
) -> tuple[float, ...]:
    """Each arm's share for the next epoch: floor + (1 - k floor) P(arm is best)."""
    items = validate_variants(variants)
    k = len(items)
    if isinstance(floor, bool) or not isinstance(floor, int | float) or not math.isfinite(floor):
        raise StatsError(f"floor must be a number, got {floor!r}", field="bandit_floor")
    if not 0.0 < floor <= 1.0 / k:
        raise StatsError(
            f"floor must lie in (0, 1/{k}] for {k} arms (0.05 to 0.1 is usual), got {floor}",
            field="bandit_floor",
        )
    a = np.array([prior[0] + v.conversions for v in items], dtype=np.float64)
    b = np.array([prior[1] + v.exposures - v.conversions for v in items], dtype=np.float64)
    best = probability_best(a, b)
    weights = floor + (1.0 - k * floor) * best
    return tuple(float(w) for w in weights / weights.sum())


@dataclass(frozen=True, slots=True)
class BanditComparison:
    """One treatment against the control, combined over epochs."""

    variant: str
    p_value: float
    absolute: Interval
    #: Effective exposures per arm: what an even split would need for the same precision.
    effective_per_arm: float
    epochs_used: int


def _epoch_terms(
    epochs: Sequence[Sequence[VariantData]], control: int, treatment: int
) -> tuple[float, float, float, int]:
    """(estimate, variance, total weight, epochs used) of the stratified lift."""
    weights, diffs, variances = [], [], []
    for epoch in epochs:
        a, b = epoch[control], epoch[treatment]
        if a.exposures == 0 or b.exposures == 0:
            continue
        pa, pb = a.rate, b.rate
        w = a.exposures * b.exposures / (a.exposures + b.exposures)
        weights.append(w)
        diffs.append(pb - pa)
        variances.append(pa * (1 - pa) / a.exposures + pb * (1 - pb) / b.exposures)
    if not weights:
        return 0.0, math.inf, 0.0, 0
    arr = np.asarray(weights)
    total = float(arr.sum())
    estimate = float(np.dot(arr, diffs) / total)
    variance = float(np.dot(arr * arr, variances) / total**2)
    return estimate, variance, total, len(weights)


def compare_epochs(
    epochs: Sequence[Sequence[VariantData]],
    *,
    alpha: float = 0.05,
    mde: float | None = None,
    sequential_tuning: float = 5000.0,
) -> list[BanditComparison]:
    """Compare each treatment with the control (arm 0) over epochs of fixed allocation.

    ``epochs`` holds, per epoch, every arm's exposures and conversions *in that epoch* (same
    arms, same order, every epoch). With ``mde`` the mixture is tuned to that relative effect.
    """
    alpha = validate_alpha(alpha)
    mde = validate_mde(mde)
    if not epochs:
        raise StatsError("a bandit needs at least one epoch of counts", field="epochs")
    names = [v.name for v in validate_variants(epochs[0])]
    for index, epoch in enumerate(epochs):
        if [v.name for v in validate_variants(epoch)] != names:
            raise StatsError(
                f"epoch {index} counts arms {[v.name for v in epoch]}, expected {names}: the arms "
                "of a bandit cannot change while it runs",
                field="epochs",
            )
    rho2 = rho_squared(alpha, sequential_tuning)
    control_conversions = sum(e[0].conversions for e in epochs)
    control_exposures = sum(e[0].exposures for e in epochs)
    control_rate = control_conversions / control_exposures if control_exposures else 0.0
    results = []
    for t in range(1, len(names)):
        estimate, variance, total, used = _epoch_terms(epochs, 0, t)
        # An even split of n per arm has w = n / 2: this precision is 2 w per arm, 4 w in all.
        n_equivalent = 4.0 * total
        if mde is None:
            p = float(always_valid_p_value(estimate, variance, n_equivalent, rho2))
            c = float(boundary(n_equivalent, rho2, alpha))
        else:
            effect = mde * control_rate
            p = float(mde_p_value(estimate, variance, effect))
            c = float(mde_boundary(np.asarray([effect]), np.asarray([variance]), alpha)[0])
        half = c * math.sqrt(variance) if math.isfinite(variance) else math.inf
        results.append(
            BanditComparison(
                variant=names[t],
                p_value=p,
                absolute=Interval(estimate, estimate - half, estimate + half),
                effective_per_arm=2.0 * total,
                epochs_used=used,
            )
        )
    return results
