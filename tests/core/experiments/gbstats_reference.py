"""Produce the GrowthBook gbstats 0.8.0 reference values pinned in test_reference_gbstats.py.

Not a test (pytest does not collect this file name). gbstats 0.8.0 pins numpy 1.26 and
pandas 1.5, so it runs in a virtualenv of its own::

    python3 -m venv /tmp/gbvenv && /tmp/gbvenv/bin/pip install gbstats==0.8.0
    /tmp/gbvenv/bin/python tests/core/experiments/gbstats_reference.py

and prints the ``GBSTATS`` and ``GBSTATS_SRM`` literals to paste into the test module.
"""

from __future__ import annotations

import pprint

from gbstats.frequentist.tests import (
    SequentialConfig,
    SequentialTwoSidedTTest,
    TwoSidedTTest,
)
from gbstats.models.statistics import ProportionStatistic
from gbstats.utils import check_srm

#: (control exposures, control conversions, treatment exposures, treatment conversions)
CASES = [
    (20000, 600, 20000, 690),
    (5000, 150, 5200, 190),
    (100000, 3000, 100000, 3100),
    (1000, 50, 1000, 30),
    (50000, 15000, 50000, 15400),
]
TUNINGS = [5000, 40000, 185206]
SRM_CASES = [
    ([5000, 5100], [0.5, 0.5]),
    ([10000, 10450], [0.5, 0.5]),
    ([3300, 3400, 3200], [1 / 3, 1 / 3, 1 / 3]),
    ([9000, 1000], [0.9, 0.1]),
    ([45000, 45900, 10000], [0.45, 0.45, 0.1]),
]


def _result(test: TwoSidedTTest) -> tuple[float, float, float, float]:
    result = test.compute_result()
    return (
        float(result.expected),
        float(result.ci[0]),
        float(result.ci[1]),
        float(result.p_value),
    )


def main() -> None:
    """Print the reference tables."""
    rows = []
    for n_a, c_a, n_b, c_b in CASES:
        a = ProportionStatistic(n=n_a, sum=c_a)
        b = ProportionStatistic(n=n_b, sum=c_b)
        row: dict[str, object] = {
            "case": (n_a, c_a, n_b, c_b),
            "fixed": _result(TwoSidedTTest(a, b)),
        }
        for tuning in TUNINGS:
            config = SequentialConfig(sequential_tuning_parameter=tuning)
            row[f"sequential_{tuning}"] = _result(SequentialTwoSidedTTest(a, b, config))
        rows.append(row)
    srm = [(counts, weights, float(check_srm(counts, weights))) for counts, weights in SRM_CASES]
    print("GBSTATS = " + pprint.pformat(rows, width=100, sort_dicts=False))
    print("GBSTATS_SRM = " + pprint.pformat(srm, width=100))


if __name__ == "__main__":
    main()
