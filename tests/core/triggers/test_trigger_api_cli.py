"""``/v1/triggers`` and ``postwise triggers``: the same definitions, the same errors."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from click.testing import CliRunner

from postwise.cli import cli
from postwise.errors import ValidationError
from postwise.runtime import Runtime

DEFINITION: dict[str, Any] = {
    "name": "cart-reminder",
    "event_type": "cart_abandoned",
    "conditions": {
        "all": [
            {"type": "engagement_score", "config": {"min": 10}},
            {"type": "event_property", "config": {"property": "total", "op": "gt", "value": 50}},
        ]
    },
    "action": {"type": "send_template", "template": "welcome"},
    "cooldown": "12h",
    "priority": 5,
}


def test_api_creates_lists_shows_pauses_and_resumes(client: Any, template_id: int) -> None:
    created = client.post("/v1/triggers", json=DEFINITION)
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["cooldown"] == 43200
    assert body["action"] == {"type": "send_template", "template_id": template_id}
    trigger_id = body["id"]
    second = client.post("/v1/triggers", json={**DEFINITION, "name": "cart-2", "priority": 9})
    assert second.status_code == 201
    listed = client.get("/v1/triggers", params={"event_type": "cart_abandoned"}).json()
    assert [t["name"] for t in listed["triggers"]] == ["cart-2", "cart-reminder"]
    assert client.get(f"/v1/triggers/{trigger_id}").json()["name"] == "cart-reminder"
    paused = client.post(f"/v1/triggers/{trigger_id}/pause")
    assert paused.status_code == 200
    assert paused.json()["active"] is False
    assert client.post(f"/v1/triggers/{trigger_id}/resume").json()["active"] is True
    stats = client.get(f"/v1/triggers/{trigger_id}/stats").json()
    assert stats["counters"]["fired"] == 0
    assert set(stats["counters"]) >= {"matched", "fired", "cooldown", "capped", "exited", "errors"}


def test_api_rejects_an_invalid_definition_with_the_field(client: Any, template_id: int) -> None:
    bad = json.loads(json.dumps(DEFINITION))
    bad["conditions"]["all"][1]["config"]["op"] = "between"
    response = client.post("/v1/triggers", json=bad)
    assert response.status_code == 422
    assert response.json()["field"] == "conditions.all[1].config.op"
    response = client.post("/v1/triggers", json={**DEFINITION, "action": {"type": "send_sms"}})
    assert response.status_code == 422
    assert response.json()["field"] == "action.type"


def test_api_replace_and_delete(client: Any, template_id: int) -> None:
    trigger_id = client.post("/v1/triggers", json=DEFINITION).json()["id"]
    replaced = client.put(f"/v1/triggers/{trigger_id}", json={**DEFINITION, "priority": 1})
    assert replaced.status_code == 200
    assert replaced.json()["priority"] == 1
    assert client.delete(f"/v1/triggers/{trigger_id}").status_code == 204
    assert client.get(f"/v1/triggers/{trigger_id}").status_code == 404


def test_api_dry_run_says_which_condition_stopped_a_trigger(
    client: Any, template_id: int, make_contact: Callable[..., int]
) -> None:
    contact = make_contact(engagement_score=20)
    client.post("/v1/triggers", json=DEFINITION)
    event = {"type": "cart_abandoned", "contact_id": contact, "properties": {"total": 30}}
    result = client.post("/v1/triggers/test", json=event)
    assert result.status_code == 200, result.text
    verdict = result.json()["verdicts"][0]
    assert verdict["outcome"] == "stopped"
    assert verdict["condition"] == "conditions.all[1]"
    assert "event.total > 50" in verdict["detail"]
    event["properties"] = {"total": 80}
    assert client.post("/v1/triggers/test", json=event).json()["fires"] == ["cart-reminder"]


def test_api_requires_an_api_key(client: Any) -> None:
    response = client.get("/v1/triggers", headers={"Authorization": ""})
    assert response.status_code == 401


def _invoke(runtime: Runtime, *args: str) -> Any:
    return CliRunner().invoke(cli, list(args), obj={"runtime": runtime})


def test_cli_creates_from_yaml_and_json_and_lists(
    runtime: Runtime, template_id: int, tmp_path: Path
) -> None:
    yaml_file = tmp_path / "triggers.yaml"
    yaml_file.write_text(
        "- name: welcome-1\n"
        "  event_type: signup\n"
        "  action: {type: send_template, template: welcome}\n"
        "  conditions:\n"
        "    any:\n"
        "      - {type: contact_attribute, config: {attribute: plan, value: pro}}\n"
        "      - {type: engagement_score, config: {min: 50}}\n"
        "- name: welcome-2\n"
        "  event_type: signup\n"
        "  priority: 3\n"
        "  action: {type: send_template, template: welcome}\n"
    )
    result = _invoke(runtime, "triggers", "create", str(yaml_file))
    assert result.exit_code == 0, result.output
    assert "trigger 'welcome-1' saved" in result.output
    json_file = tmp_path / "one.json"
    json_file.write_text(json.dumps(DEFINITION))
    assert _invoke(runtime, "triggers", "create", str(json_file)).exit_code == 0
    listed = _invoke(runtime, "triggers", "list", "--json")
    names = [t["name"] for t in json.loads(listed.output)["triggers"]]
    assert names == ["cart-reminder", "welcome-2", "welcome-1"]
    shown = json.loads(_invoke(runtime, "triggers", "show", "welcome-2", "--json").output)
    assert shown["priority"] == 3


def test_cli_rejects_invalid_definitions_naming_the_field(
    runtime: Runtime, template_id: int, tmp_path: Path
) -> None:
    path = tmp_path / "bad.json"
    bad = {**DEFINITION, "conditions": [{"type": "time_window", "config": {"hours": -2}}]}
    path.write_text(json.dumps(bad))
    result = _invoke(runtime, "triggers", "create", str(path))
    assert isinstance(result.exception, ValidationError)
    assert str(result.exception) == "conditions.all[0].config.hours: must be > 0"


def test_cli_pause_resume_stats_and_dry_run(
    runtime: Runtime, template_id: int, tmp_path: Path, make_contact: Callable[..., int]
) -> None:
    contact = make_contact(engagement_score=3)
    path = tmp_path / "t.json"
    path.write_text(json.dumps(DEFINITION))
    _invoke(runtime, "triggers", "create", str(path))
    assert "paused" in _invoke(runtime, "triggers", "pause", "cart-reminder").output
    event_file = tmp_path / "event.json"
    event_file.write_text(
        json.dumps({"type": "cart_abandoned", "contact_id": contact, "properties": {"total": 99}})
    )
    paused = json.loads(_invoke(runtime, "triggers", "test", str(event_file), "--json").output)
    assert paused["verdicts"][0]["outcome"] == "paused"
    assert "resumed" in _invoke(runtime, "triggers", "resume", "cart-reminder").output
    text = _invoke(runtime, "triggers", "test", str(event_file)).output
    assert "cart-reminder" in text
    assert "engagement score >= 10" in text
    assert "[conditions.all[0]]" in text
    stats = json.loads(_invoke(runtime, "triggers", "stats", "--json").output)
    assert stats["triggers"][0]["counters"]["matched"] == 0
