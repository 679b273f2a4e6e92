from __future__ import annotations

import json

from click.testing import CliRunner

from postwise.content.templates import validate_template
from postwise.devtools.bench.content import bench_render, benchmark_template, render_benchmark


def test_the_benchmark_template_is_a_valid_typical_template() -> None:
    source = benchmark_template()

    assert validate_template(source.subject, source.html, known_variables={"first_name"}) == []
    assert source.html.count("<p") >= 30
    assert source.html.count("<a ") >= 7


def test_render_benchmark_reports_median_costs_per_message() -> None:
    result = render_benchmark(n=60)

    for key in ("render_us", "build_us", "sign_rsa_us", "sign_ed25519_us", "total_rsa_us"):
        assert result[key] > 0
    assert result["total_rsa_us"] >= result["render_us"]
    assert result["messages_per_hour_per_core"] == round(3600e6 / result["total_rsa_us"])
    assert result["message_bytes"] > 10_000
    # Built in the same loop, the stdlib's EmailMessage is the yardstick for build_us.
    assert result["stdlib_build_us"] > result["build_us"]


def test_postwise_bench_render_prints_json() -> None:
    outcome = CliRunner().invoke(bench_render, ["--messages", "20", "--json"])

    assert outcome.exit_code == 0, outcome.output
    assert set(json.loads(outcome.output)) >= {"render_us", "build_us", "total_rsa_us"}
