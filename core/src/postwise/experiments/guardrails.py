r"""Guardrails: one-sided always-valid tests that a treatment does not raise a harm rate.

Every treatment is compared with the control on the share of exposed contacts who unsubscribed,
complained or hard-bounced. The question is one-sided (is the treatment *worse*?), so the test
mixes the normal-mixture likelihood ratio of :mod:`postwise.experiments.sequential` over harmful
effects only (a half-normal mixture)::

    LR+ = 2 Phi(z sqrt(x / (1 + x))) (1 + x)^(-1/2) exp(x z^2 / (2 (1 + x))),   x = N rho^2

with z the standardised increase of the treatment's rate. It is a mixture of likelihood ratios,
so Ville's inequality holds: ``p = min(1, 1 / LR+)`` is valid at every look, and acting on the
first look where it drops below the level keeps the chance of stopping a harmless arm within it.
z uses the pooled rate under the null (a score statistic), which behaves for rare events where
the unpooled one does not. With ``index="outcomes"`` the test watches the share of harm events
that come from the treatment, as the primary test does while outcomes mature.

The level is the experiment's alpha split over the guardrail metrics (Bonferroni), so a harmless
arm is stopped by mistake at most alpha of the time whatever its metrics do. A harm needs at
least ``MIN_EVENTS`` events in the treatment before it can stop an arm: the normal approximation
behind the test needs a few, and an arm is never stopped on one complaint.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from scipy import special

from postwise.errors import StatsError
from postwise.experiments.contract import Index
from postwise.experiments.data import VariantData, validate_alpha, validate_variants
from postwise.experiments.sequential import DEFAULT_TUNING, rho_squared

__all__ = ["GUARDRAIL_METRICS", "MIN_EVENTS", "GuardrailResult", "check_guardrails"]

#: The harm rates every experiment watches, by their event: unsubscribes, spam complaints, hard
#: bounces (a ``bounce`` event whose ``kind`` is ``hard``).
GUARDRAIL_METRICS = ("unsubscribe", "complaint", "hard_bounce")
#: Harm events a treatment needs before a guardrail can stop it.
MIN_EVENTS = 5
#: N* of the guardrail test per index: harms are rare, so the outcome index is tuned to a few
#: dozen events.
GUARDRAIL_TUNING: dict[str, float] = {"exposures": DEFAULT_TUNING["exposures"], "outcomes": 50.0}


@dataclass(frozen=True, slots=True)
class GuardrailResult:
    """One treatment on one guardrail metric at this look."""

    variant: str
    metric: str
    control_rate: float
    rate: float
    #: One-sided always-valid p-value of "the treatment does not raise the rate".
    p_value: float
    #: The level it is compared with (alpha over the number of metrics).
    level: float
    harmful: bool
    #: Why the arm is stopped, in words for the report; None when it is not.
    reason: str | None


def one_sided_p_value(z: float, n: float, rho2: float) -> float:
    """min(1, 1/LR+) of the half-normal mixture at standardised increase ``z`` after ``n``."""
    x = n * rho2
    if not (x > 0 and math.isfinite(z)):
        return 1.0
    shrink = math.sqrt(x / (1.0 + x))
    log_lr = (
        math.log(2.0)
        + float(special.log_ndtr(z * shrink))
        - 0.5 * math.log1p(x)
        + x * z * z / (2.0 * (1.0 + x))
    )
    return 1.0 if log_lr <= 0 else min(1.0, math.exp(-log_lr))


def _standardised(
    control: VariantData, treatment: VariantData, index: Index
) -> tuple[float, float]:
    """(z of the treatment's increase, N) for the chosen index."""
    n_a, c_a, n_b, c_b = (
        control.exposures,
        control.conversions,
        treatment.exposures,
        treatment.conversions,
    )
    if n_a == 0 or n_b == 0:
        return 0.0, 0.0
    if index == "outcomes":
        k = c_a + c_b
        if k == 0:
            return 0.0, 0.0
        null = n_b / (n_a + n_b)
        return (c_b / k - null) / math.sqrt(null * (1 - null) / k), float(k)
    pooled = (c_a + c_b) / (n_a + n_b)
    variance = pooled * (1 - pooled) * (1 / n_a + 1 / n_b)
    if variance <= 0:
        return 0.0, float(n_a + n_b)
    return (c_b / n_b - c_a / n_a) / math.sqrt(variance), float(n_a + n_b)


def check_guardrails(
    metrics: Mapping[str, Sequence[VariantData]],
    *,
    alpha: float = 0.05,
    index: Index = "exposures",
    tuning: float | None = None,
) -> list[GuardrailResult]:
    """Test every treatment on every guardrail metric; ``metrics`` maps a metric to its counts.

    Each metric's counts are per variant, control first, in the same order for every metric,
    with ``conversions`` the exposed contacts who had the harm event.
    """
    alpha = validate_alpha(alpha)
    if not metrics:
        return []
    if index not in GUARDRAIL_TUNING:
        raise StatsError(f"index must be 'exposures' or 'outcomes', got {index!r}", field="index")
    rho2 = rho_squared(alpha, GUARDRAIL_TUNING[index] if tuning is None else tuning)
    level = alpha / len(metrics)
    order: list[str] | None = None
    results = []
    for metric, counts in metrics.items():
        items = validate_variants(counts)
        names = [v.name for v in items]
        if order is None:
            order = names
        elif names != order:
            raise StatsError(
                f"guardrail {metric!r} counts variants {names}, expected {order}",
                field="guardrails",
            )
        control = items[0]
        for treatment in items[1:]:
            z, n = _standardised(control, treatment, index)
            p = one_sided_p_value(z, n, rho2) if z > 0 else 1.0
            harmful = p < level and treatment.conversions >= MIN_EVENTS
            reason = None
            if harmful:
                reason = (
                    f"guardrail {metric}: {treatment.rate * 100:.3g}% of {treatment.name}'s "
                    f"contacts against {control.rate * 100:.3g}% for control {control.name} "
                    f"(one-sided always-valid p = {p:.2g} < {level:.3g})"
                )
            results.append(
                GuardrailResult(
                    variant=treatment.name,
                    metric=metric,
                    control_rate=control.rate,
                    rate=treatment.rate,
                    p_value=p,
                    level=level,
                    harmful=harmful,
                    reason=reason,
                )
            )
    return results
