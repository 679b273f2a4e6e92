"""The sequential test tuned to the planned effect: power at the plan, validity under peeking.

Seeded, vectorised simulations (a few seconds). The scenario of issue 17 is the one the mixture's
centre and spread were chosen on (tuned); a second design (10% baseline, +5%) was not used for
the choice and is checked beside it.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from postwise.errors import StatsError
from postwise.experiments.effects import absolute_lift
from postwise.experiments.planning import plan
from postwise.experiments.sequential import (
    mde_boundary,
    mde_p_value,
    outcome_indexed_mde_p_value,
)
from postwise.experiments.state import SequentialState
from postwise.experiments.stats import VariantData, analyze

ALPHA = 0.05
REPLICATES = 3000


def upper_99(hits: int, trials: int) -> float:
    return float(stats.beta.ppf(0.995, hits + 1, trials - hits))


def peek(
    seed: int, baseline: float, lift: float, cap: int, step: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    exposures = np.minimum(np.arange(1, cap // step + 2) * step, cap)
    increments = np.diff(np.concatenate([[0], exposures]))
    conv_a = np.cumsum(rng.binomial(increments, baseline, (REPLICATES, len(exposures))), axis=1)
    conv_b = np.cumsum(
        rng.binomial(increments, baseline * (1 + lift), (REPLICATES, len(exposures))), axis=1
    )
    return exposures, conv_a, conv_b


def found(
    exposures: np.ndarray, conv_a: np.ndarray, conv_b: np.ndarray, mde: float
) -> tuple[float, float]:
    """(share of replicates that crossed the right way, share that crossed at all)."""
    estimate, variance = absolute_lift(exposures, conv_a, exposures, conv_b)
    with np.errstate(divide="ignore", invalid="ignore"):
        effect = mde * conv_a / exposures
    crossed = np.minimum.accumulate(mde_p_value(estimate, variance, effect), axis=1) < ALPHA
    first = np.argmax(crossed, axis=1)
    right_way = (conv_b - conv_a)[np.arange(REPLICATES), first] > 0
    return float((crossed.any(axis=1) & right_way).mean()), float(crossed.any(axis=1).mean())


def test_tuned_power_at_ten_percent_on_three_percent_within_1_75x_fixed_horizon() -> None:
    design = plan(0.03, 0.10)
    cap = math.floor(1.75 * design.fixed_per_arm)  # 93,114 per arm
    power, _ = found(*peek(2026, 0.03, 0.10, cap, 1000), mde=0.10)
    assert power >= 0.85, power


def test_untuned_design_ten_percent_baseline_five_percent_lift() -> None:
    design = plan(0.10, 0.05)
    cap = math.floor(1.75 * design.fixed_per_arm)
    power, _ = found(*peek(77, 0.10, 0.05, cap, cap // 90), mde=0.05)
    assert power >= 0.85, power


@pytest.mark.parametrize(("baseline", "mde", "seed"), [(0.03, 0.10, 5), (0.10, 0.05, 6)])
def test_aa_peeking_every_look_false_winners_within_alpha(
    baseline: float, mde: float, seed: int
) -> None:
    cap = math.floor(1.75 * plan(baseline, mde).fixed_per_arm)
    _, any_cross = found(*peek(seed, baseline, 0.0, cap, max(1000, cap // 90)), mde=mde)
    assert upper_99(round(any_cross * REPLICATES), REPLICATES) <= ALPHA


def test_aa_read_hourly_while_clicks_mature_false_winners_within_alpha() -> None:
    rng = np.random.default_rng(48)
    hours, recipients = 48, 20000
    edges = 1.0 - np.exp(-np.arange(1, hours + 1) / 6.0)
    probabilities = np.diff(np.concatenate([[0.0], edges, [1.0]]))

    def arm() -> np.ndarray:
        clickers = rng.binomial(recipients, 0.03, REPLICATES)
        return np.cumsum(rng.multinomial(clickers, probabilities)[:, :hours], axis=1)

    clicks_a, clicks_b = arm(), arm()
    for mde in (0.05, 0.10, 0.30):
        gate = outcome_indexed_mde_p_value(recipients, clicks_a, recipients, clicks_b, mde)
        hits = int((gate.min(axis=1) < ALPHA).sum())
        assert upper_99(hits, REPLICATES) <= ALPHA, (mde, hits)


def test_outcome_index_tuned_power_reaches_85_percent_at_the_cap() -> None:
    design = plan(0.03, 0.10)
    recipients = math.floor(1.75 * design.fixed_per_arm)
    rng = np.random.default_rng(99)
    hours = 72
    edges = 1.0 - np.exp(-np.arange(1, hours + 1) / 6.0)
    probabilities = np.diff(np.concatenate([[0.0], edges, [1.0]]))

    def arm(rate: float) -> np.ndarray:
        clickers = rng.binomial(recipients, rate, REPLICATES)
        return np.cumsum(rng.multinomial(clickers, probabilities)[:, :hours], axis=1)

    clicks_a, clicks_b = arm(0.03), arm(0.033)
    gate = outcome_indexed_mde_p_value(recipients, clicks_a, recipients, clicks_b, 0.10)
    crossed = np.minimum.accumulate(gate, axis=1) < ALPHA
    first = np.argmax(crossed, axis=1)
    right_way = (clicks_b - clicks_a)[np.arange(REPLICATES), first] > 0
    assert float((crossed.any(axis=1) & right_way).mean()) >= 0.85


def test_boundary_is_where_the_p_value_reaches_alpha() -> None:
    variance = np.array([1e-6, 4e-6, 1e-5])
    effect = np.array([0.003, 0.003, 0.001])
    c = mde_boundary(effect, variance, ALPHA)
    p = mde_p_value(c * np.sqrt(variance), variance, effect)
    assert np.allclose(p, ALPHA, rtol=1e-6)
    assert np.all(mde_p_value(0.99 * c * np.sqrt(variance), variance, effect) > ALPHA)


def test_analyze_with_mde_matches_the_vectorised_gate_and_pins_mde() -> None:
    variants = [VariantData("A", 40000, 1200), VariantData("B", 40000, 1340)]
    result = analyze(variants, method="sequential", alpha=0.05, mde=0.10)
    estimate, variance = absolute_lift(40000, 1200, 40000, 1340)
    expected = float(mde_p_value(estimate, variance, 0.10 * 0.03))
    line = result.variant("B")
    assert line.p_value == pytest.approx(expected)
    assert result.mde == 0.10 and result.state is not None and result.state.mde == 0.10
    assert "tuned to a relative effect of 0.1" in result.guarantees
    # The interval excludes zero exactly when the p-value is below alpha.
    assert line.absolute_lift is not None
    assert (line.absolute_lift.lower > 0) == (expected < ALPHA)
    # The pinned mde survives storage and cannot be changed mid-experiment.
    stored = SequentialState.from_json(result.state.to_json())
    assert stored.mde == 0.10
    with pytest.raises(StatsError, match="mde"):
        analyze(variants, mde=0.2, previous=stored)
    with pytest.raises(StatsError, match="mde"):
        analyze(variants, previous=stored)


def test_tuning_to_the_effect_is_more_powerful_than_the_n_star_mixture_on_the_same_data() -> None:
    data = [VariantData("A", 60000, 1800), VariantData("B", 60000, 1990)]
    tuned = analyze(data, mde=0.10).variant("B").p_value
    n_star = analyze(data, sequential_tuning=2 * 92603).variant("B").p_value
    assert tuned is not None and n_star is not None and tuned < n_star


@pytest.mark.parametrize("bad", [0, -0.1, float("nan"), float("inf"), "10%", True, 11.0])
def test_bad_mde_is_refused_with_a_message(bad: object) -> None:
    with pytest.raises(StatsError, match="mde"):
        analyze([VariantData("A", 1000, 30), VariantData("B", 1000, 33)], mde=bad)  # type: ignore[arg-type]


def test_every_report_says_which_guarantees_its_method_keeps() -> None:
    from postwise.experiments.stats import builtin_tests

    data = [VariantData("A", 20000, 600), VariantData("B", 20000, 660)]
    assert "always-valid" in analyze(data).guarantees
    assert "one planned look" in analyze(data, method="chi2").guarantees
    assert "descriptive only" in analyze(data, method="bayesian").guarantees

    class PluginTest:  # a plugin's test that says nothing about its guarantees
        name = "plugin"
        always_valid = False
        decides = True

        def compare(self, variants, options):  # type: ignore[no-untyped-def]
            return builtin_tests()["chi2"].compare(variants, options)

    tests = {**builtin_tests(), "plugin": PluginTest()}
    worded = analyze(data, method="plugin", tests=tests).guarantees  # type: ignore[dict-item]
    assert worded.startswith("fixed horizon")
    PluginTest.guarantees = "exact for one look (Fisher)"  # type: ignore[attr-defined]
    assert analyze(data, method="plugin", tests=tests).guarantees == "exact for one look (Fisher)"  # type: ignore[dict-item]


def test_the_planner_cap_for_the_tuned_test_is_what_the_simulation_finds() -> None:
    design = plan(0.03, 0.10)  # 20 evenly spaced looks, 80% power
    assert 1.4 < design.tuned_inflation < 1.6 < design.inflation
    step = design.tuned_per_arm // 20
    power, _ = found(*peek(404, 0.03, 0.10, step * 20, step), mde=0.10)
    assert 0.77 <= power <= 0.83, power
