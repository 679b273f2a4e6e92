"""The Bayesian readout: Beta-Binomial posteriors, probability to beat control, expected loss.

Shown beside the decision, never as the gate: stopping when "probability to beat control"
passes 95% is as prone to peeking as stopping at p < 0.05. The numbers answer a different
question ("if I shipped this now, how likely is it better, and how much could I lose?").

Each variant's rate has the posterior Beta(a + conversions, b + exposures - conversions) under
a Beta(a, b) prior (uniform by default). With C the control's rate and T a treatment's:

* probability to beat control P(T > C) = integral f_T(x) F_C(x) dx;
* expected loss of shipping T, E[max(C - T, 0)], in rate units, using the closed form
  E[(C - x)+] = E[C]*(1 - I_x(a_C + 1, b_C)) - x*(1 - I_x(a_C, b_C)).

Both are one-dimensional integrals, computed by Gauss-Legendre quadrature over the narrower of
the two posteriors (+/-20 standard deviations), so the other posterior enters only through its
smooth CDF; a posterior with an unbounded density (prior shape below 1 and no conversions) is
integrated over its quantiles instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from numpy.typing import NDArray
from scipy import special

from postwise.errors import StatsError
from postwise.experiments.contract import Comparison, Interval, StatsOptions
from postwise.experiments.data import VariantData

__all__ = ["BayesianReadout", "beat_probability_and_loss", "posteriors"]

Floats = NDArray[np.float64]

#: Gauss-Legendre nodes; 128 keep both numbers within 1e-9 of the exact values in our tests.
NODES = 128
#: Half-width of the integration window in posterior standard deviations.
WINDOW_SD = 20.0


@lru_cache(maxsize=4)
def _legendre(count: int) -> tuple[Floats, Floats]:
    nodes, weights = special.roots_legendre(count)
    return np.asarray(nodes, dtype=np.float64), np.asarray(weights, dtype=np.float64)


def posteriors(
    variants: Sequence[VariantData], prior: tuple[float, float]
) -> tuple[Floats, Floats]:
    """Beta posterior parameters (a, b) of every variant's rate."""
    a0, b0 = prior
    if not (np.isfinite(a0) and np.isfinite(b0) and a0 > 0 and b0 > 0):
        raise StatsError(
            f"the Beta prior needs two positive numbers, got {prior!r}; (1, 1) is uniform",
            field="prior",
        )
    conversions = np.array([v.conversions for v in variants], dtype=np.float64)
    exposures = np.array([v.exposures for v in variants], dtype=np.float64)
    return a0 + conversions, b0 + exposures - conversions


def _moments(a: Floats, b: Floats) -> tuple[Floats, Floats]:
    total = a + b
    return a / total, a * b / (total**2 * (total + 1.0))


def _nodes(a: Floats, b: Floats) -> tuple[Floats, Floats]:
    """Per-row nodes x and weights w with sum w*g(x) ~ E[g(X)], X ~ Beta(a, b)."""
    unit, unit_w = _legendre(NODES)
    mean, var = _moments(a, b)
    sd = np.sqrt(var)
    low = np.maximum(0.0, mean - WINDOW_SD * sd)[:, None]
    high = np.minimum(1.0, mean + WINDOW_SD * sd)[:, None]
    x = low + (high - low) * (unit[None, :] + 1.0) / 2.0
    log_pdf = (
        (a[:, None] - 1.0) * np.log(x)
        + (b[:, None] - 1.0) * np.log1p(-x)
        - special.betaln(a, b)[:, None]
    )
    w = unit_w[None, :] * (high - low) / 2.0 * np.exp(log_pdf)
    singular = (a < 1.0) | (b < 1.0)
    if singular.any():
        quantiles = special.betaincinv(a[singular, None], b[singular, None], (unit + 1.0) / 2.0)
        x[singular] = quantiles
        w[singular] = unit_w / 2.0
    return x, w


def beat_probability_and_loss(
    control: tuple[float, float], treatments: tuple[Floats, Floats]
) -> tuple[Floats, Floats]:
    """P(T > C) and E[max(C - T, 0)] for each treatment posterior against the control's."""
    a_t, b_t = (np.asarray(v, dtype=np.float64) for v in treatments)
    a_c = np.full_like(a_t, control[0])
    b_c = np.full_like(b_t, control[1])
    mean_c, var_c = _moments(a_c, b_c)
    mean_t, var_t = _moments(a_t, b_t)
    over_t = var_t <= var_c

    # Integrate over whichever posterior is narrower, so the integrand's other factor is smooth.
    a_int = np.where(over_t, a_t, a_c)
    b_int = np.where(over_t, b_t, b_c)
    x, w = _nodes(a_int, b_int)
    a_o = np.where(over_t, a_c, a_t)[:, None]
    b_o = np.where(over_t, b_c, b_t)[:, None]
    mean_o = np.where(over_t, mean_c, mean_t)[:, None]
    cdf = special.betainc(a_o, b_o, x)
    cdf_shifted = special.betainc(a_o + 1.0, b_o, x)
    # Over T: P(T > C) = E_T[F_C(T)], loss = E_T[E(C - T)+].
    beat_over_t = np.sum(w * cdf, axis=1)
    loss_over_t = np.sum(w * (mean_o * (1.0 - cdf_shifted) - x * (1.0 - cdf)), axis=1)
    # Over C: P(T > C) = E_C[1 - F_T(C)], loss = E_C[E(C - T)+].
    beat_over_c = 1.0 - np.sum(w * cdf, axis=1)
    loss_over_c = np.sum(w * (x * cdf - mean_o * cdf_shifted), axis=1)
    beat = np.clip(np.where(over_t, beat_over_t, beat_over_c), 0.0, 1.0)
    loss = np.maximum(np.where(over_t, loss_over_t, loss_over_c), 0.0)
    return beat, loss


class BayesianReadout:
    """Credible intervals from the Beta posteriors; descriptive, so it never decides."""

    name = "bayesian"
    always_valid = False
    decides = False

    def compare(self, variants: Sequence[VariantData], options: StatsOptions) -> list[Comparison]:
        """Normal-approximation credible intervals of each treatment's lift over control."""
        a, b = posteriors(variants, options.prior)
        mean, var = _moments(a, b)
        z = float(special.ndtri(1.0 - options.alpha / 2.0))
        m_c, v_c = float(mean[0]), float(var[0])
        comparisons = []
        for i, variant in enumerate(variants[1:], start=1):
            m_t, v_t = float(mean[i]), float(var[i])
            diff, half = m_t - m_c, z * float(np.sqrt(v_t + v_c))
            ratio = m_t / m_c - 1.0
            rel_half = z * float(np.sqrt(v_t / m_c**2 + m_t**2 * v_c / m_c**4))
            comparisons.append(
                Comparison(
                    variant=variant.name,
                    p_value=None,
                    absolute=Interval(diff, diff - half, diff + half),
                    relative=Interval(ratio, ratio - rel_half, ratio + rel_half),
                )
            )
        return comparisons
