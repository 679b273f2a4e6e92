"""``/v1/journeys`` and ``postwise journeys``: save, version, report, dry-run and simulate."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from postwise.cli import cli
from postwise.journeys.engine import JourneyEngine
from postwise.runtime import Runtime

FLOW: dict[str, Any] = {
    "name": "onboarding",
    "entry": {"event": "signup"},
    "goal": {"event": "activated"},
    "quiet_hours": "22-7",
    "steps": [
        {"id": "welcome", "type": "send", "template": "welcome", "next": "day1"},
        {"id": "day1", "type": "wait", "duration": "1d", "next": "pro?"},
        {
            "id": "pro?",
            "type": "branch",
            "conditions": [
                {"type": "contact_attribute", "config": {"attribute": "plan", "value": "pro"}}
            ],
            "then": "tips",
            "else": "upgrade",
        },
        {"id": "tips", "type": "send", "template": "welcome"},
        {
            "id": "upgrade",
            "type": "wait",
            "for_event": {"type": "upgraded"},
            "timeout": "3d",
            "next": "thanks",
            "timeout_next": "nudge",
        },
        {"id": "thanks", "type": "update_contact", "add_tags": ["upgraded"]},
        {"id": "nudge", "type": "send", "template": "welcome"},
    ],
}


def invoke(runtime: Runtime, *args: str) -> Any:
    return CliRunner().invoke(cli, list(args), obj={"runtime": runtime})


def test_api_saves_versions_and_refuses_bad_flows_with_the_field(
    client: Any, template_id: int
) -> None:
    created = client.post("/v1/journeys", json=FLOW)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["version"] == 1
    assert body["definition"]["steps"][0]["template"] == template_id
    journey_id = body["id"]
    edited = json.loads(json.dumps(FLOW))
    edited["steps"][1]["duration"] = "2d"
    replaced = client.put(f"/v1/journeys/{journey_id}", json=edited)
    assert replaced.json()["version"] == 2
    assert replaced.json()["definition"]["steps"][1]["duration"] == 172800
    bad = json.loads(json.dumps(FLOW))
    bad["name"] = "bad"
    bad["steps"][2]["then"] = "tipz"
    response = client.post("/v1/journeys", json=bad)
    assert response.status_code == 422
    problem = response.json()
    assert "no step 'tipz'" in json.dumps(problem)
    assert "steps[2].then" in json.dumps(problem)
    assert client.post(f"/v1/journeys/{journey_id}/pause").json()["active"] is False
    listed = client.get("/v1/journeys").json()["journeys"]
    assert [(j["name"], j["active"]) for j in listed] == [("onboarding", False)]
    assert client.get("/v1/journeys/999").status_code == 404


def test_dry_run_shows_the_path_waits_and_sends_for_a_contact(
    client: Any, template_id: int, make_contact: Callable[..., int]
) -> None:
    journey_id = client.post("/v1/journeys", json=FLOW).json()["id"]
    pro = make_contact(attributes={"plan": "pro"})
    free = make_contact(attributes={"plan": "free"})
    dry = client.post(f"/v1/journeys/{journey_id}/test", json={"contact_id": pro}).json()
    assert dry["enters"] is True
    assert [p["step"] for p in dry["path"]] == ["welcome", "day1", "pro?", "tips"]
    assert dry["sends"] == 2
    dry = client.post(
        f"/v1/journeys/{journey_id}/test", json={"contact_id": free, "assume_events": ["upgraded"]}
    ).json()
    assert [p["step"] for p in dry["path"]] == ["welcome", "day1", "pro?", "upgrade", "thanks"]
    assert "takes else" in dry["path"][2]["does"]
    bad = client.post(f"/v1/journeys/{journey_id}/test", json={"contact_id": "x"})
    assert bad.status_code == 422
    simulated = client.post(f"/v1/journeys/{journey_id}/simulate", json={"sample": 10}).json()
    assert simulated["sample"] == 2
    assert simulated["steps"]["welcome"] == 2
    assert simulated["ends"] == {"completed": 2}


def test_report_counts_per_step_and_cli_prints_it(
    runtime: Runtime,
    template_id: int,
    make_contact: Callable[..., int],
    publish: Callable[..., str],
    tmp_path: Path,
) -> None:
    path = tmp_path / "flow.json"
    path.write_text(json.dumps({**FLOW, "quiet_hours": None}))
    result = invoke(runtime, "journeys", "create", str(path))
    assert result.exit_code == 0, result.output
    assert "version 1" in result.output
    contact = make_contact()
    publish("signup", contact)
    engine = JourneyEngine(runtime, consumer="cli-test", block_ms=10)
    engine.ensure_group("0")
    engine.reload()
    for _ in range(3):
        engine.step()
    engine.close()
    result = invoke(runtime, "journeys", "report", "onboarding", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    steps = {s["step"]: s for s in report["steps"]}
    assert (steps["welcome"]["entered"], steps["welcome"]["sent"]) == (1, 1)
    assert steps["day1"]["waiting_now"] == 1
    assert report["entered"] == 1 and report["inside_now"] == 1
    result = invoke(runtime, "journeys", "test", "onboarding", "--contact", str(contact))
    assert "does not enter: already inside the journey" in result.output
    result = invoke(runtime, "journeys", "create", str(path), "--replace")
    assert "version 2" in result.output
    result = invoke(
        runtime, "journeys", "migrate", "onboarding", "--from-version", "1", "--map", "day1=day1"
    )
    assert "day1 -> day1: 1 contacts moved" in result.output, result.output
