"""``postwise bench experiments``: how long a decision and an assignment take on this machine."""

from __future__ import annotations

import statistics
import time
from typing import Any

import click
import numpy as np

from postwise.experiments.assignment import VariantAssigner, assign_variant
from postwise.experiments.stats import VariantData, analyze

__all__ = ["assignment_benchmark", "bench_experiments", "decision_benchmark"]


def _percentile(values: list[float], share: float) -> float:
    return float(np.percentile(values, share * 100))


def decision_benchmark(
    variants: int = 10,
    exposures: int = 10_000_000,
    repeat: int = 50,
    method: str = "sequential",
) -> dict[str, Any]:
    """Time ``analyze`` on ``variants`` arms sharing ``exposures`` (aggregates, 3% baseline).

    Each repetition is a full look: validation, sample-ratio check, the test, Holm, the
    Bayesian readout, the decision and the state update. Returns milliseconds per decision.
    """
    per_arm = exposures // variants
    data = [
        VariantData(f"v{i}", exposures=per_arm, conversions=int(per_arm * (0.03 + 0.0005 * i)))
        for i in range(variants)
    ]
    analyze(data, method=method)  # warm caches (quadrature nodes) out of the measurement
    timings = []
    for _ in range(repeat):
        start = time.perf_counter()
        analyze(data, method=method)
        timings.append((time.perf_counter() - start) * 1e3)
    return {
        "method": method,
        "variants": variants,
        "exposures": per_arm * variants,
        "repeat": repeat,
        "median_ms": statistics.median(timings),
        "p95_ms": _percentile(timings, 0.95),
        "min_ms": min(timings),
        "max_ms": max(timings),
    }


def assignment_benchmark(contacts: int = 200_000) -> dict[str, Any]:
    """Time variant assignment per contact, through a reused assigner and the function."""
    weights = {"A": 0.45, "B": 0.45, "C": 0.1}
    assigner = VariantAssigner("bench-experiment", weights, holdout=0.05)
    ids = [f"contact-{i}" for i in range(contacts)]
    start = time.perf_counter()
    for contact in ids:
        assigner.assign(contact)
    reused = (time.perf_counter() - start) / contacts * 1e6
    start = time.perf_counter()
    for contact in ids:
        assign_variant("bench-experiment", contact, weights, holdout=0.05)
    function = (time.perf_counter() - start) / contacts * 1e6
    return {"contacts": contacts, "assigner_us": reused, "assign_variant_us": function}


@click.command("experiments")
@click.option("--variants", default=10, show_default=True, help="Arms in the experiment.")
@click.option("--exposures", default=10_000_000, show_default=True, help="Exposures in total.")
@click.option("--repeat", default=50, show_default=True, help="Decisions to time.")
@click.option("--contacts", default=200_000, show_default=True, help="Assignments to time.")
def bench_experiments(variants: int, exposures: int, repeat: int, contacts: int) -> None:
    """Time a decision from aggregates, and variant assignment per contact."""
    for method in ("sequential", "chi2"):
        d = decision_benchmark(variants, exposures, repeat, method=method)
        click.echo(
            f"decision ({method}, {d['variants']} variants, {d['exposures']:,} exposures): "
            f"median {d['median_ms']:.2f} ms, p95 {d['p95_ms']:.2f} ms over {d['repeat']} runs"
        )
    a = assignment_benchmark(contacts)
    click.echo(
        f"assignment ({a['contacts']:,} contacts): {a['assigner_us']:.2f} µs per contact with a "
        f"reused VariantAssigner, {a['assign_variant_us']:.2f} µs through assign_variant"
    )
