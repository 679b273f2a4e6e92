"""``/v1/experiments`` end to end: a seeded ledger and events in, one report over HTTP and CLI."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner
from experiment_seed import (
    add_campaign,
    add_contacts,
    add_template,
    assigned,
    expose,
    record,
    split,
)

from postwise.cli import cli
from postwise.experiments.planning import plan
from postwise.runtime import Runtime

DEFINITION: dict[str, Any] = {
    "name": "spring subject",
    "variants": [{"name": "A", "weight": 0.5}, {"name": "B", "weight": 0.5}],
    "metric": "click",
    "alpha": 0.05,
    "min_exposures": 50,
    "min_conversions": 10,
}


def _cli_report(runtime: Runtime, experiment_id: int) -> dict[str, Any]:
    result = CliRunner().invoke(
        cli, ["experiments", "report", str(experiment_id), "--json"], obj={"runtime": runtime}
    )
    assert result.exit_code == 0, result.output
    report: dict[str, Any] = json.loads(result.output)
    return report


def _lines(report: dict[str, Any]) -> dict[str, tuple[int, int]]:
    return {v["name"]: (v["exposures"], v["conversions"]) for v in report["analysis"]["variants"]}


def test_a_campaign_experiment_reports_the_same_numbers_over_http_and_cli(
    client: Any, runtime: Runtime
) -> None:
    template_id = add_template(runtime)
    campaign_id = add_campaign(runtime, template_id)
    created = client.post("/v1/experiments", json={**DEFINITION, "campaign_id": campaign_id})
    assert created.status_code == 201, created.text
    experiment = created.json()
    assert experiment["index"] == "outcomes" and experiment["campaign_ids"] == [campaign_id]
    experiment_id = experiment["id"]

    contacts = add_contacts(runtime, 4000)
    arms = split(assigned(runtime, experiment_id, contacts))
    expose(
        runtime,
        experiment_id,
        {c: v for v, cs in arms.items() for c in cs},
        campaign_id=campaign_id,
        template_id=template_id,
    )
    record(runtime, experiment_id, arms["A"][:60], "A")
    record(runtime, experiment_id, arms["B"][:70], "B")
    record(runtime, experiment_id, arms["B"][70:90], "B", scanner=True)  # link scanner

    first = client.get(f"/v1/experiments/{experiment_id}/report")
    assert first.status_code == 200, first.text
    report = first.json()
    expected = {"A": (len(arms["A"]), 60), "B": (len(arms["B"]), 70)}
    assert _lines(report) == expected
    assert report["decision"] == "not_significant" and report["winner"] is None
    assert report["recorded"] and report["experiment"]["looks"] == 1
    assert report["analysis"]["variants"][1]["relative_lift"]["estimate"] == pytest.approx(
        (70 / len(arms["B"])) / (60 / len(arms["A"])) - 1
    )

    from_cli = _cli_report(runtime, experiment_id)
    assert _lines(from_cli) == expected
    assert from_cli["experiment"]["looks"] == 2

    record(runtime, experiment_id, arms["B"][90:200], "B")
    decided = client.get(f"/v1/experiments/{experiment_id}/report").json()
    assert decided["winner"] == "B" and decided["decision"] == "winner"
    assert decided["experiment"]["status"] == "decided"
    shown = client.get(f"/v1/experiments/{experiment_id}").json()
    assert shown["winner"] == "B" and shown["decided_at"] is not None
    assert _cli_report(runtime, experiment_id)["winner"] == "B"


def test_a_skewed_split_is_flagged_over_the_api(client: Any, runtime: Runtime) -> None:
    experiment_id = client.post("/v1/experiments", json={**DEFINITION, "target": "trigger"}).json()[
        "id"
    ]
    contacts = add_contacts(runtime, 3000)
    arms = split(assigned(runtime, experiment_id, contacts))
    expose(runtime, experiment_id, dict.fromkeys(arms["A"], "A"))
    expose(runtime, experiment_id, dict.fromkeys(arms["B"][:1000], "B"))
    record(runtime, experiment_id, arms["A"][:30], "A")
    record(runtime, experiment_id, arms["B"][:150], "B")
    report = client.get(f"/v1/experiments/{experiment_id}/report").json()
    assert report["analysis"]["srm_flagged"] and report["analysis"]["srm_p_value"] < 0.001
    assert report["decision"] == "sample_ratio_mismatch" and report["winner"] is None
    assert report["experiment"]["flagged"].startswith("sample-ratio mismatch")
    listed = client.get("/v1/experiments", params={"status": "running"}).json()["experiments"]
    assert [e["id"] for e in listed] == [experiment_id] and listed[0]["flagged"]


def test_the_running_minimum_holds_across_api_looks(client: Any, runtime: Runtime) -> None:
    experiment_id = client.post(
        "/v1/experiments", json={**DEFINITION, "target": "trigger", "sequential_tuning": 4000}
    ).json()["id"]
    arms = split(assigned(runtime, experiment_id, add_contacts(runtime, 3000)))
    expose(runtime, experiment_id, {c: v for v, cs in arms.items() for c in cs})
    p_values = []
    taken = {"A": 0, "B": 0}
    for more_a, more_b in [(20, 30), (10, 25), (20, 5), (15, 5)]:
        for variant, more in (("A", more_a), ("B", more_b)):
            record(runtime, experiment_id, arms[variant][taken[variant] :][:more], variant)
            taken[variant] += more
        report = client.get(f"/v1/experiments/{experiment_id}/report").json()
        p_values.append(report["analysis"]["variants"][1]["p_value"])
    assert p_values == sorted(p_values, reverse=True) and p_values[-1] < p_values[0]
    assert report["experiment"]["looks"] == 4


def test_bad_definitions_get_422_naming_the_field(client: Any) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"variants": [{"name": "A", "weight": 0.7}, {"name": "B", "weight": 0.7}]}, "variants"),
        (
            {"variants": [{"name": "A", "weight": 0.5}, {"name": "A", "weight": 0.5}]},
            "variants[1].name",
        ),
        ({"alpha": 0.5}, "alpha"),
        ({"metric": "purchase"}, "metric"),
        ({"method": "ttest"}, "method"),
        ({"holdout": -0.1}, "holdout"),
        ({"colour": "blue"}, "colour"),
    ]
    for body, field in cases:
        response = client.post("/v1/experiments", json={**DEFINITION, **body})
        assert response.status_code == 422, response.text
        assert response.json()["field"] == field
    assert client.get("/v1/experiments").json()["experiments"] == []


def test_a_taken_name_is_409_and_an_unknown_id_404(client: Any) -> None:
    assert client.post("/v1/experiments", json=DEFINITION).status_code == 201
    assert client.post("/v1/experiments", json=DEFINITION).status_code == 409
    assert client.get("/v1/experiments/999").status_code == 404
    assert client.get("/v1/experiments/999/report").status_code == 404
    assert client.post("/v1/experiments/999/stop").status_code == 404


def test_stop_takes_a_last_look_and_refuses_twice(client: Any, runtime: Runtime) -> None:
    experiment_id = client.post("/v1/experiments", json={**DEFINITION, "target": "trigger"}).json()[
        "id"
    ]
    stopped = client.post(f"/v1/experiments/{experiment_id}/stop")
    assert stopped.status_code == 200, stopped.text
    assert stopped.json()["experiment"]["status"] == "stopped"
    assert stopped.json()["experiment"]["stopped_at"] is not None
    assert client.post(f"/v1/experiments/{experiment_id}/stop").status_code == 409
    bad = client.post(f"/v1/experiments/{experiment_id}/stop", json={"ship": 3})
    assert bad.status_code == 422 and bad.json()["field"] == "ship"


def test_plan_gives_the_fixed_horizon_and_the_sequential_cap(client: Any) -> None:
    response = client.post("/v1/experiments/plan", json={"baseline": 0.03, "mde": 0.10})
    assert response.status_code == 200, response.text
    expected = plan(0.03, 0.10)
    body = response.json()
    assert body["fixed_per_arm"] == expected.fixed_per_arm == 53208
    assert body["sequential_per_arm"] == expected.sequential_per_arm
    assert body["sequential_tuning"] == expected.sequential_tuning
    three = client.post(
        "/v1/experiments/plan", json={"baseline": 0.03, "mde": 0.10, "variants": 3}
    ).json()
    assert three["fixed_per_arm"] > expected.fixed_per_arm


def test_bad_plans_get_422_naming_the_field(client: Any) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"mde": 0.1}, "baseline"),
        ({"baseline": "3%", "mde": 0.1}, "baseline"),
        ({"baseline": 0.03, "mde": -0.1}, "mde"),
        ({"baseline": 0.03, "mde": 0.1, "power": 0.3}, "power"),
        ({"baseline": 0.03, "mde": 0.1, "variants": 1}, "variants"),
        ({"baseline": 0.03, "mde": 0.1, "alpha": 0.9}, "alpha"),
        ({"baseline": 0.03, "mde": 0.1, "beta": 0.2}, "beta"),
    ]
    for body, field in cases:
        response = client.post("/v1/experiments/plan", json=body)
        assert response.status_code == 422, response.text
        assert response.json()["field"] == field


def test_experiments_need_an_api_key(client: Any) -> None:
    response = client.get("/v1/experiments", headers={"Authorization": ""})
    assert response.status_code == 401
