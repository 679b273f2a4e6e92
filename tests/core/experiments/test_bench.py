"""The decision figure: 10 variants, 10 million exposures, from aggregates, well under 50 ms."""

from __future__ import annotations

from click.testing import CliRunner

from postwise.devtools.bench.experiments import bench_experiments, decision_benchmark


def test_a_decision_for_10_variants_and_10_million_exposures_takes_under_50_ms() -> None:
    figure = decision_benchmark(variants=10, exposures=10_000_000, repeat=20)
    assert figure["variants"] == 10
    assert figure["exposures"] == 10_000_000
    assert figure["median_ms"] < 50
    assert figure["min_ms"] <= figure["median_ms"] <= figure["max_ms"]


def test_bench_command_prints_the_decision_and_assignment_figures() -> None:
    out = CliRunner().invoke(bench_experiments, ["--repeat", "3", "--contacts", "2000"])
    assert out.exit_code == 0, out.output
    assert "decision (sequential, 10 variants, 10,000,000 exposures): median" in out.output
    assert "assignment (2,000 contacts)" in out.output


def test_a_decision_tuned_to_the_effect_with_cuped_also_takes_under_50_ms() -> None:
    figure = decision_benchmark(variants=10, exposures=10_000_000, repeat=10, mde=0.10, cuped=True)
    assert figure["method"] == "sequential mde=0.1 cuped"
    assert figure["median_ms"] < 50


def test_bench_simulations_run_with_few_replicates() -> None:
    out = CliRunner().invoke(
        bench_experiments,
        ["--repeat", "2", "--contacts", "500", "--simulate", "--replicates", "60"],
    )
    assert out.exit_code == 0, out.output
    for line in ("peeking (60 replicates)", "maturing", "cuped rho=0.5", "bandit under drift"):
        assert line in out.output
