"""The three built-in stats tests pass the contract suite plugin authors use, and it has teeth."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

from postwise.experiments.contract import Comparison, Interval, StatsOptions, StatsTest
from postwise.experiments.data import VariantData
from postwise.experiments.stats import BayesianReadout, ChiSquaredTest, SequentialTest
from postwise.testing.contracts import StatsTestContract


class TestSequentialTest(StatsTestContract):
    def make_test(self) -> StatsTest:
        return SequentialTest()


class TestChiSquaredTest(StatsTestContract):
    def make_test(self) -> StatsTest:
        return ChiSquaredTest()


class TestBayesianReadout(StatsTestContract):
    def make_test(self) -> StatsTest:
        return BayesianReadout()


class _CallsEverythingSignificant:
    """A broken plugin: significant whatever the data, one comparison short with 3+ arms."""

    name = "always-significant"
    always_valid = False
    decides = True

    def compare(self, variants: Sequence[VariantData], options: StatsOptions) -> list[Comparison]:
        return [
            Comparison(t.name, 0.001, Interval(t.rate - variants[0].rate, -1.0, 1.0), None)
            for t in variants[1:3]
        ]


class _BrokenContract(StatsTestContract):
    def make_test(self) -> StatsTest:
        return _CallsEverythingSignificant()


def test_the_contract_rejects_a_test_that_calls_identical_arms_significant() -> None:
    with pytest.raises(AssertionError):
        _BrokenContract().test_identical_arms_give_no_significance()


def test_the_contract_rejects_a_test_that_skips_a_treatment() -> None:
    with pytest.raises(AssertionError):
        _BrokenContract().test_one_comparison_per_treatment_in_order()
