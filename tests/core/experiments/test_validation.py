"""Bad input is refused with a StatsError whose message names the problem."""

from __future__ import annotations

import pytest

from postwise.errors import StatsError, UnknownComponentError, ValidationError
from postwise.experiments.stats import VariantData, analyze

A = VariantData("A", 1000, 30)
B = VariantData("B", 1000, 40)


def test_negative_counts_are_refused_at_construction() -> None:
    with pytest.raises(StatsError, match="exposures must not be negative"):
        VariantData("A", -1, 0)
    with pytest.raises(StatsError, match="conversions must not be negative"):
        VariantData("A", 10, -3)


def test_conversions_above_exposures_are_refused() -> None:
    with pytest.raises(StatsError, match=r"conversions \(11\) exceed exposures \(10\)"):
        VariantData("A", 10, 11)


def test_counts_must_be_whole_numbers_and_names_non_empty() -> None:
    with pytest.raises(StatsError, match="whole number"):
        VariantData("A", 10.5, 1)  # type: ignore[arg-type]
    with pytest.raises(StatsError, match="whole number"):
        VariantData("A", True, 1)
    with pytest.raises(StatsError, match="non-empty name"):
        VariantData("", 10, 1)


def test_numpy_integers_are_accepted_and_stored_as_plain_ints() -> None:
    import numpy as np

    variant = VariantData("A", np.int64(10), np.int32(3))  # type: ignore[arg-type]
    assert type(variant.exposures) is int and type(variant.conversions) is int


def test_fewer_than_two_variants_are_refused() -> None:
    with pytest.raises(StatsError, match="at least 2 variants"):
        analyze([A])


def test_duplicate_variant_names_are_refused() -> None:
    with pytest.raises(StatsError, match="duplicate variant name 'A'"):
        analyze([A, VariantData("A", 1000, 40)])


@pytest.mark.parametrize("alpha", [0.0, 0.5, 0.7, -0.1, float("nan")])
def test_alpha_outside_zero_to_half_is_refused(alpha: float) -> None:
    with pytest.raises(StatsError, match=r"alpha must lie strictly between 0 and 0\.5"):
        analyze([A, B], alpha=alpha)


def test_weights_not_summing_to_one_are_refused_with_a_suggestion() -> None:
    with pytest.raises(StatsError, match=r"weights must sum to 1, they sum to 1\.2.*0\.5, 0\.5"):
        analyze([A, B], weights=[0.6, 0.6])


def test_weights_must_be_one_per_variant_and_positive() -> None:
    with pytest.raises(StatsError, match="got 3 weights for 2 variants"):
        analyze([A, B], weights=[0.5, 0.25, 0.25])
    with pytest.raises(StatsError, match="weights must be positive"):
        analyze([A, B], weights=[1.0, 0.0])


def test_stats_errors_are_validation_errors_naming_the_field() -> None:
    with pytest.raises(ValidationError) as caught:
        analyze([A, B], alpha=0.9)
    assert caught.value.field == "alpha"
    assert str(caught.value).startswith("alpha: ")


def test_unknown_method_lists_the_installed_tests() -> None:
    with pytest.raises(UnknownComponentError) as caught:
        analyze([A, B], method="bandit")
    assert caught.value.kind == "stats test"
    assert caught.value.installed == ["bayesian", "chi2", "sequential"]
    assert "installed stats tests: bayesian, chi2, sequential" in str(caught.value)


def test_unknown_index_and_bad_tuning_and_guards_are_refused() -> None:
    with pytest.raises(StatsError, match="index must be 'exposures' or 'outcomes'"):
        analyze([A, B], index="recipients")  # type: ignore[arg-type]
    with pytest.raises(StatsError, match="sequential_tuning"):
        analyze([A, B], sequential_tuning=0)
    with pytest.raises(StatsError, match="min_exposures"):
        analyze([A, B], min_exposures=-1)
    with pytest.raises(StatsError, match="prior"):
        analyze([A, B], prior=(0.0, 1.0))
