r"""Sample sizes: the fixed horizon, and the cap an always-valid test needs for the same power.

**Fixed horizon** (one look, two-sided, per arm)::

    n = (z(1 - alpha'/2) + z(1 - beta))^2 (p_A q_A + p_B q_B) / Delta^2
    alpha' = alpha / (variants - 1)

alpha' is the first step of Holm's procedure (Bonferroni), so each comparison keeps the planned
power even when it is the first to be tested.

**Sequential cap.** An always-valid test pays for its freedom to look with a wider boundary,
so it needs more exposures for the same power. The cap is computed, not guessed: on the scale of
the z-statistic the test is a Brownian motion with drift mu, observed at ``looks`` evenly spaced
looks and stopping when |z| exceeds the boundary c(N) of :mod:`postwise.experiments.sequential`
(tuned with N* = the sample at the cap). The probability of stopping on the right side is
computed by the recursive numerical integration of Armitage, McPherson and Rowe (1969), the
standard computation of group-sequential power, and mu is solved for the requested power. The
problem is scale-free, so the cap is the fixed n times (mu / (z(1 - alpha'/2) + z(1 - beta)))^2,
a constant for given alpha, power and looks: at alpha = 0.05 and 80% power it is 1.83 for 5
looks, 1.78 for 10, 1.74 for 20 (the default) and 1.70 for 50. Looking more often than planned
only adds power; the test suite checks the figure by simulation.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from scipy import optimize, special

from postwise.errors import StatsError
from postwise.experiments.data import validate_alpha
from postwise.experiments.sequential import boundary, mde_boundary, rho_squared

__all__ = ["Plan", "plan", "sequential_inflation", "sequential_power", "tuned_inflation"]

#: Grid points per look of the recursive integration (odd, for Simpson's rule).
GRID = 301


@dataclass(frozen=True, slots=True)
class Plan:
    """Sample sizes for one experiment design (per arm; every arm gets the same share)."""

    baseline: float
    treatment_rate: float
    alpha: float
    #: The per-comparison level the sizes are computed at (Holm's first step).
    comparison_alpha: float
    power: float
    variants: int
    looks: int
    #: Exposures per arm for a single look with the fixed-horizon test.
    fixed_per_arm: int
    #: Exposures per arm at which to stop the always-valid test (indexed by exposures).
    sequential_per_arm: int
    #: N* to pass as ``sequential_tuning`` with ``index="exposures"``.
    sequential_tuning: int
    #: sequential_per_arm / fixed_per_arm before rounding.
    inflation: float
    #: Recipients per arm for a send analysed with ``index="outcomes"``: conditioning on the
    #: outcome count gives up the information in the non-events, a factor (p_A + p_B) /
    #: (p_A q_A + p_B q_B) more recipients (negligible for rare outcomes such as clicks).
    outcome_sequential_per_arm: int
    #: N* to pass as ``sequential_tuning`` with ``index="outcomes"``: expected outcomes.
    outcome_tuning: int
    #: Exposures per arm at which to stop the test tuned to this plan's effect
    #: (``analyze(..., mde=...)``, the experiment's ``mde``), for the same power.
    tuned_per_arm: int = 0
    #: tuned_per_arm / fixed_per_arm before rounding.
    tuned_inflation: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        return asdict(self)


def _simpson(low: float, high: float) -> tuple[np.ndarray, np.ndarray]:
    x = np.linspace(low, high, GRID)
    w = np.full(GRID, 2.0)
    w[1::2] = 4.0
    w[0] = w[-1] = 1.0
    return x, w * (x[1] - x[0]) / 3.0


def sequential_power(drift: float, times: np.ndarray, critical: np.ndarray) -> float:
    """P(S(t_k) >= c_k sqrtt_k at some look, before any crossing below) for S = W + drift*t.

    ``times`` are increasing information fractions in (0, 1], ``critical`` the |z| boundary at
    each; the recursion carries the density of paths that have not yet stopped.
    """
    edges = critical * np.sqrt(times)
    first = float(times[0])
    power = float(special.ndtr((drift * first - edges[0]) / math.sqrt(first)))
    x, w = _simpson(-edges[0], edges[0])
    density = np.exp(-0.5 * (x - drift * first) ** 2 / first) / math.sqrt(2 * math.pi * first)
    for k in range(1, len(times)):
        step = float(times[k] - times[k - 1])
        sd = math.sqrt(step)
        mass = w * density
        power += float(np.sum(mass * special.ndtr((x + drift * step - edges[k]) / sd)))
        if k == len(times) - 1:
            break
        x_next, w_next = _simpson(-edges[k], edges[k])
        kernel = np.exp(-0.5 * ((x_next[:, None] - x[None, :] - drift * step) / sd) ** 2)
        density = kernel @ mass / (sd * math.sqrt(2 * math.pi))
        x, w = x_next, w_next
    return power


@lru_cache(maxsize=64)
def sequential_inflation(alpha: float, comparison_alpha: float, power: float, looks: int) -> float:
    """Sequential cap over fixed-horizon n, for the same power.

    rho^2 comes from ``alpha`` (as in ``analyze``), the crossing level is ``comparison_alpha``
    (alpha over the number of comparisons) and N* is the sample at the cap, so the boundary at
    look k depends only on k / looks.
    """
    times = np.arange(1, looks + 1, dtype=np.float64) / looks
    critical = boundary(times, rho_squared(alpha, 1.0), comparison_alpha)
    target = float(special.ndtri(1 - comparison_alpha / 2) + special.ndtri(power))
    drift = optimize.brentq(
        lambda mu: sequential_power(mu, times, critical) - power, target, 4.0 * target, xtol=1e-7
    )
    return float((drift / target) ** 2)


@lru_cache(maxsize=64)
def tuned_inflation(comparison_alpha: float, power: float, looks: int) -> float:
    """Cap over fixed-horizon n for the mixture tuned to the planned effect, same power.

    The mixture is centred on the effect the plan is for, so in z units its boundary at
    information fraction t depends on the drift mu itself: c(mu sqrt(t)). mu is solved so that
    the recursive integration gives ``power`` (the mixture's centre is the true effect).
    """
    times = np.arange(1, looks + 1, dtype=np.float64) / looks
    ones = np.ones(looks)

    def gap(mu: float) -> float:
        critical = mde_boundary(mu * np.sqrt(times), ones, comparison_alpha)
        return sequential_power(mu, times, critical) - power

    target = float(special.ndtri(1 - comparison_alpha / 2) + special.ndtri(power))
    drift = optimize.brentq(gap, target, 4.0 * target, xtol=1e-7)
    return float((drift / target) ** 2)


def plan(
    baseline: float,
    mde: float,
    *,
    alpha: float = 0.05,
    power: float = 0.8,
    relative: bool = True,
    variants: int = 2,
    looks: int = 20,
) -> Plan:
    """Exposures per arm to detect a lift of ``mde`` over ``baseline`` with ``power``.

    ``mde`` is relative (0.10 = +10%) unless ``relative=False`` (then in rate points).
    ``looks`` is the number of evenly spaced looks the sequential cap assumes.
    """
    alpha = validate_alpha(alpha)
    if not 0.0 < baseline < 1.0:
        raise StatsError(
            f"baseline must be a rate between 0 and 1, got {baseline}", field="baseline"
        )
    if not mde > 0:
        raise StatsError(f"mde must be positive, got {mde}", field="mde")
    treatment = baseline * (1.0 + mde) if relative else baseline + mde
    if not treatment < 1.0:
        raise StatsError(
            f"baseline {baseline} lifted by {mde} gives a rate of {treatment:.4g}, not below 1",
            field="mde",
        )
    gap = treatment - baseline
    if not gap * gap * 1e12 > baseline * (1 - baseline):
        # Detecting the lift would take more than ~10^12 exposures per arm (or none at all).
        raise StatsError(
            f"mde {mde} is too small to detect on a rate of {baseline}; plan for a larger lift",
            field="mde",
        )
    if not 0.5 <= power < 1.0:
        raise StatsError(f"power must lie in [0.5, 1), got {power}", field="power")
    if isinstance(variants, bool) or not isinstance(variants, int) or variants < 2:
        raise StatsError(
            f"variants must be a whole number >= 2, got {variants!r}", field="variants"
        )
    if isinstance(looks, bool) or not isinstance(looks, int) or not 1 <= looks <= 500:
        raise StatsError(
            f"looks must be a whole number from 1 to 500, got {looks!r}", field="looks"
        )

    comparison_alpha = alpha / (variants - 1)
    z = float(special.ndtri(1 - comparison_alpha / 2) + special.ndtri(power))
    spread = baseline * (1 - baseline) + treatment * (1 - treatment)
    fixed = z**2 * spread / (treatment - baseline) ** 2
    inflation = sequential_inflation(alpha, comparison_alpha, power, looks)
    capped = math.ceil(fixed * inflation)
    by_outcomes = math.ceil(fixed * inflation * (baseline + treatment) / spread)
    tuned = tuned_inflation(comparison_alpha, power, looks)
    return Plan(
        baseline=baseline,
        treatment_rate=treatment,
        alpha=alpha,
        comparison_alpha=comparison_alpha,
        power=power,
        variants=variants,
        looks=looks,
        fixed_per_arm=math.ceil(fixed),
        sequential_per_arm=capped,
        sequential_tuning=2 * capped,
        inflation=inflation,
        outcome_sequential_per_arm=by_outcomes,
        outcome_tuning=math.ceil(by_outcomes * (baseline + treatment)),
        tuned_per_arm=math.ceil(fixed * tuned),
        tuned_inflation=tuned,
    )
