"""``analyze``: the gate, the report and its JSON form."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence

import pytest

from postwise.errors import PluginError, StatsError
from postwise.experiments.contract import Comparison, Interval, StatsOptions, StatsTest
from postwise.experiments.stats import (
    Decision,
    SequentialState,
    VariantData,
    analyze,
    builtin_tests,
)


def test_the_documented_example_runs_and_reports_why_there_is_no_winner_yet() -> None:
    result = analyze(
        [VariantData("A", 20000, 600), VariantData("B", 20000, 690)],
        method="sequential",
        alpha=0.05,
    )
    assert result.winner is None
    assert result.decision is Decision.NOT_SIGNIFICANT
    assert result.reason.startswith("not significant: no treatment beats control A")


def test_a_clear_lift_is_declared_the_winner_with_its_interval_in_the_reason() -> None:
    result = analyze([VariantData("A", 20000, 600), VariantData("B", 20000, 800)])
    assert result.winner == "B"
    assert result.decision is Decision.WINNER
    b = result.variant("B")
    assert b.significant and b.p_value is not None and b.p_value < 0.05
    assert b.relative_lift is not None and b.relative_lift.lower > 0
    assert "B beats control A: relative lift +33.33% (always-valid interval" in result.reason


def test_the_per_variant_report_carries_rates_lifts_p_values_and_bayesian_readout() -> None:
    result = analyze([VariantData("A", 20000, 600), VariantData("B", 20000, 690)], method="chi2")
    a, b = result.variants
    assert a.is_control and a.absolute_lift is None and a.posterior is None
    assert b.rate == pytest.approx(0.0345)
    assert b.absolute_lift is not None
    assert b.absolute_lift.estimate == pytest.approx(0.0045)
    assert b.absolute_lift.lower < 0.0045 < b.absolute_lift.upper
    assert b.relative_lift is not None and b.relative_lift.estimate == pytest.approx(0.15)
    assert b.p_value == b.p_value_holm  # one comparison: Holm changes nothing
    assert b.posterior is not None
    assert b.posterior.probability_to_beat_control == pytest.approx(0.99457, abs=1e-4)
    assert 0 < b.posterior.expected_loss < 1e-5
    assert result.winner == "B"


def test_sequential_intervals_are_wider_than_fixed_horizon_ones() -> None:
    data = [VariantData("A", 20000, 600), VariantData("B", 20000, 690)]
    fixed = analyze(data, method="chi2").variant("B").relative_lift
    always = analyze(data, method="sequential").variant("B").relative_lift
    assert fixed is not None and always is not None
    assert always.lower < fixed.lower and always.upper > fixed.upper


def test_sample_ratio_mismatch_blocks_a_decision_that_would_otherwise_be_a_win() -> None:
    data = [VariantData("A", 20000, 600), VariantData("B", 21000, 900)]
    assert analyze(data, method="chi2", srm_threshold=1e-9).winner == "B"
    result = analyze(data, method="chi2")
    assert result.srm_flagged and result.srm_p_value < 0.001
    assert result.winner is None
    assert result.decision is Decision.SAMPLE_RATIO_MISMATCH
    assert "sample-ratio mismatch" in result.reason


def test_configured_weights_are_what_srm_checks_against() -> None:
    data = [VariantData("A", 9000, 270), VariantData("B", 1000, 30)]
    assert analyze(data).srm_flagged
    assert not analyze(data, weights=[0.9, 0.1]).srm_flagged


def test_below_minimum_sample_withholds_the_decision_and_names_the_shortfall() -> None:
    result = analyze([VariantData("A", 80, 1), VariantData("B", 80, 30)], method="chi2")
    assert result.winner is None
    assert result.decision is Decision.BELOW_MINIMUM_SAMPLE
    assert "A has 80 exposures (minimum 100)" in result.reason
    few = analyze([VariantData("A", 5000, 2), VariantData("B", 5000, 5)], method="chi2")
    assert "A and B have 7 conversions together (minimum 10)" in few.reason


def test_control_wins_when_every_treatment_is_significantly_worse() -> None:
    result = analyze(
        [VariantData("A", 20000, 800), VariantData("B", 20000, 500), VariantData("C", 20000, 520)]
    )
    assert result.winner == "A"
    assert result.decision is Decision.WINNER
    assert "control A wins" in result.reason


def test_holm_adjusts_several_treatments_and_the_best_significant_one_wins() -> None:
    data = [
        VariantData("A", 20000, 600),
        VariantData("B", 20000, 720),
        VariantData("C", 20000, 760),
        VariantData("D", 20000, 610),
    ]
    result = analyze(data, method="chi2")
    raw: dict[str, float] = {}
    holm: dict[str, float] = {}
    for v in result.variants[1:]:
        assert v.p_value is not None and v.p_value_holm is not None
        raw[v.name], holm[v.name] = v.p_value, v.p_value_holm
    assert holm["C"] == pytest.approx(3 * raw["C"])
    assert holm["B"] == pytest.approx(max(2 * raw["B"], holm["C"]))
    assert holm["D"] == pytest.approx(max(min(1.0, raw["D"]), holm["B"]))
    assert result.winner == "C"


def test_holm_can_turn_a_nominally_significant_comparison_into_no_winner() -> None:
    data = [VariantData("A", 20000, 600)] + [
        VariantData(name, 20000, 600 + bump)
        for name, bump in zip("BCDE", (70, 0, 5, 10), strict=True)
    ]
    result = analyze(data, method="chi2")
    b = result.variant("B")
    assert b.p_value is not None and b.p_value < 0.05
    assert b.p_value_holm is not None and b.p_value_holm > 0.05
    assert result.winner is None


def test_bayesian_method_is_descriptive_and_never_declares_a_winner() -> None:
    result = analyze(
        [VariantData("A", 20000, 600), VariantData("B", 20000, 900)], method="bayesian"
    )
    assert result.winner is None
    assert result.decision is Decision.DESCRIPTIVE_ONLY
    b = result.variant("B")
    assert b.p_value is None and b.p_value_holm is None
    assert b.posterior is not None and b.posterior.probability_to_beat_control > 0.999
    assert b.absolute_lift is not None and b.absolute_lift.lower > 0


def test_relative_lift_is_none_when_the_control_never_converted() -> None:
    result = analyze(
        [VariantData("A", 5000, 0), VariantData("B", 5000, 40)], method="chi2", min_conversions=0
    )
    b = result.variant("B")
    assert b.relative_lift is None
    assert b.absolute_lift is not None and b.absolute_lift.lower > 0
    assert result.winner == "B"
    assert "absolute lift" in result.reason


def test_to_dict_is_json_serialisable_with_infinite_bounds_as_null() -> None:
    result = analyze(
        [VariantData("A", 20000, 600), VariantData("B", 20000, 0)],
        index="outcomes",
        min_conversions=0,
    )
    data = result.to_dict()
    text = json.dumps(data, allow_nan=False)
    assert json.loads(text)["decision"] == result.decision.value
    assert data["variants"][1]["name"] == "B"
    assert data["state"]["variants"] == ["A", "B"]
    assert set(data) >= {"winner", "reason", "srm_p_value", "srm_flagged", "warnings"}


def test_previous_state_is_refused_for_a_fixed_horizon_method() -> None:
    state = analyze([VariantData("A", 1000, 30), VariantData("B", 1000, 35)]).state
    with pytest.raises(StatsError, match="not an always-valid test"):
        analyze(
            [VariantData("A", 1000, 30), VariantData("B", 1000, 35)], method="chi2", previous=state
        )


class _AlwaysSignificant:
    """A deliberately silly plugin test, to show analyze still applies the gate to it."""

    name = "always"
    always_valid = False
    decides = True

    def compare(self, variants: Sequence[VariantData], options: StatsOptions) -> list[Comparison]:
        return [Comparison(v.name, 1e-6, Interval(0.01, 0.005, 0.015), None) for v in variants[1:]]


def test_a_plugin_test_from_the_registry_is_used_and_still_gated_by_srm() -> None:
    registry: dict[str, StatsTest] = {**builtin_tests(), "always": _AlwaysSignificant()}
    assert isinstance(registry["always"], StatsTest)
    good = analyze(
        [VariantData("A", 1000, 30), VariantData("B", 1000, 30)], method="always", tests=registry
    )
    assert good.winner == "B"
    skewed = analyze(
        [VariantData("A", 1000, 30), VariantData("B", 1500, 30)], method="always", tests=registry
    )
    assert skewed.winner is None and skewed.srm_flagged


def test_a_plugin_returning_the_wrong_comparisons_is_reported_by_name() -> None:
    class Broken(_AlwaysSignificant):
        name = "broken"

        def compare(
            self, variants: Sequence[VariantData], options: StatsOptions
        ) -> list[Comparison]:
            return []

    with pytest.raises(PluginError, match="stats test 'broken' returned comparisons for"):
        analyze(
            [VariantData("A", 1000, 30), VariantData("B", 1000, 30)],
            method="broken",
            tests={"broken": Broken()},
        )


def test_builtin_tests_satisfy_the_contract() -> None:
    for name, test in builtin_tests().items():
        assert isinstance(test, StatsTest)
        assert test.name == name
        out = test.compare([VariantData("A", 1000, 30), VariantData("B", 1000, 45)], StatsOptions())
        assert [c.variant for c in out] == ["B"]
        assert math.isfinite(out[0].absolute.lower) and out[0].absolute.lower < 0.015


def test_state_is_none_for_fixed_horizon_and_a_sequential_state_otherwise() -> None:
    data = [VariantData("A", 1000, 30), VariantData("B", 1000, 35)]
    assert analyze(data, method="chi2").state is None
    assert isinstance(analyze(data).state, SequentialState)
