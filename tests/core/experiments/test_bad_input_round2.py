"""Broken data never yields a winner: changed experiments, empty arms, degenerate counts."""

from __future__ import annotations

import pytest
from experiment_seed import add_contacts, assigned, expose, new_experiment, record, split

from postwise.db.models import Experiment
from postwise.errors import StatsError, ValidationError
from postwise.experiments.bandit import compare_epochs
from postwise.experiments.service import experiment_report
from postwise.experiments.stats import Decision, VariantData, analyze
from postwise.runtime import Runtime


def test_a_variant_without_exposures_blocks_the_decision_with_every_option() -> None:
    data = [VariantData("A", 50000, 1500), VariantData("B", 50000, 2500), VariantData("C", 0, 0)]
    for options in ({}, {"mde": 0.10}, {"index": "outcomes", "mde": 0.10}):
        result = analyze(data, **options)  # type: ignore[arg-type]
        assert result.winner is None
        assert result.decision in (Decision.BELOW_MINIMUM_SAMPLE, Decision.SAMPLE_RATIO_MISMATCH)


def test_no_control_conversions_means_no_information_not_a_crash() -> None:
    result = analyze([VariantData("A", 5000, 0), VariantData("B", 5000, 40)], mde=0.10)
    assert result.variant("B").p_value == 1.0 and result.winner is None


def test_an_empty_epoch_arm_is_skipped_and_all_empty_is_no_information() -> None:
    empty = [VariantData("A", 0, 0), VariantData("B", 0, 0)]
    (only,) = compare_epochs([empty])
    assert only.p_value == 1.0 and only.epochs_used == 0


def test_variants_changed_while_running_are_refused_with_a_message(runtime: Runtime) -> None:
    experiment_id = new_experiment(runtime, target="trigger")
    contacts = add_contacts(runtime, 300)
    arms = assigned(runtime, experiment_id, contacts)
    expose(runtime, experiment_id, arms)
    for variant, members in split(arms).items():
        record(runtime, experiment_id, members[:20], variant)
    experiment_report(runtime, experiment_id)  # the state now pins A and B
    with runtime.session() as session:
        experiment = session.get(Experiment, experiment_id)
        assert experiment is not None
        experiment.variants = [*experiment.variants, {"name": "C", "weight": 0.0001}]
        session.add(experiment)
    with pytest.raises(StatsError, match="must keep its settings"):
        experiment_report(runtime, experiment_id)


def test_weights_changed_while_running_flag_the_split_and_withhold_any_winner(
    runtime: Runtime,
) -> None:
    experiment_id = new_experiment(runtime, target="trigger")
    contacts = add_contacts(runtime, 2000)
    arms = assigned(runtime, experiment_id, contacts)
    groups = split(arms)
    expose(runtime, experiment_id, arms)
    record(runtime, experiment_id, groups["A"][:20], "A")
    record(runtime, experiment_id, groups["B"][:300], "B")
    with runtime.session() as session:
        experiment = session.get(Experiment, experiment_id)
        assert experiment is not None
        experiment.variants = [{"name": "A", "weight": 0.9}, {"name": "B", "weight": 0.1}]
        session.add(experiment)
    report = experiment_report(runtime, experiment_id)
    assert report["decision"] == "sample_ratio_mismatch" and report["winner"] is None
    assert report["experiment"]["flagged"]


def test_a_broken_weight_in_a_stored_row_is_a_clear_error(runtime: Runtime) -> None:
    from postwise.experiments.arms import Arms

    experiment_id = new_experiment(runtime, target="trigger")
    with runtime.session() as session:
        experiment = session.get(Experiment, experiment_id)
        assert experiment is not None
        experiment.variants = [{"name": "A", "weight": -1}, {"name": "B", "weight": 0.5}]
        with pytest.raises(ValidationError, match="positive weight"):
            Arms.load(session, experiment, 1, 1)
