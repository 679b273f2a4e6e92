"""Bandit mode: Thompson allocation with a floor, and inference that survives moving weights.

A seeded simulation where the baseline drifts while Thompson sampling moves traffic: pooling the
counts (what a fixed-split test would do) finds false winners most of the time; the epoch-
stratified always-valid test of ``compare_epochs`` stays within alpha. Small replicate counts
keep it quick; ``postwise bench experiments`` runs more.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from experiment_seed import add_contacts, expose, new_experiment, record, split

from postwise.db.models import Experiment
from postwise.errors import StatsError, ValidationError
from postwise.experiments.arms import Arms
from postwise.experiments.bandit import compare_epochs, probability_best, thompson_weights
from postwise.experiments.sequential import mde_p_value
from postwise.experiments.service import experiment_report
from postwise.experiments.stats import VariantData
from postwise.runtime import Runtime


def test_probability_best_matches_monte_carlo_draws() -> None:
    a, b = np.array([31.0, 36, 29]), np.array([971.0, 966, 973])
    draws = np.random.default_rng(0).beta(a, b, (200_000, 3))
    expected = np.bincount(draws.argmax(1), minlength=3) / 200_000
    assert probability_best(a, b) == pytest.approx(expected, abs=0.005)


def test_weights_respect_the_floor_and_sum_to_one() -> None:
    arms = [VariantData("A", 5000, 150), VariantData("B", 5000, 260), VariantData("C", 5000, 140)]
    weights = thompson_weights(arms, floor=0.1)
    assert sum(weights) == pytest.approx(1.0) and min(weights) >= 0.1 - 1e-12
    assert weights[1] == max(weights)
    assert thompson_weights(arms, floor=0.1) == weights  # deterministic
    for bad in (0.0, 0.4, float("nan"), "0.1"):
        with pytest.raises(StatsError, match="floor"):
            thompson_weights(arms, floor=bad)  # type: ignore[arg-type]


def test_arms_cannot_change_between_epochs() -> None:
    first = [VariantData("A", 100, 3), VariantData("B", 100, 4)]
    with pytest.raises(StatsError, match="cannot change"):
        compare_epochs([first, [VariantData("A", 100, 3), VariantData("C", 100, 4)]])
    with pytest.raises(StatsError, match="at least one epoch"):
        compare_epochs([])


def simulate(seed: int, lifts: list[float], replicates: int, looks: int = 12) -> tuple[float, ...]:
    """(stratified false-or-true winners, pooled winners, control share of traffic)."""
    rng = np.random.default_rng(seed)
    k, step = len(lifts), 6000
    stratified = pooled = 0
    control_share = []
    for _ in range(replicates):
        weights = np.full(k, 1 / k)
        epochs: list[list[VariantData]] = []
        n_total, c_total = np.zeros(k, int), np.zeros(k, int)
        found_s = found_p = False
        for look in range(looks):
            base = 0.03 * (1 + look / looks)  # the baseline doubles over the test
            n = rng.multinomial(step, weights)
            c = rng.binomial(n, base * (1 + np.array(lifts)))
            epochs.append([VariantData(str(i), int(n[i]), int(c[i])) for i in range(k)])
            n_total += n
            c_total += c
            bonferroni = k - 1
            if not found_s:
                found_s = any(
                    r.p_value * bonferroni < 0.05 for r in compare_epochs(epochs, mde=0.10)
                )
            if not found_p:
                pa = c_total[0] / n_total[0]
                for i in range(1, k):
                    pb = c_total[i] / n_total[i]
                    var = pa * (1 - pa) / n_total[0] + pb * (1 - pb) / n_total[i]
                    found_p |= float(mde_p_value(pb - pa, var, 0.1 * pa)) * bonferroni < 0.05
            current = [VariantData(str(i), int(n_total[i]), int(c_total[i])) for i in range(k)]
            weights = np.array(thompson_weights(current, floor=0.1))
        stratified += found_s
        pooled += found_p
        control_share.append(n_total[0] / n_total.sum())
    return stratified / replicates, pooled / replicates, float(np.mean(control_share))


def test_aa_with_drift_the_stratified_test_holds_and_pooling_does_not() -> None:
    stratified, pooled, _ = simulate(17, [0.0, 0.0, 0.0], replicates=100)
    assert stratified <= 0.05
    assert pooled >= 0.30  # the harness can tell them apart


def test_a_real_winner_is_found_and_gets_the_traffic() -> None:
    found, _, control = simulate(18, [0.0, 0.3, 0.0], replicates=30)
    assert found >= 0.8
    assert control < 1 / 3  # traffic moved away from the control towards the winner


def test_a_stored_bandit_moves_traffic_at_each_look_and_declares_a_valid_winner(
    runtime: Runtime,
) -> None:
    experiment_id = new_experiment(
        runtime,
        name="subject-bandit",
        target="trigger",
        allocation="bandit",
        bandit_floor=0.1,
        mde=0.5,
        variants=[{"name": "A", "weight": 0.5}, {"name": "B", "weight": 0.5}],
    )
    contacts = iter(add_contacts(runtime, 6000))
    shares = []
    report: dict[str, Any] = {}
    for _ in range(3):
        with runtime.session() as session:
            experiment = session.get(Experiment, experiment_id)
            assert experiment is not None
            arms = Arms.load(session, experiment, 1, 1)
            batch = [next(contacts) for _ in range(2000)]
            given = {c: str(arms.assign(c)[0]) for c in batch}
        expose(runtime, experiment_id, given)
        groups = split(given)
        shares.append(len(groups.get("B", [])) / 2000)
        record(runtime, experiment_id, groups.get("A", [])[::25], "A", kind="click")  # 4%
        record(runtime, experiment_id, groups.get("B", [])[::8], "B", kind="click")  # 12.5%
        report = experiment_report(runtime, experiment_id)
        if report["winner"]:
            break
    assert shares[0] == pytest.approx(0.5, abs=0.05)
    assert report["winner"] == "B"
    assert "always-valid under changing weights" in report["analysis"]["guarantees"]
    assert "more exposures" in report["analysis"]["cost"]
    if len(shares) > 1:
        assert shares[1] > 0.6  # Thompson moved traffic to B, never below the floor for A


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"allocation": "greedy"}, "allocation"),
        ({"allocation": "bandit", "bandit_floor": 0.7}, "bandit_floor"),
        ({"bandit_floor": 0.1}, "bandit_floor"),
        ({"allocation": "bandit", "method": "chi2"}, "allocation"),
    ],
)
def test_bad_bandit_settings_are_refused(
    runtime: Runtime, change: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationError) as info:
        new_experiment(runtime, **change)
    assert info.value.field == field
