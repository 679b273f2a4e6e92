"""Agreement with scipy on the same inputs: chi-squared tests and the Beta posteriors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import special, stats

from postwise.experiments.bayes import beat_probability_and_loss
from postwise.experiments.chi2 import pearson_chi2_p_value
from postwise.experiments.srm import srm_p_value
from postwise.experiments.stats import VariantData, analyze

TABLES = [
    (20000, 600, 20000, 690),
    (5000, 150, 5200, 190),
    (1000, 50, 1000, 30),
    (300, 12, 310, 25),
    (50000, 15000, 50000, 15400),
]


@pytest.mark.parametrize(("n_a", "c_a", "n_b", "c_b"), TABLES)
def test_chi2_p_value_equals_scipy_chi2_contingency_without_continuity_correction(
    n_a: int, c_a: int, n_b: int, c_b: int
) -> None:
    table = [[c_a, n_a - c_a], [c_b, n_b - c_b]]
    expected = stats.chi2_contingency(table, correction=False).pvalue
    assert float(pearson_chi2_p_value(n_a, c_a, n_b, c_b)) == pytest.approx(expected, rel=1e-10)
    result = analyze([VariantData("A", n_a, c_a), VariantData("B", n_b, c_b)], method="chi2")
    assert result.variant("B").p_value == pytest.approx(expected, rel=1e-10)


def test_chi2_p_value_is_one_for_a_table_without_any_conversion() -> None:
    assert float(pearson_chi2_p_value(1000, 0, 1000, 0)) == 1.0


@pytest.mark.parametrize(
    ("counts", "weights"),
    [
        ([5000, 5100], [0.5, 0.5]),
        ([10000, 10450], [0.5, 0.5]),
        ([3300, 3400, 3200], [0.3, 0.4, 0.3]),
        ([45000, 45900, 10000], [0.45, 0.45, 0.1]),
    ],
)
def test_srm_p_value_equals_scipy_chisquare_goodness_of_fit(
    counts: list[int], weights: list[float]
) -> None:
    expected = stats.chisquare(counts, np.asarray(weights) * sum(counts)).pvalue
    assert srm_p_value(counts, weights) == pytest.approx(expected, rel=1e-10)


def _exact_beat(a_c: float, b_c: float, a_t: int, b_t: float) -> float:
    """Closed form of P(T > C) for integer a_t (Evan Miller's formula)."""
    i = np.arange(a_t)
    return float(
        np.exp(
            special.betaln(a_c + i, b_c + b_t)
            - np.log(b_t + i)
            - special.betaln(1 + i, b_t)
            - special.betaln(a_c, b_c)
        ).sum()
    )


@pytest.mark.parametrize(
    ("control", "treatment"),
    [((31, 971), (36, 966)), ((1, 101), (5, 97)), ((601, 19401), (691, 19311)), ((1, 1), (1, 1))],
)
def test_probability_to_beat_control_matches_the_closed_form(
    control: tuple[int, int], treatment: tuple[int, int]
) -> None:
    beat, _ = beat_probability_and_loss(
        control, (np.array([treatment[0]], float), np.array([treatment[1]], float))
    )
    assert float(beat[0]) == pytest.approx(_exact_beat(*control, *treatment), abs=1e-9)


def test_expected_loss_matches_monte_carlo_draws_from_scipy_beta() -> None:
    rng = np.random.default_rng(6)
    c = stats.beta(31, 971).rvs(1_000_000, random_state=rng)
    t = stats.beta(36, 966).rvs(1_000_000, random_state=rng)
    _, loss = beat_probability_and_loss((31, 971), (np.array([36.0]), np.array([966.0])))
    assert float(loss[0]) == pytest.approx(np.maximum(c - t, 0).mean(), rel=1e-2)


def test_readout_with_a_sub_uniform_prior_and_no_conversions_agrees_with_monte_carlo() -> None:
    rng = np.random.default_rng(5)
    c = rng.beta(0.5, 100.5, 1_000_000)
    t = rng.beta(0.5, 120.5, 1_000_000)
    beat, loss = beat_probability_and_loss((0.5, 100.5), (np.array([0.5]), np.array([120.5])))
    assert float(beat[0]) == pytest.approx((t > c).mean(), abs=2e-3)
    assert float(loss[0]) == pytest.approx(np.maximum(c - t, 0).mean(), rel=2e-2)
