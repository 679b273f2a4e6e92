"""The always-valid test: its formulas, its two indexes, and the state it carries across looks."""

from __future__ import annotations

import math

import numpy as np
import pytest

from postwise.errors import StatsError
from postwise.experiments.sequential import (
    always_valid_p_value,
    boundary,
    exposure_indexed_p_value,
    outcome_indexed_p_value,
    rho_squared,
)
from postwise.experiments.stats import SequentialState, VariantData, analyze


def pair(n_a: int, c_a: int, n_b: int, c_b: int) -> list[VariantData]:
    return [VariantData("A", n_a, c_a), VariantData("B", n_b, c_b)]


def test_rho_squared_is_growthbooks_tuning_formula() -> None:
    alpha, tuning = 0.05, 5000
    expected = (-2 * math.log(alpha) + math.log(1 - 2 * math.log(alpha))) / tuning
    assert rho_squared(alpha, tuning) == pytest.approx(expected, rel=1e-15)


def test_p_value_is_the_msprt_of_stats_md_with_tau_squared_two_rho_squared_v() -> None:
    n, p_a, p_b = 20000, 0.03, 0.0345
    v = p_a * (1 - p_a) + p_b * (1 - p_b)
    rho2 = rho_squared(0.05, 5000)
    tau2 = 2 * rho2 * v  # N = 2n units of the two-arm comparison
    lam = math.sqrt(v / (v + n * tau2)) * math.exp(
        n**2 * tau2 * (p_b - p_a) ** 2 / (2 * v * (v + n * tau2))
    )
    p = exposure_indexed_p_value(n, round(p_a * n), n, round(p_b * n), rho2)
    assert float(p) == pytest.approx(min(1.0, 1 / lam), rel=1e-9)


@pytest.mark.parametrize("seed", range(5))
def test_p_value_below_alpha_exactly_when_the_absolute_interval_excludes_zero(seed: int) -> None:
    rng = np.random.default_rng(seed)
    for _ in range(40):
        n_a, n_b = rng.integers(2000, 60000, 2)
        c_a = rng.binomial(n_a, 0.05)
        c_b = rng.binomial(n_b, rng.uniform(0.045, 0.06))
        b = analyze(pair(int(n_a), int(c_a), int(n_b), int(c_b))).variant("B")
        assert b.absolute_lift is not None and b.p_value is not None
        assert (b.p_value < 0.05) == b.absolute_lift.excludes_zero()


@pytest.mark.parametrize("seed", range(3))
def test_outcome_index_p_value_below_alpha_exactly_when_the_relative_interval_excludes_zero(
    seed: int,
) -> None:
    rng = np.random.default_rng(100 + seed)
    for _ in range(40):
        n = int(rng.integers(5000, 40000))
        c_a = int(rng.binomial(n, 0.03))
        c_b = int(rng.binomial(n, rng.uniform(0.025, 0.04)))
        b = analyze(pair(n, c_a, n, c_b), index="outcomes").variant("B")
        assert b.relative_lift is not None and b.p_value is not None
        assert (b.p_value < 0.05) == b.relative_lift.excludes_zero()
        assert b.absolute_lift is not None
        assert b.absolute_lift.excludes_zero() == b.relative_lift.excludes_zero()


def test_outcome_index_reports_the_rate_ratio_and_the_current_rate_difference() -> None:
    b = analyze(pair(20000, 300, 10000, 200), index="outcomes").variant("B")
    assert b.relative_lift is not None and b.absolute_lift is not None
    assert b.relative_lift.estimate == pytest.approx((200 / 10000) / (300 / 20000) - 1)
    assert b.absolute_lift.estimate == pytest.approx(200 / 10000 - 300 / 20000)
    assert b.relative_lift.lower < b.relative_lift.estimate < b.relative_lift.upper


def test_outcome_index_null_share_follows_unequal_exposures() -> None:
    # B has a third of the recipients and a third of the clicks: no evidence of a difference.
    p = outcome_indexed_p_value(20000, 600, 10000, 300, rho_squared(0.05, 1000))
    assert float(p) == 1.0


def test_outcome_index_decides_even_when_the_control_has_no_outcome() -> None:
    result = analyze(pair(20000, 0, 20000, 60), index="outcomes")
    assert result.variant("B").relative_lift is None
    assert result.winner == "B"


def test_p_value_is_one_without_information() -> None:
    assert float(always_valid_p_value(0.1, 0.0, 1000, 1e-3)) == 1.0
    assert float(always_valid_p_value(0.1, math.inf, 1000, 1e-3)) == 1.0
    assert float(exposure_indexed_p_value(0, 0, 0, 0, 1e-3)) == 1.0


def test_boundary_is_tightest_near_the_tuning_sample() -> None:
    rho2 = rho_squared(0.05, 40000)
    sizes = np.array([5000, 20000, 40000, 80000, 400000])
    c = boundary(sizes, rho2, 0.05)
    assert np.all(c > 1.96)
    assert float(c[2]) == pytest.approx(3.035, abs=5e-3)


def test_the_always_valid_p_value_is_the_running_minimum_over_looks() -> None:
    first = analyze(pair(10000, 300, 10000, 420))
    assert first.variant("B").p_value is not None
    later = analyze(pair(20000, 600, 20000, 700), previous=first.state)
    alone = analyze(pair(20000, 600, 20000, 700))
    assert alone.variant("B").p_value > first.variant("B").p_value  # type: ignore[operator]
    assert later.variant("B").p_value == first.variant("B").p_value
    assert later.state is not None and later.state.looks == 2


def test_a_decision_once_reached_stands_at_later_looks() -> None:
    first = analyze(pair(10000, 300, 10000, 480))
    assert first.winner == "B"
    later = analyze(pair(20000, 620, 20000, 700), previous=first.state)
    assert later.winner == "B"
    assert analyze(pair(20000, 620, 20000, 700)).winner is None


def test_intervals_are_the_running_intersection_and_never_widen() -> None:
    first = analyze(pair(10000, 300, 10000, 360))
    second = analyze(pair(12000, 360, 12000, 420), previous=first.state)
    one, two = first.variant("B").absolute_lift, second.variant("B").absolute_lift
    current = analyze(pair(12000, 360, 12000, 420)).variant("B").absolute_lift
    assert one is not None and two is not None and current is not None
    assert two.lower == max(one.lower, current.lower)
    assert two.upper == min(one.upper, current.upper)
    assert two.estimate == current.estimate


def test_intervals_that_stop_overlapping_restart_with_a_warning() -> None:
    first = analyze(pair(10000, 300, 10000, 480))
    flipped = analyze(pair(10000, 480, 10000, 300), previous=first.state)
    assert any("no longer overlaps" in w for w in flipped.warnings)
    lift = flipped.variant("B").absolute_lift
    assert lift is not None and lift.upper < 0
    assert flipped.winner is None
    assert "no decision on B: its effect changed over time" in flipped.reason
    steady = analyze(pair(20000, 960, 20000, 600), previous=flipped.state)
    assert steady.winner is None  # once the effect has moved, B is never decided on


def test_looks_blocked_by_srm_or_minimum_sample_do_not_enter_the_state() -> None:
    start = analyze(pair(10000, 300, 10000, 320)).state
    assert start is not None
    skewed = analyze(pair(10000, 300, 12000, 600), previous=start)
    assert skewed.srm_flagged and skewed.state == start
    small = analyze(pair(10000, 300, 10000, 320), previous=start, min_exposures=50000)
    assert small.state == start


def test_state_round_trips_through_json_including_infinite_bounds() -> None:
    state = analyze(pair(20000, 600, 20000, 0), index="outcomes", min_conversions=0).state
    assert state is not None
    again = SequentialState.from_json(state.to_json())
    assert again == state
    assert analyze(pair(21000, 630, 21000, 10), index="outcomes", previous=again).state


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"sequential_tuning": 9000}, "sequential_tuning"),
        ({"alpha": 0.01}, "alpha"),
        ({"index": "outcomes"}, "index"),
    ],
)
def test_changing_a_setting_mid_experiment_is_refused(change: dict, field: str) -> None:
    state = analyze(pair(1000, 30, 1000, 35)).state
    with pytest.raises(StatsError, match="must keep its settings") as caught:
        analyze(pair(2000, 60, 2000, 70), previous=state, **change)
    assert caught.value.field == field


def test_changing_the_variants_mid_experiment_is_refused() -> None:
    state = analyze(pair(1000, 30, 1000, 35)).state
    three = [*pair(2000, 60, 2000, 70), VariantData("C", 2000, 65)]
    with pytest.raises(StatsError, match="variants"):
        analyze(three, previous=state)


@pytest.mark.parametrize(
    "text",
    ["not json", "[]", '{"version": 1}', '{"version": 99, "method": "sequential"}'],
)
def test_malformed_stored_state_is_a_stats_error(text: str) -> None:
    with pytest.raises(StatsError):
        SequentialState.from_json(text)
