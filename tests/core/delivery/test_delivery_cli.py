"""``postwise templates``, ``postwise campaigns`` and ``postwise bench send``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from delivery_helpers import add_contacts

from postwise.cli import cli
from postwise.runtime import Runtime
from postwise.settings import Settings
from postwise.testing.smtp import FaultySmtpServer

HTML = (
    '<p>Hi {{ first_name }}</p><a href="{{ unsubscribe_url }}">unsubscribe</a> {{ postal_address }}'
)


def _env(settings: Settings, **extra: Any) -> dict[str, str]:
    env = {
        "POSTWISE_DATA_DIR": str(settings.data_dir),
        "POSTWISE_DATABASE_URL": settings.resolved_database_url,
        "POSTWISE_REDIS_URL": settings.redis_url,
        "POSTWISE_SECRET_KEY": settings.secret_key.get_secret_value(),
        "POSTWISE_LOG_LEVEL": "WARNING",
    }
    env.update({f"POSTWISE_{k.upper()}": str(v) for k, v in extra.items()})
    return env


def _run(env: dict[str, str], *args: str) -> Any:
    return CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)


def test_templates_are_created_listed_previewed_and_versioned(
    settings: Settings, tmp_path: Path
) -> None:
    env = _env(settings)
    page = tmp_path / "page.html"
    page.write_text(HTML)
    created = _run(env, "templates", "create", "hello", "--subject", "Hi {{ first_name }}",
                   "--html", str(page), "--json")  # fmt: skip
    assert created.exit_code == 0, created.output
    template_id = json.loads(created.output)["id"]
    listed = _run(env, "templates", "list")
    assert "hello" in listed.output
    preview = _run(env, "templates", "preview", "hello", "--fields", '{"first_name": "Zoë"}')
    assert "Hi Zoë" in preview.output
    version = _run(env, "templates", "version", str(template_id), "--subject", "v2", "--html",
                   str(page))  # fmt: skip
    assert "version 2" in version.output
    bad = tmp_path / "bad.html"
    bad.write_text("<p>{% if %}</p>")
    refused = CliRunner().invoke(
        cli, ["templates", "create", "bad", "--subject", "x", "--html", str(bad)], env=env
    )
    assert refused.exit_code != 0


def test_a_campaign_is_sent_from_the_command_line_to_a_real_smtp_server(
    settings: Settings, tmp_path: Path, runtime: Runtime
) -> None:
    add_contacts(runtime, 5)
    page = tmp_path / "page.html"
    page.write_text(HTML)
    with FaultySmtpServer() as server:
        env = _env(settings, smtp_port=server.port, smtp_starttls="off")
        _run(env, "templates", "create", "hello", "--subject", "Hi", "--html", str(page))
        created = _run(env, "campaigns", "create", "launch", "--template", "hello", "--json")
        campaign_id = json.loads(created.output)["id"]
        sent = _run(env, "campaigns", "send", str(campaign_id), "--drain", "--json")
        assert sent.exit_code == 0, sent.output
        data = json.loads(sent.output)
        assert data["dispatch"]["queued"] == 5
        assert data["status"]["messages"] == {"accepted": 5}
        assert len(server.accepted) == 5
        status = _run(env, "campaigns", "status", str(campaign_id), "--json")
        assert json.loads(status.output)["status"] == "sent"


@pytest.mark.slow
def test_the_send_benchmark_reports_throughput_latency_and_memory(settings: Settings) -> None:
    env = _env(settings)
    # The embedded Redis runs one in-process worker; the report has the same shape.
    env["POSTWISE_REDIS_URL"] = "fakeredis://bench"
    env.pop("POSTWISE_DATABASE_URL")
    result = _run(env, "bench", "send", "--messages", "120", "--batch-size", "50", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["messages"] == 120
    assert report["sent"] == 120
    assert report["sink_received"] == 120
    assert report["messages_per_hour"] > 0
    assert set(report["batch_latency_ms"]) == {"p50", "p95", "p99", "max"}
    assert report["dkim"] == "rsa-sha256"
    assert report["cpu_ms_per_message"] > 0
