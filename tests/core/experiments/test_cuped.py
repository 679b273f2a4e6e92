"""CUPED: agreement with an ANCOVA fitted by statsmodels, bad input, and the seeded saving.

The simulation's covariate is the same metric in a pre-period (a binary "converted before"),
correlated 0.5 with the outcome; the treatment multiplies the conversion probability of both
kinds of contact by 1.1, so the covariate cannot move with the treatment.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from scipy import stats

from postwise.errors import StatsError
from postwise.experiments.cuped import adjusted_difference
from postwise.experiments.data import Covariate
from postwise.experiments.planning import plan
from postwise.experiments.sequential import mde_p_value
from postwise.experiments.stats import VariantData, analyze

ALPHA = 0.05
REPLICATES = 3000
#: Pre-period converters, and the conversion rate of each kind: overall 3%, correlation 0.5.
PRE, HIGH, LOW = 0.03, 0.515, 0.015


def sums(x: np.ndarray, y: np.ndarray, name: str, missing: int = 0) -> VariantData:
    """A variant from per-contact values; the last ``missing`` contacts lack the covariate."""
    have = slice(0, len(x) - missing)
    xs, ys = x[have], y[have]
    covariate = Covariate(
        count=len(xs),
        total=float(xs.sum()),
        squares=float((xs**2).sum()),
        cross=float((xs * ys).sum()),
        conversions=int(ys.sum()),
    )
    return VariantData(name, len(x), int(y.sum()), covariate)


def contacts(rng: np.random.Generator, n: int, lift: float) -> tuple[np.ndarray, np.ndarray]:
    score = rng.gamma(2.0, 10.0, n)  # an engagement score
    probability = 1 / (1 + np.exp(-(-5.2 + 0.08 * score)))
    return score, (rng.random(n) < probability * (1 + lift)).astype(np.float64)


def test_adjusted_lift_equals_the_ancova_treatment_coefficient_of_statsmodels() -> None:
    sm = pytest.importorskip("statsmodels.api")
    rng = np.random.default_rng(1)
    xa, ya = contacts(rng, 20000, 0.0)
    xb, yb = contacts(rng, 20000, 0.15)
    result = analyze([sums(xa, ya, "A"), sums(xb, yb, "B")], method="sequential")
    line = result.variant("B")

    x = np.concatenate([xa, xb])
    design = sm.add_constant(np.column_stack([np.r_[np.zeros(20000), np.ones(20000)], x]))
    ols = sm.OLS(np.concatenate([ya, yb]), design).fit(cov_type="HC0")
    assert line.absolute_lift is not None
    assert line.absolute_lift.estimate == pytest.approx(ols.params[1], rel=1e-9)
    raw = ya.var() / 20000 + yb.var() / 20000
    adjusted = raw * (1 - (line.variance_reduction or 0.0))
    assert adjusted == pytest.approx(ols.bse[1] ** 2, rel=0.02)
    assert result.adjustment is not None
    assert result.adjustment["correlation"] == pytest.approx(
        np.corrcoef(x, np.concatenate([ya, yb]))[0, 1], abs=0.02
    )
    assert "CUPED" in result.guarantees


def test_missing_covariates_are_filled_with_the_pooled_mean_and_reported() -> None:
    sm = pytest.importorskip("statsmodels.api")
    rng = np.random.default_rng(2)
    xa, ya = contacts(rng, 10000, 0.0)
    xb, yb = contacts(rng, 10000, 0.0)
    result = analyze([sums(xa, ya, "A", missing=3000), sums(xb, yb, "B", missing=1000)])
    pooled = (xa[:7000].sum() + xb[:9000].sum()) / 16000
    xa_f, xb_f = xa.copy(), xb.copy()
    xa_f[7000:], xb_f[9000:] = pooled, pooled
    design = sm.add_constant(
        np.column_stack([np.r_[np.zeros(10000), np.ones(10000)], np.r_[xa_f, xb_f]])
    )
    ols = sm.OLS(np.r_[ya, yb], design).fit()
    line = result.variant("B")
    assert line.absolute_lift is not None
    assert line.absolute_lift.estimate == pytest.approx(ols.params[1], rel=1e-9)
    assert result.adjustment is not None and result.adjustment["coverage"] == 0.8
    assert any("20.0% of exposed contacts had no covariate" in w for w in result.warnings)


def test_fallbacks_are_stated_and_bad_sums_refused() -> None:
    plain = VariantData("A", 1000, 30)
    with_x = VariantData("B", 1000, 33, Covariate(1000, 5000.0, 40000.0, 200.0, 33))
    partial = analyze([plain, with_x])
    assert partial.adjustment is None and partial.variant("B").variance_reduction is None
    assert any("no covariate sums for A" in w for w in partial.warnings)
    flat = Covariate(1000, 1000.0, 1000.0, 30.0, 30)
    constant = analyze([VariantData("A", 1000, 30, flat), VariantData("B", 1000, 30, flat)])
    assert any("does not vary" in w for w in constant.warnings)
    by_outcomes = analyze([with_x, VariantData("C", 1000, 33, with_x.covariate)], index="outcomes")
    assert any("index='outcomes'" in w for w in by_outcomes.warnings)

    for bad, field in [
        (Covariate(1001, 5.0, 50.0, 1.0, 1), "count"),
        (Covariate(10, 5.0, 1.0, 1.0, 1), "squares"),  # sum of squares below (sum)^2 / n
        (Covariate(10, 5.0, 5.0, 9.0, 1), "cross"),  # one converter cannot add up to 9
        (Covariate(10, float("nan"), 5.0, 1.0, 1), "total"),
        (Covariate(10, 1e12, 1e24, 1.0, 1), "total"),  # absurd mean
        (Covariate(10, 5.0, 5.0, 1.0, 40), "conversions"),
        (Covariate(-1, 5.0, 5.0, 1.0, 1), "count"),
    ]:
        with pytest.raises(StatsError, match=field):
            VariantData("B", 1000, 33, bad)


def simulate(seed: int, lift: float, cap: int, step: int = 1000) -> tuple[np.ndarray, ...]:
    """Cumulative (n, sum Y, sum X, sum XY) per arm at each look, for REPLICATES runs."""
    rng = np.random.default_rng(seed)
    exposures = np.minimum(np.arange(1, cap // step + 2) * step, cap)
    increments = np.diff(np.concatenate([[0], exposures]))
    shape = (REPLICATES, len(exposures))

    def arm(factor: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pre = rng.binomial(increments, PRE, shape)
        y_pre = rng.binomial(pre, HIGH * factor)
        y_new = rng.binomial(increments - pre, LOW * factor)
        return (np.cumsum(pre, 1), np.cumsum(y_pre + y_new, 1), np.cumsum(y_pre, 1))

    xa, ya, xya = arm(1.0)
    xb, yb, xyb = arm(1.0 + lift)
    return exposures, xa, ya, xya, xb, yb, xyb


def decide(data: tuple[np.ndarray, ...], adjust: bool) -> tuple[float, float]:
    n, xa, ya, xya, xb, yb, xyb = data
    estimate, variance, raw = adjusted_difference((n, ya, xa, xa, xya), (n, yb, xb, xb, xyb))
    if not adjust:
        estimate = (yb - ya) / n
        variance = raw
    p = mde_p_value(estimate, variance, 0.10 * ya / n)
    crossed = np.minimum.accumulate(p, axis=1) < ALPHA
    first = np.argmax(crossed, axis=1)
    right = (yb - ya)[np.arange(REPLICATES), first] > 0
    return float((crossed.any(1) & right).mean()), float(crossed.any(1).mean())


def test_the_simulated_covariate_is_correlated_one_half() -> None:
    mean = PRE * HIGH + (1 - PRE) * LOW
    rho = (PRE * HIGH - PRE * mean) / math.sqrt(PRE * (1 - PRE) * mean * (1 - mean))
    assert mean == pytest.approx(0.03, abs=2e-4)
    assert rho == pytest.approx(0.5, abs=0.01)


def test_cuped_at_rho_half_keeps_the_power_with_a_fifth_fewer_exposures() -> None:
    cap = math.floor(1.75 * plan(0.03, 0.10).fixed_per_arm)
    unadjusted, _ = decide(simulate(11, 0.10, cap), adjust=False)
    adjusted, _ = decide(simulate(12, 0.10, math.floor(0.8 * cap)), adjust=True)
    assert adjusted >= 0.85
    assert adjusted >= unadjusted - 0.01, (adjusted, unadjusted)


def test_cuped_aa_false_winners_under_peeking_within_alpha() -> None:
    cap = math.floor(1.75 * plan(0.03, 0.10).fixed_per_arm)
    _, crossed = decide(simulate(13, 0.0, cap), adjust=True)
    hits = round(crossed * REPLICATES)
    assert float(stats.beta.ppf(0.995, hits + 1, REPLICATES - hits)) <= ALPHA


def test_the_report_states_the_variance_reduction_and_the_sample_saving() -> None:
    data = simulate(14, 0.0, 60000, step=60000)
    n, xa, ya, xya, xb, yb, xyb = (np.asarray(d).ravel() for d in data)
    a = VariantData(
        "A",
        int(n[0]),
        int(ya[0]),
        Covariate(int(n[0]), float(xa[0]), float(xa[0]), float(xya[0]), int(ya[0])),
    )
    b = VariantData(
        "B",
        int(n[0]),
        int(yb[0]),
        Covariate(int(n[0]), float(xb[0]), float(xb[0]), float(xyb[0]), int(yb[0])),
    )
    line = analyze([a, b], mde=0.10).variant("B")
    assert line.variance_reduction == pytest.approx(0.25, abs=0.03)


@pytest.mark.parametrize("kind", ["pre_engagement", "pre_period"])
def test_the_experiment_report_adjusts_with_the_stored_covariate(runtime: Any, kind: str) -> None:
    from datetime import UTC, datetime, timedelta

    from experiment_seed import add_contacts, assigned, expose, new_experiment, record, split

    from postwise.analytics.sinks import StoredEvent
    from postwise.analytics.sql_sink import SqlSink
    from postwise.experiments.service import experiment_report

    experiment_id = new_experiment(runtime, target="trigger", covariate=kind, min_exposures=50)
    contacts = add_contacts(runtime, 1200)
    rng = np.random.default_rng(5)
    active = {c for c in contacts if rng.random() < 0.25}  # engaged in the month before
    sent = datetime.now(UTC) - timedelta(hours=1)
    arms = assigned(runtime, experiment_id, contacts)
    expose(runtime, experiment_id, arms, at=sent)
    early = sent - timedelta(days=40)  # too early to count
    SqlSink(runtime.engine).write_batch(
        [StoredEvent(f"pre-{c}", "click", sent - timedelta(days=3), contact_id=c) for c in active]
        + [StoredEvent(f"old-{c}", "click", early, contact_id=c) for c in contacts]
    )
    for variant, members in split(arms).items():
        again = [c for c in members if c in active][::2]
        again += [c for c in members if c not in active][::25]
        record(runtime, experiment_id, again, variant, kind="click")
    report = experiment_report(runtime, experiment_id)
    analysis = report["analysis"]
    assert analysis["adjustment"] is not None, analysis["warnings"]
    assert analysis["adjustment"]["coverage"] == 1.0
    assert analysis["adjustment"]["correlation"] > 0.4
    assert analysis["variants"][1]["variance_reduction"] > 0.15
    assert "CUPED" in analysis["guarantees"]
    assert report["experiment"]["covariate"] == kind
