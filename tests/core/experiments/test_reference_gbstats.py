"""Agreement with GrowthBook's gbstats 0.8.0 on the same inputs.

The reference values below were produced once by ``gbstats_reference.py`` (next to this file),
run in its own virtualenv because gbstats 0.8.0 pins numpy 1.26 and pandas 1.5::

    python3 -m venv /tmp/gbvenv && /tmp/gbvenv/bin/pip install gbstats==0.8.0
    /tmp/gbvenv/bin/python tests/core/experiments/gbstats_reference.py

Each case is ``ProportionStatistic(n, sum)`` for control and treatment; ``fixed`` is
``TwoSidedTTest(a, b).compute_result()`` and ``sequential_<N>`` is
``SequentialTwoSidedTTest(a, b, SequentialConfig(sequential_tuning_parameter=N))``, each as
(expected, ci lower, ci upper, p_value) for the relative lift. ``GBSTATS_SRM`` holds
``gbstats.utils.check_srm(counts, weights)``.
"""

from __future__ import annotations

import math

import pytest
from scipy import special

from postwise.experiments.effects import relative_lift
from postwise.experiments.sequential import always_valid_p_value, rho_squared
from postwise.experiments.srm import srm_p_value
from postwise.experiments.stats import VariantData, analyze

# fmt: off
GBSTATS = [{'case': (20000, 600, 20000, 690),
  'fixed': (0.15000000000000013, 0.026214256900970803, 0.2737857430990295, 0.017548897720525813),
  'sequential_5000': (0.15000000000000013,
                      -0.05286457308034695,
                      0.35286457308034724,
                      0.49979143849918967),
  'sequential_40000': (0.15000000000000013,
                       -0.041689328060455805,
                       0.34168932806045604,
                       0.2441764703591174),
  'sequential_185206': (0.15000000000000013,
                        -0.0601083779993746,
                        0.3601083779993749,
                        0.2774589313341957)},
 {'case': (5000, 150, 5200, 190),
  'fixed': (0.21794871794871806, -0.03849081471279414, 0.47438825061023027, 0.09574869672316555),
  'sequential_5000': (0.21794871794871806, -0.1827539952615277, 0.6186514311589638, 1.0),
  'sequential_40000': (0.21794871794871806,
                       -0.20808827203491204,
                       0.6439857079323481,
                       0.6869146443359939),
  'sequential_185206': (0.21794871794871806,
                        -0.38001287840286746,
                        0.8159103143003036,
                        0.7860261717765136)},
 {'case': (100000, 3000, 100000, 3100),
  'fixed': (0.03333333333333337, -0.017739546256073865, 0.0844062129227406, 0.20082742599481884),
  'sequential_5000': (0.03333333333333337, -0.056147989696718165, 0.1228146563633849, 1.0),
  'sequential_40000': (0.03333333333333337, -0.04882805861035476, 0.1154947252770215, 1.0),
  'sequential_185206': (0.03333333333333337, -0.045759063855161944, 0.11242573052182868, 1.0)},
 {'case': (1000, 50, 1000, 30),
  'fixed': (-0.4000000000000001, -0.6666106117740072, -0.13338938822599306, 0.003295947039781977),
  'sequential_5000': (-0.4000000000000001,
                      -0.8246501650005991,
                      0.024650165000598967,
                      0.07596438497028164),
  'sequential_40000': (-0.4000000000000001,
                       -1.041478274842449,
                       0.24147827484244883,
                       0.34552272730910993),
  'sequential_185206': (-0.4000000000000001,
                        -1.592449122532435,
                        0.7924491225324348,
                        0.7403729351125222)},
 {'case': (50000, 15000, 50000, 15400),
  'fixed': (0.026666666666666693, 0.007407625942231884, 0.0459257073911015, 0.0066515673365474814),
  'sequential_5000': (0.026666666666666693,
                      -0.0061216384994844456,
                      0.05945497183281783,
                      0.32538655571798913),
  'sequential_40000': (0.026666666666666693,
                       -0.0035929549613483124,
                       0.0569262882946817,
                       0.13705534673723307),
  'sequential_185206': (0.026666666666666693,
                        -0.0035285906392395067,
                        0.05686192397257289,
                        0.11610081387894995)}]
GBSTATS_SRM = [([5000, 5100], [0.5, 0.5], 0.3197181768128675),
 ([10000, 10450], [0.5, 0.5], 0.0016508126101047649),
 ([3300, 3400, 3200],
  [0.3333333333333333, 0.3333333333333333, 0.3333333333333333],
  0.04830099924173013),
 ([9000, 1000], [0.9, 0.1], 1.0),
 ([45000, 45900, 10000], [0.45, 0.45, 0.1], 0.007403167175574149)]

# fmt: on

TUNINGS = (5000, 40000, 185206)


def _variants(case: tuple[int, int, int, int]) -> list[VariantData]:
    n_a, c_a, n_b, c_b = case
    return [VariantData("A", n_a, c_a), VariantData("B", n_b, c_b)]


@pytest.mark.parametrize("row", GBSTATS, ids=lambda row: "-".join(map(str, row["case"])))
@pytest.mark.parametrize("tuning", TUNINGS)
def test_sequential_relative_interval_matches_gbstats_for_the_same_tuning(
    row: dict, tuning: int
) -> None:
    expected, lower, upper, _ = row[f"sequential_{tuning}"]
    result = analyze(_variants(row["case"]), sequential_tuning=tuning)
    lift = result.variant("B").relative_lift
    assert lift is not None
    assert (lift.estimate, lift.lower, lift.upper) == pytest.approx(
        (expected, lower, upper), rel=1e-9, abs=1e-12
    )


@pytest.mark.parametrize("row", GBSTATS, ids=lambda row: "-".join(map(str, row["case"])))
@pytest.mark.parametrize("tuning", TUNINGS)
def test_always_valid_p_value_on_the_relative_scale_matches_gbstats(row: dict, tuning: int) -> None:
    n_a, c_a, n_b, c_b = row["case"]
    estimate, variance = relative_lift(n_a, c_a, n_b, c_b)
    p_value = always_valid_p_value(estimate, variance, n_a + n_b, rho_squared(0.05, tuning))
    assert float(p_value) == pytest.approx(row[f"sequential_{tuning}"][3], rel=1e-9)


@pytest.mark.parametrize("row", GBSTATS, ids=lambda row: "-".join(map(str, row["case"])))
def test_fixed_horizon_delta_method_interval_matches_gbstats(row: dict) -> None:
    # gbstats uses Student's t with Welch's degrees of freedom, we the normal quantile; with
    # thousands per arm the quantiles differ by under 0.05%, hence the tolerance.
    expected, lower, upper, p_value = row["fixed"]
    result = analyze(_variants(row["case"]), method="chi2")
    lift = result.variant("B").relative_lift
    assert lift is not None
    assert lift.estimate == pytest.approx(expected, rel=1e-12)
    assert (lift.lower, lift.upper) == pytest.approx((lower, upper), rel=2e-3, abs=2e-4)
    n_a, c_a, n_b, c_b = row["case"]
    est, var = relative_lift(n_a, c_a, n_b, c_b)
    normal_p = 2 * special.ndtr(-abs(float(est)) / math.sqrt(float(var)))
    assert normal_p == pytest.approx(p_value, rel=2e-2)


@pytest.mark.parametrize(("counts", "weights", "expected"), GBSTATS_SRM)
def test_srm_p_value_matches_gbstats_check_srm(
    counts: list[int], weights: list[float], expected: float
) -> None:
    assert srm_p_value(counts, weights) == pytest.approx(expected, rel=1e-9, abs=1e-15)
