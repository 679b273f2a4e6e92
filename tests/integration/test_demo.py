"""``postwise demo`` on the embedded defaults, as a new user runs it: twice, from nothing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from email import message_from_bytes, policy
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow


def _demo(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTWISE_")}
    env["POSTWISE_DATA_DIR"] = str(home / "data")
    code = "from postwise.cli import main; import sys; main(sys.argv[1:])"
    return subprocess.run(
        [sys.executable, "-c", code, "demo", *args],
        env=env,
        cwd=home,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_demo_sends_a_campaign_and_summarises_it_as_json(tmp_path: Path) -> None:
    first = _demo(tmp_path, "--json", "--contacts", "300")
    assert first.returncode == 0, first.stderr
    summary: dict[str, Any] = json.loads(first.stdout)
    assert {"sent", "skipped", "failed", "outbox"} <= set(summary)
    assert summary["audience"] == 300
    assert summary["sent"] + sum(summary["skipped"].values()) + summary["failed"] == 300
    assert summary["sent"] > 200
    assert summary["failed"] == 0
    # The seeded contacts exercise the gate: several reasons, each counted.
    assert {"unsubscribed", "bounced", "no_consent"} <= set(summary["skipped"])
    outbox = Path(summary["outbox"])
    files = sorted(outbox.glob("*.eml"))
    assert len(files) == summary["sent"]
    message = message_from_bytes(files[0].read_bytes(), policy=policy.default)
    assert message["DKIM-Signature"]
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    html = message.get_body(("html",)).get_content()
    assert "https://cdn.example.com/img/banner.png" in html
    assert "/t/c/" in html  # tracked links

    second = _demo(tmp_path, "--json", "--contacts", "300")
    assert second.returncode == 0, second.stderr
    again = json.loads(second.stdout)
    assert again["campaign_id"] == summary["campaign_id"] + 1
    assert again["sent"] == summary["sent"]
    assert len(list(outbox.glob("*.eml"))) == 2 * summary["sent"]


def test_the_demo_prints_a_summary_with_a_progress_bar(tmp_path: Path) -> None:
    result = _demo(tmp_path, "--contacts", "50", "--outbox", str(tmp_path / "mail"))
    assert result.returncode == 0, result.stderr
    assert "sending" in result.stdout
    assert "skipped" in result.stdout
    assert str(tmp_path / "mail") in result.stdout.replace("\n", "")
