"""Assignment: stable across processes and versions, on target, independent across experiments."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter

import numpy as np
import pytest
from scipy import stats

from postwise.errors import StatsError
from postwise.experiments.assignment import VariantAssigner, assign_variant
from postwise.experiments.srm import srm_p_value

HALF = {"A": 0.5, "B": 0.5}
THREE = {"control": 0.34, "short": 0.33, "long": 0.33}
SKEWED = {"A": 0.9, "B": 0.1}

#: Recorded once from this implementation; a change here reshuffles every running experiment.
PINNED = [
    ("exp-1", "contact-1", HALF, 0.0, "A", 2283823761437827338),
    ("exp-1", "contact-2", HALF, 0.0, "A", 531307901113130072),
    ("exp-1", "contact-3", HALF, 0.0, "A", 4917340145846354155),
    ("exp-1", "contact-4", HALF, 0.0, "B", 13079783978124086960),
    ("exp-2", "contact-1", HALF, 0.0, "B", 13863111804611720606),
    ("exp-2", "contact-2", HALF, 0.0, "A", 3023353209496040518),
    ("welcome-2024", 42, THREE, 0.0, "control", 5863499998589613549),
    ("welcome-2024", 43, THREE, 0.0, "long", 13158615159050110767),
    ("welcome-2024", 44, THREE, 0.0, "long", 17762745001642886582),
    ("welcome-2024", 45, THREE, 0.0, "short", 11418767216253514950),
    ("newsletter", "ünïcødé@example.com", SKEWED, 0.0, "A", 12071157268475309443),
    ("newsletter", "user@example.com", SKEWED, 0.2, "A", 8077612949406721036),
    ("newsletter", "third@example.com", SKEWED, 0.2, "B", 17409762647568805811),
    ("newsletter", "c4@example.com", SKEWED, 0.2, None, None),
    ("newsletter", "c10@example.com", SKEWED, 0.2, None, None),
]


@pytest.mark.parametrize(
    ("experiment", "contact", "weights", "holdout", "variant", "bucket"), PINNED
)
def test_assignment_matches_the_pinned_table(
    experiment: str,
    contact: str | int,
    weights: dict[str, float],
    holdout: float,
    variant: str | None,
    bucket: int | None,
) -> None:
    assert assign_variant(experiment, contact, weights, holdout=holdout) == variant
    if bucket is not None:
        assert VariantAssigner(experiment, weights, holdout=holdout).bucket(contact) == bucket


def test_assignment_is_the_same_in_a_fresh_process_with_another_hash_seed() -> None:
    script = (
        "import json, sys\n"
        "from postwise.experiments.assignment import assign_variant\n"
        "rows = json.loads(sys.argv[1])\n"
        "print(json.dumps([assign_variant(e, c, w, holdout=h) for e, c, w, h, _, _ in rows]))\n"
    )
    rows = [list(row) for row in PINNED]
    out = subprocess.run(
        [sys.executable, "-c", script, json.dumps(rows)],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONHASHSEED": "12345"},
    )
    assert json.loads(out.stdout) == [row[4] for row in PINNED]


def test_the_separator_is_unambiguous() -> None:
    shifted = [
        VariantAssigner("ab", HALF).bucket("c"),
        VariantAssigner("a", HALF).bucket("bc"),
    ]
    assert shifted[0] != shifted[1]
    assert VariantAssigner(42, HALF).bucket(7) == VariantAssigner("42", HALF).bucket("7")


@pytest.fixture(scope="module")
def million_in_two_experiments() -> tuple[np.ndarray, np.ndarray]:
    """Variant codes of 1,000,000 contacts in a 20/30/50 experiment and in a 50/50 one."""
    first = VariantAssigner("exp-split", {"A": 0.2, "B": 0.3, "C": 0.5})
    second = VariantAssigner("exp-other", HALF)
    codes = {"A": 0, "B": 1, "C": 2}
    contacts = [f"contact-{i}" for i in range(1_000_000)]
    a = np.array([codes.get(first.assign(c) or "", -1) for c in contacts], dtype=np.int8)
    b = np.array([second.assign(c) == "B" for c in contacts], dtype=np.int8)
    assert a.min() == 0  # nobody is held out: there is no holdout
    return a, b


def test_a_million_contacts_split_within_half_a_percent_and_srm_does_not_flag(
    million_in_two_experiments: tuple[np.ndarray, np.ndarray],
) -> None:
    first, _ = million_in_two_experiments
    counts = np.bincount(first, minlength=3)
    shares = counts / counts.sum()
    assert np.all(np.abs(shares - [0.2, 0.3, 0.5]) < 0.005)
    assert srm_p_value(counts.tolist(), [0.2, 0.3, 0.5]) > 0.001


def test_assignment_in_one_experiment_is_independent_of_another(
    million_in_two_experiments: tuple[np.ndarray, np.ndarray],
) -> None:
    first, second = million_in_two_experiments
    table = np.zeros((3, 2), dtype=np.int64)
    np.add.at(table, (first, second), 1)
    assert stats.chi2_contingency(table).pvalue > 0.001
    within = table[:, 1] / table.sum(axis=1)
    assert np.all(np.abs(within - 0.5) < 0.005)


def test_holdout_takes_its_share_and_the_rest_follow_the_weights() -> None:
    assigner = VariantAssigner("exp-holdout", SKEWED, holdout=0.1)
    counts = Counter(assigner.assign(f"c-{i}") for i in range(200_000))
    assert abs(counts[None] / 200_000 - 0.1) < 0.005
    assigned = counts["A"] + counts["B"]
    assert abs(counts["B"] / assigned - 0.1) < 0.005


def test_weights_given_as_pairs_and_as_a_mapping_assign_alike() -> None:
    for i in range(200):
        assert assign_variant("e", i, [("A", 0.5), ("B", 0.5)]) == assign_variant("e", i, HALF)


@pytest.mark.parametrize(
    ("weights", "holdout", "message"),
    [
        ({"A": 0.5, "B": 0.6}, 0.0, "weights must sum to 1"),
        ({"A": 1.0, "B": 0.0}, 0.0, "weights must be positive"),
        ([("A", 0.5), ("A", 0.5)], 0.0, "distinct"),
        ({}, 0.0, "at least one variant"),
        (HALF, 1.0, "holdout must be a share"),
    ],
)
def test_bad_assignment_settings_are_refused(
    weights: dict[str, float] | list[tuple[str, float]], holdout: float, message: str
) -> None:
    with pytest.raises(StatsError, match=message):
        assign_variant("e", "c", weights, holdout=holdout)


def test_empty_ids_are_refused() -> None:
    with pytest.raises(StatsError, match="contact_id must not be empty"):
        assign_variant("e", "", HALF)
    with pytest.raises(StatsError, match="experiment_id must not be empty"):
        assign_variant("", "c", HALF)


def test_assignment_costs_a_few_microseconds_per_contact() -> None:
    assigner = VariantAssigner("speed", THREE, holdout=0.05)
    ids = [f"contact-{i}" for i in range(50_000)]
    start = time.perf_counter()
    for contact in ids:
        assigner.assign(contact)
    per_call_us = (time.perf_counter() - start) / len(ids) * 1e6
    start = time.perf_counter()
    for contact in ids:
        assign_variant("speed", contact, THREE, holdout=0.05)
    function_us = (time.perf_counter() - start) / len(ids) * 1e6
    # Measured ~1.2 µs and ~2 µs on the 2-core dev machine; generous bounds for shared CI.
    assert per_call_us < 20
    assert function_us < 40
