"""``postwise bench experiments``: how long a decision and an assignment take on this machine,
and (``--simulate``) the seeded simulations behind docs/experiments-statistics.md with more
replicates than the test suite runs: false winners under peeking and maturing outcomes, power at
the plan, the CUPED saving and bandits under drift."""

from __future__ import annotations

import statistics
import time
from typing import Any

import click
import numpy as np

from postwise.experiments.assignment import VariantAssigner, assign_variant
from postwise.experiments.bandit import compare_epochs, thompson_weights
from postwise.experiments.cuped import adjusted_difference
from postwise.experiments.data import Covariate
from postwise.experiments.effects import absolute_lift
from postwise.experiments.planning import plan
from postwise.experiments.sequential import (
    exposure_indexed_p_value,
    mde_p_value,
    outcome_indexed_mde_p_value,
    outcome_indexed_p_value,
    rho_squared,
)
from postwise.experiments.stats import VariantData, analyze

__all__ = ["assignment_benchmark", "bench_experiments", "decision_benchmark"]


def _percentile(values: list[float], share: float) -> float:
    return float(np.percentile(values, share * 100))


def decision_benchmark(
    *,
    variants: int = 10,
    exposures: int = 10_000_000,
    repeat: int = 50,
    method: str = "sequential",
    mde: float | None = None,
    cuped: bool = False,
) -> dict[str, Any]:
    """Time ``analyze`` on ``variants`` arms sharing ``exposures`` (aggregates, 3% baseline).

    Each repetition is a full look: validation, sample-ratio check, the test, Holm, the
    Bayesian readout, the decision and the state update. Returns milliseconds per decision.
    """
    per_arm = exposures // variants
    data = []
    for i in range(variants):
        conversions = int(per_arm * (0.03 + 0.0005 * i))
        covariate = None
        if cuped:  # a pre-period converter flag: 3% of contacts, half of them convert again
            pre = int(per_arm * 0.03)
            covariate = Covariate(per_arm, pre, pre, pre // 2, conversions)
        data.append(VariantData(f"v{i}", per_arm, conversions, covariate))
    analyze(data, method=method, mde=mde)  # warm caches out of the measurement
    timings = []
    for _ in range(repeat):
        start = time.perf_counter()
        analyze(data, method=method, mde=mde)
        timings.append((time.perf_counter() - start) * 1e3)
    return {
        "method": method + (f" mde={mde:g}" if mde else "") + (" cuped" if cuped else ""),
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
@click.option("--simulate/--no-simulate", default=False, help="Run the seeded simulations too.")
@click.option("--replicates", default=10_000, show_default=True, help="Replicates per simulation.")
def bench_experiments(
    *, variants: int, exposures: int, repeat: int, contacts: int, simulate: bool, replicates: int
) -> None:
    """Time a decision from aggregates and variant assignment; optionally run the simulations."""
    for method, mde, cuped in (
        ("sequential", None, False),
        ("sequential", 0.10, False),
        ("sequential", 0.10, True),
        ("chi2", None, False),
    ):
        d = decision_benchmark(
            variants=variants,
            exposures=exposures,
            repeat=repeat,
            method=method,
            mde=mde,
            cuped=cuped,
        )
        click.echo(
            f"decision ({d['method']}, {d['variants']} variants, {d['exposures']:,} exposures): "
            f"median {d['median_ms']:.2f} ms, p95 {d['p95_ms']:.2f} ms over {d['repeat']} runs"
        )
    a = assignment_benchmark(contacts)
    click.echo(
        f"assignment ({a['contacts']:,} contacts): {a['assigner_us']:.2f} µs per contact with a "
        f"reused VariantAssigner, {a['assign_variant_us']:.2f} µs through assign_variant"
    )
    if not simulate:
        return
    _show(f"peeking ({replicates:,} replicates)", peeking_simulation(replicates))
    _show(f"maturing ({replicates:,} replicates)", maturing_simulation(replicates))
    _show(f"cuped rho=0.5 ({replicates:,} replicates)", cuped_simulation(replicates))
    runs = max(50, replicates // 20)
    _show(f"bandit under drift ({runs:,} replicates)", bandit_simulation(runs))


# -- simulations --------------------------------------------------------------------------------

ALPHA = 0.05


def _peek(
    rng: np.random.Generator, replicates: int, baseline: float, *, lift: float, cap: int, step: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    exposures = np.minimum(np.arange(1, cap // step + 2) * step, cap)
    increments = np.diff(np.concatenate([[0], exposures]))
    shape = (replicates, len(exposures))
    conv_a = np.cumsum(rng.binomial(increments, baseline, shape), axis=1)
    conv_b = np.cumsum(rng.binomial(increments, baseline * (1 + lift), shape), axis=1)
    return exposures, conv_a, conv_b


def _rates(p: np.ndarray, diff: np.ndarray) -> tuple[float, float]:
    """(found the right way, crossed at all) from per-look p-values and lifts."""
    crossed = np.minimum.accumulate(p, axis=1) < ALPHA
    first = np.argmax(crossed, axis=1)
    right = diff[np.arange(len(p)), first] > 0
    return float((crossed.any(1) & right).mean()), float(crossed.any(1).mean())


def peeking_simulation(replicates: int, seed: int = 1) -> dict[str, float]:
    """+10% on 3%, a look every 1,000 per arm up to 1.75x the fixed-horizon sample."""
    design = plan(0.03, 0.10)
    cap = int(1.75 * design.fixed_per_arm)
    rng = np.random.default_rng(seed)
    out: dict[str, float] = {"cap_per_arm": cap, "fixed_per_arm": design.fixed_per_arm}
    for label, lift in (("aa", 0.0), ("power", 0.10)):
        n, ca, cb = _peek(rng, replicates, 0.03, lift=lift, cap=cap, step=1000)
        est, var = absolute_lift(n, ca, n, cb)
        with np.errstate(divide="ignore", invalid="ignore"):
            tuned = mde_p_value(est, var, 0.10 * ca / n)
        n_star = exposure_indexed_p_value(
            n, ca, n, cb, rho_squared(ALPHA, design.sequential_tuning)
        )
        default = exposure_indexed_p_value(n, ca, n, cb, rho_squared(ALPHA, 5000.0))
        for name, p in (("mde", tuned), ("n_star_plan", n_star), ("n_star_default", default)):
            right, crossed = _rates(p, cb - ca)
            out[f"{label}_{name}"] = crossed if lift == 0 else right
    # Untuned design: 10% baseline, +5%.
    other = plan(0.10, 0.05)
    cap2 = int(1.75 * other.fixed_per_arm)
    for label, lift in (("aa", 0.0), ("power", 0.05)):
        n, ca, cb = _peek(rng, replicates, 0.10, lift=lift, cap=cap2, step=max(1000, cap2 // 90))
        est, var = absolute_lift(n, ca, n, cb)
        right, crossed = _rates(mde_p_value(est, var, 0.05 * ca / n), cb - ca)
        out[f"untuned_{label}_mde"] = crossed if lift == 0 else right
    return out


def maturing_simulation(replicates: int, seed: int = 2) -> dict[str, float]:
    """A send of 20,000 per arm at 3% read hourly for 48 h (exponential delays, mean 6 h)."""
    rng = np.random.default_rng(seed)
    hours, n = 48, 20000
    edges = 1.0 - np.exp(-np.arange(1, hours + 1) / 6.0)
    probabilities = np.diff(np.concatenate([[0.0], edges, [1.0]]))

    def arm(rate: float, recipients: int) -> np.ndarray:
        clickers = rng.binomial(recipients, rate, replicates)
        return np.cumsum(rng.multinomial(clickers, probabilities)[:, :hours], axis=1)

    a, b = arm(0.03, n), arm(0.03, n)
    out = {
        "aa_mde": float((outcome_indexed_mde_p_value(n, a, n, b, 0.10).min(1) < ALPHA).mean()),
        "aa_n_star": float(
            (outcome_indexed_p_value(n, a, n, b, rho_squared(ALPHA, 1000.0)).min(1) < ALPHA).mean()
        ),
    }
    cap = int(1.75 * plan(0.03, 0.10).fixed_per_arm)
    a, b = arm(0.03, cap), arm(0.033, cap)
    out["power_mde"] = _rates(outcome_indexed_mde_p_value(cap, a, cap, b, 0.10), b - a)[0]
    return out


def cuped_simulation(replicates: int, seed: int = 3) -> dict[str, float]:
    """Covariate = converted in a pre-period (3%), correlation 0.5 with the outcome."""
    rng = np.random.default_rng(seed)
    pre, high, low = 0.03, 0.515, 0.015
    cap = int(1.75 * plan(0.03, 0.10).fixed_per_arm)

    def run(lift: float, size: int, adjust: bool) -> tuple[float, float]:
        n = np.minimum(np.arange(1, size // 1000 + 2) * 1000, size)
        inc = np.diff(np.concatenate([[0], n]))
        shape = (replicates, len(n))

        def arm(f: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
            x = rng.binomial(inc, pre, shape)
            y1 = rng.binomial(x, high * f)
            y0 = rng.binomial(inc - x, low * f)
            return np.cumsum(x, 1), np.cumsum(y1 + y0, 1), np.cumsum(y1, 1)

        xa, ya, xya = arm(1.0)
        xb, yb, xyb = arm(1.0 + lift)
        est, var, raw = adjusted_difference((n, ya, xa, xa, xya), (n, yb, xb, xb, xyb))
        if not adjust:
            est, var = (yb - ya) / n, raw
        return _rates(mde_p_value(est, var, 0.10 * ya / n), yb - ya)

    full = run(0.10, cap, adjust=False)[0]
    out = {"power_unadjusted_cap": full}
    for share in (0.8, 0.75):
        out[f"power_cuped_{int(share * 100)}pct"] = run(0.10, int(share * cap), adjust=True)[0]
    out["aa_cuped"] = run(0.0, cap, adjust=True)[1]
    return out


def bandit_simulation(replicates: int, seed: int = 4) -> dict[str, float]:
    """Three arms, Thompson with a 0.1 floor, 12 looks of 6,000; the baseline doubles meanwhile."""
    rng = np.random.default_rng(seed)
    out = {}
    for label, lifts in (("aa", [0.0, 0.0, 0.0]), ("power", [0.0, 0.3, 0.0])):
        stratified = pooled = 0
        control = []
        for _ in range(replicates):
            weights = np.full(3, 1 / 3)
            epochs: list[list[VariantData]] = []
            nt, ct = np.zeros(3, int), np.zeros(3, int)
            hit_s = hit_p = False
            for look in range(12):
                base = 0.03 * (1 + look / 12)
                n = rng.multinomial(6000, weights)
                c = rng.binomial(n, base * (1 + np.array(lifts)))
                epochs.append([VariantData(str(i), int(n[i]), int(c[i])) for i in range(3)])
                nt += n
                ct += c
                if not hit_s:
                    hit_s = any(r.p_value * 2 < ALPHA for r in compare_epochs(epochs, mde=0.10))
                if not hit_p:
                    pa = ct[0] / nt[0]
                    for i in (1, 2):
                        pb = ct[i] / nt[i]
                        v = pa * (1 - pa) / nt[0] + pb * (1 - pb) / nt[i]
                        hit_p |= float(mde_p_value(pb - pa, v, 0.1 * pa)) * 2 < ALPHA
                totals = [VariantData(str(i), int(nt[i]), int(ct[i])) for i in range(3)]
                weights = np.array(thompson_weights(totals, floor=0.1))
            stratified += hit_s
            pooled += hit_p
            control.append(nt[0] / nt.sum())
        out[f"{label}_stratified"] = stratified / replicates
        out[f"{label}_pooled"] = pooled / replicates
        out[f"{label}_control_share"] = float(np.mean(control))
    return out


def _show(title: str, figures: dict[str, float]) -> None:
    click.echo(
        f"{title}: "
        + ", ".join(
            f"{k} {v * 100:.1f}%" if isinstance(v, float) and v <= 1 else f"{k} {v:,}"
            for k, v in figures.items()
        )
    )
