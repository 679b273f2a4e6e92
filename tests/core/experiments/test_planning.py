"""Planning: fixed-horizon sample sizes and the sequential cap for the same power."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import special

from postwise.errors import StatsError
from postwise.experiments.planning import plan, sequential_inflation, sequential_power
from postwise.experiments.sequential import boundary, rho_squared


def test_fixed_horizon_n_is_the_textbook_formula() -> None:
    design = plan(0.03, 0.10)
    z = special.ndtri(0.975) + special.ndtri(0.8)
    expected = z**2 * (0.03 * 0.97 + 0.033 * 0.967) / 0.003**2
    assert design.fixed_per_arm == math.ceil(expected)
    assert design.fixed_per_arm == 53208


def test_absolute_mde_is_in_rate_points() -> None:
    assert plan(0.03, 0.003, relative=False).fixed_per_arm == plan(0.03, 0.10).fixed_per_arm


def test_sequential_cap_is_about_1_7_times_the_fixed_n_at_5_percent_and_80_percent_power() -> None:
    design = plan(0.03, 0.10)
    assert 1.65 < design.inflation < 1.8
    treatment = 0.03 * 1.1
    z = special.ndtri(0.975) + special.ndtri(0.8)
    unrounded = z**2 * (0.03 * 0.97 + treatment * (1 - treatment)) / (treatment - 0.03) ** 2
    assert design.sequential_per_arm == math.ceil(design.inflation * unrounded)
    assert design.sequential_tuning == 2 * design.sequential_per_arm


def test_more_planned_looks_need_a_smaller_cap() -> None:
    caps = [plan(0.03, 0.10, looks=k).sequential_per_arm for k in (1, 5, 20, 50)]
    assert caps == sorted(caps, reverse=True)
    assert plan(0.03, 0.10, looks=50).inflation == pytest.approx(1.70, abs=0.01)


def test_several_variants_plan_at_holms_first_step() -> None:
    design = plan(0.03, 0.10, variants=4)
    assert design.comparison_alpha == pytest.approx(0.05 / 3)
    z = special.ndtri(1 - 0.05 / 6) + special.ndtri(0.8)
    assert design.fixed_per_arm == math.ceil(z**2 * (0.03 * 0.97 + 0.033 * 0.967) / 0.003**2)
    assert design.sequential_per_arm > design.fixed_per_arm > plan(0.03, 0.10).fixed_per_arm


def test_outcome_indexed_cap_costs_little_more_for_rare_outcomes() -> None:
    design = plan(0.03, 0.10)
    assert 1.0 < design.outcome_sequential_per_arm / design.sequential_per_arm < 1.04
    expected_outcomes = design.outcome_sequential_per_arm * (0.03 + 0.033)
    assert design.outcome_tuning == math.ceil(expected_outcomes)


def test_recursive_integration_agrees_with_a_brownian_simulation() -> None:
    looks = 20
    times = np.arange(1, looks + 1) / looks
    critical = boundary(times, rho_squared(0.05, 1.0), 0.05)
    drift = 3.0
    rng = np.random.default_rng(1)
    paths = np.cumsum(rng.normal(drift / looks, math.sqrt(1 / looks), (200_000, looks)), axis=1)
    z = paths / np.sqrt(times)
    up, down = z >= critical, z <= -critical
    first_up = np.where(up.any(1), up.argmax(1), looks)
    first_down = np.where(down.any(1), down.argmax(1), looks)
    simulated = float(np.mean(first_up < first_down))
    assert sequential_power(drift, times, critical) == pytest.approx(simulated, abs=0.004)


def test_inflation_gives_the_requested_power() -> None:
    inflation = sequential_inflation(0.05, 0.05, 0.8, 20)
    drift = math.sqrt(inflation) * float(special.ndtri(0.975) + special.ndtri(0.8))
    times = np.arange(1, 21) / 20
    critical = boundary(times, rho_squared(0.05, 1.0), 0.05)
    assert sequential_power(drift, times, critical) == pytest.approx(0.8, abs=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"baseline": 0.0, "mde": 0.1}, "baseline must be a rate"),
        ({"baseline": 0.5, "mde": 1.5}, "not below 1"),
        ({"baseline": 0.03, "mde": -0.1}, "mde must be positive"),
        ({"baseline": 0.03, "mde": 0.1, "power": 0.3}, "power must lie"),
        ({"baseline": 0.03, "mde": 0.1, "variants": 1}, "variants must be"),
        ({"baseline": 0.03, "mde": 0.1, "alpha": 0.6}, "alpha must lie"),
        ({"baseline": 0.03, "mde": 0.1, "looks": 0}, "looks must be"),
    ],
)
def test_bad_planning_input_is_refused(kwargs: dict, message: str) -> None:
    with pytest.raises(StatsError, match=message):
        plan(**kwargs)
