"""``postwise experiments``: create, list, report, stop and plan from the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result
from experiment_seed import add_contacts, add_template, assigned, expose, record, split

from postwise.cli import cli
from postwise.errors import ValidationError
from postwise.experiments.planning import plan
from postwise.runtime import Runtime


def _invoke(runtime: Runtime, *args: str) -> Result:
    return CliRunner().invoke(cli, ["experiments", *args], obj={"runtime": runtime})


def _json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_create_from_a_json_file_with_options_overriding_it(
    runtime: Runtime, tmp_path: Path
) -> None:
    path = tmp_path / "experiment.json"
    path.write_text(
        json.dumps(
            {
                "name": "from-file",
                "variants": [{"name": "A", "weight": 0.5}, {"name": "B", "weight": 0.5}],
                "metric": "open",
            }
        )
    )
    created = _json(_invoke(runtime, "create", str(path), "--metric", "click", "--json"))
    assert created["name"] == "from-file" and created["metric"] == "click"
    assert [v["name"] for v in created["variants"]] == ["A", "B"]


def test_create_from_options_with_templates_and_subjects(runtime: Runtime) -> None:
    template_id = add_template(runtime)
    result = _invoke(
        runtime,
        "create",
        "--name",
        "three-way",
        "--variant",
        "A=0.4",
        "--variant",
        "B=0.3",
        "--variant",
        "C=0.3",
        "--template",
        f"B={template_id}",
        "--subject",
        "C=A better subject, with = signs",
        "--template",
        f"C={template_id}@1",
        "--target",
        "trigger",
    )
    assert result.exit_code == 0, result.output
    assert "experiment 1 'three-way' created: A 0.4, B 0.3, C 0.3" in result.output
    shown = _json(_invoke(runtime, "list", "--json"))["experiments"][0]
    b, c = shown["variants"][1:]
    assert b == {"name": "B", "weight": 0.3, "template_id": template_id}
    assert c["subject"] == "A better subject, with = signs" and c["template_version"] == 2
    assert shown["index"] == "exposures"


def test_create_rejects_bad_input_naming_the_problem(runtime: Runtime) -> None:
    uneven = _invoke(runtime, "create", "--name", "x", "--variant", "A=0.5", "--variant", "B=0.6")
    assert isinstance(uneven.exception, ValidationError)
    assert uneven.exception.field == "variants" and "sum to 1" in str(uneven.exception)
    malformed = _invoke(runtime, "create", "--name", "x", "--variant", "A")
    assert malformed.exit_code == 2 and "NAME=VALUE" in malformed.output
    orphan = _invoke(runtime, "create", "--name", "x", "--variant", "A=1", "--subject", "B=hi")
    assert orphan.exit_code == 2 and "no --variant B" in orphan.output


def test_report_prints_the_table_and_the_decision(runtime: Runtime) -> None:
    created = _json(
        _invoke(
            runtime,
            "create",
            "--name",
            "journey",
            "--variant",
            "A=0.5",
            "--variant",
            "B=0.5",
            "--target",
            "trigger",
            "--min-exposures",
            "20",
            "--json",
        )
    )
    arms = split(assigned(runtime, created["id"], add_contacts(runtime, 1000)))
    expose(runtime, created["id"], {c: v for v, cs in arms.items() for c in cs})
    record(runtime, created["id"], arms["A"][:10], "A")
    record(runtime, created["id"], arms["B"][:120], "B")
    result = _invoke(runtime, "report", "journey")
    assert result.exit_code == 0, result.output
    assert f"experiment {created['id']} 'journey': decided" in result.output
    assert f"  B {len(arms['B']):>21,} {120:>11,}" in result.output
    assert "decision: winner, winner B" in result.output
    assert "B beats control A" in result.output
    assert "sample-ratio check: p = " in result.output
    stopped = _invoke(runtime, "stop", str(created["id"]))
    assert stopped.exit_code == 0, stopped.output
    assert "'journey': stopped" in stopped.output and "(not recorded" in stopped.output
    listed = _invoke(runtime, "list", "--status", "stopped")
    assert "journey  winner B" in listed.output


def test_plan_prints_the_fixed_horizon_and_the_cap() -> None:
    expected = plan(0.03, 0.10)
    result = CliRunner().invoke(cli, ["experiments", "plan", "--baseline", "0.03", "--mde", "0.10"])
    assert result.exit_code == 0, result.output
    assert f"fixed horizon (chi2, one planned look): {expected.fixed_per_arm:,} per arm" in (
        result.output
    )
    assert f"cap: {expected.sequential_per_arm:,} per arm" in result.output
    as_json = CliRunner().invoke(
        cli, ["experiments", "plan", "--baseline", "0.03", "--mde", "0.10", "--json"]
    )
    assert json.loads(as_json.output) == expected.to_dict()


def test_plan_rejects_a_baseline_outside_0_1() -> None:
    result = CliRunner().invoke(cli, ["experiments", "plan", "--baseline", "3", "--mde", "0.1"])
    assert isinstance(result.exception, ValidationError)
    assert result.exception.field == "baseline"
