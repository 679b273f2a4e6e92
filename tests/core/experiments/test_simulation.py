"""Seeded simulations that hold the engine to STATS.md's promise (vectorised, a few seconds).

Each replicate is one experiment; each column one look. The always-valid gate uses the
engine's own vectorised p-value functions (the ones ``SequentialTest`` calls), and the naive rule
runs in the same harness to show the harness can tell the two apart.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from postwise.experiments.chi2 import pearson_chi2_p_value
from postwise.experiments.planning import plan
from postwise.experiments.sequential import (
    DEFAULT_TUNING,
    exposure_indexed_p_value,
    outcome_indexed_p_value,
    rho_squared,
)
from postwise.experiments.stats import VariantData, analyze

ALPHA = 0.05
REPLICATES = 4000


def upper_99(hits: int, trials: int) -> float:
    """Upper end of the two-sided 99% Clopper-Pearson interval of a rate."""
    return float(stats.beta.ppf(0.995, hits + 1, trials - hits))


def peeking_counts(
    rng: np.random.Generator, step: int, looks: int, rate_a: float, rate_b: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Cumulative exposures per arm and conversions per arm at each look."""
    exposures = np.arange(1, looks + 1) * step
    conv_a = np.cumsum(rng.binomial(step, rate_a, (REPLICATES, looks)), axis=1)
    conv_b = np.cumsum(rng.binomial(step, rate_b, (REPLICATES, looks)), axis=1)
    return exposures, conv_a, conv_b


def maturing_counts(
    rng: np.random.Generator, recipients: int, rate: float, mean_delay_h: float, hours: int
) -> tuple[np.ndarray, np.ndarray]:
    """Cumulative clicks per arm at each hourly look after one send of ``recipients`` per arm."""
    edges = 1.0 - np.exp(-np.arange(1, hours + 1) / mean_delay_h)
    probabilities = np.diff(np.concatenate([[0.0], edges, [1.0]]))

    def arm() -> np.ndarray:
        clickers = rng.binomial(recipients, rate, REPLICATES)
        return np.cumsum(rng.multinomial(clickers, probabilities)[:, :hours], axis=1)

    return arm(), arm()


def test_aa_peeking_every_1000_the_gate_stays_within_alpha_and_the_naive_rule_does_not() -> None:
    rng = np.random.default_rng(20240601)
    exposures, conv_a, conv_b = peeking_counts(rng, step=1000, looks=54, rate_a=0.03, rate_b=0.03)

    rho2 = rho_squared(ALPHA, DEFAULT_TUNING["exposures"])
    gate = exposure_indexed_p_value(exposures, conv_a, exposures, conv_b, rho2)
    false_winners = int((gate.min(axis=1) < ALPHA).sum())
    naive = int((pearson_chi2_p_value(exposures, conv_a, exposures, conv_b) < ALPHA).any(1).sum())

    assert upper_99(false_winners, REPLICATES) <= ALPHA
    assert naive / REPLICATES > 0.20
    assert 0.25 < naive / REPLICATES < 0.38  # STATS.md: about 30% for ~50 looks


def test_aa_gate_holds_for_the_planned_tuning_too() -> None:
    rng = np.random.default_rng(7)
    exposures, conv_a, conv_b = peeking_counts(rng, step=1000, looks=54, rate_a=0.03, rate_b=0.03)
    tuning = plan(0.03, 0.10).sequential_tuning
    gate = exposure_indexed_p_value(
        exposures, conv_a, exposures, conv_b, rho_squared(ALPHA, tuning)
    )
    assert upper_99(int((gate.min(axis=1) < ALPHA).sum()), REPLICATES) <= ALPHA


def test_aa_send_read_hourly_while_clicks_mature_gate_within_alpha_naive_near_19_percent() -> None:
    rng = np.random.default_rng(48)
    clicks_a, clicks_b = maturing_counts(rng, 20000, 0.03, mean_delay_h=6.0, hours=48)

    rho2 = rho_squared(ALPHA, DEFAULT_TUNING["outcomes"])
    gate = outcome_indexed_p_value(20000, clicks_a, 20000, clicks_b, rho2)
    false_winners = int((gate.min(axis=1) < ALPHA).sum())
    naive = (pearson_chi2_p_value(20000, clicks_a, 20000, clicks_b) < ALPHA).any(1).mean()

    assert upper_99(false_winners, REPLICATES) <= ALPHA
    assert 0.14 < naive < 0.24  # STATS.md: about 19%


def test_outcome_index_gate_holds_for_other_tunings_and_a_frequent_outcome() -> None:
    rng = np.random.default_rng(11)
    # Opens: 30% of recipients, most within hours; conditioning on outcomes must still hold.
    opens_a, opens_b = maturing_counts(rng, 5000, 0.30, mean_delay_h=3.0, hours=48)
    for tuning in (300.0, 3000.0):
        gate = outcome_indexed_p_value(5000, opens_a, 5000, opens_b, rho_squared(ALPHA, tuning))
        assert upper_99(int((gate.min(axis=1) < ALPHA).sum()), REPLICATES) <= ALPHA


def test_power_at_the_planned_sequential_cap_finds_a_ten_percent_lift_80_percent_of_the_time() -> (
    None
):
    design = plan(0.03, 0.10)
    rng = np.random.default_rng(2024)
    step = 1000
    exposures = np.minimum(
        np.arange(1, design.sequential_per_arm // step + 2) * step, design.sequential_per_arm
    )
    increments = np.diff(np.concatenate([[0], exposures]))
    looks = len(exposures)
    conv_a = np.cumsum(rng.binomial(increments, 0.03, (REPLICATES, looks)), axis=1)
    conv_b = np.cumsum(rng.binomial(increments, 0.033, (REPLICATES, looks)), axis=1)

    rho2 = rho_squared(ALPHA, design.sequential_tuning)
    crossed = (
        np.minimum.accumulate(
            exposure_indexed_p_value(exposures, conv_a, exposures, conv_b, rho2), axis=1
        )
        < ALPHA
    )
    first = np.argmax(crossed, axis=1)
    right_way = (conv_b - conv_a)[np.arange(REPLICATES), first] > 0
    power = float((crossed.any(axis=1) & right_way).mean())

    assert power >= 0.80
    assert 1.6 < design.sequential_per_arm / design.fixed_per_arm < 1.8


def test_power_with_outcome_index_at_its_planned_cap_reaches_80_percent() -> None:
    design = plan(0.03, 0.10)
    rng = np.random.default_rng(99)
    n = design.outcome_sequential_per_arm
    hours = 72
    edges = 1.0 - np.exp(-np.arange(1, hours + 1) / 6.0)
    probabilities = np.diff(np.concatenate([[0.0], edges, [1.0]]))

    def arm(rate: float) -> np.ndarray:
        clickers = rng.binomial(n, rate, REPLICATES)
        return np.cumsum(rng.multinomial(clickers, probabilities)[:, :hours], axis=1)

    clicks_a, clicks_b = arm(0.03), arm(0.033)
    rho2 = rho_squared(ALPHA, design.outcome_tuning)
    crossed = (
        np.minimum.accumulate(outcome_indexed_p_value(n, clicks_a, n, clicks_b, rho2), axis=1)
        < ALPHA
    )
    first = np.argmax(crossed, axis=1)
    right_way = (clicks_b - clicks_a)[np.arange(REPLICATES), first] > 0
    assert float((crossed.any(axis=1) & right_way).mean()) >= 0.80


@pytest.mark.parametrize("seed", [3, 4])
def test_analyze_with_carried_state_matches_the_vectorised_running_minimum(seed: int) -> None:
    rng = np.random.default_rng(seed)
    replicates, looks, step = 12, 30, 1000
    conv_a = np.cumsum(rng.binomial(step, 0.03, (replicates, looks)), axis=1)
    conv_b = np.cumsum(rng.binomial(step, 0.036, (replicates, looks)), axis=1)
    exposures = np.arange(1, looks + 1) * step
    rho2 = rho_squared(ALPHA, DEFAULT_TUNING["exposures"])
    expected = np.minimum.accumulate(
        exposure_indexed_p_value(exposures, conv_a, exposures, conv_b, rho2), axis=1
    )
    for r in range(replicates):
        state = None
        for k in range(looks):
            result = analyze(
                [
                    VariantData("A", int(exposures[k]), int(conv_a[r, k])),
                    VariantData("B", int(exposures[k]), int(conv_b[r, k])),
                ],
                previous=state,
            )
            state = result.state
            assert result.variant("B").p_value == pytest.approx(expected[r, k], rel=1e-12)
            decided = expected[r, k] < ALPHA
            assert (result.winner is not None) == decided
            if decided:
                at_minimum = int(np.argmin(expected[r, : k + 1]))
                ahead = conv_b[r, at_minimum] > conv_a[r, at_minimum]
                assert result.winner == ("B" if ahead else "A")
