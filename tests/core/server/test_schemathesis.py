"""Schemathesis against the live server: every operation, every check, zero failures.

The server runs as ``postwise serve`` on a loopback port with this test's database and Redis
(PostgreSQL and Redis in CI), seeded with one object of each kind so that ids the generator
tries (1 is a boundary value) reach real objects. Schemathesis runs its examples, coverage,
fuzzing and stateful phases with ``--checks all``: no 5xx, no response off its schema, no
undocumented status code or content type, every schema-valid request accepted, every invalid
one refused. The run is bounded by ``--max-examples`` and ``--max-time`` (about a minute on
the 2-core test machine). ``POSTWISE_SCHEMATHESIS_EXAMPLES`` raises the examples for a longer
run by hand.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from postwise.apikeys import create_api_key
from postwise.runtime import Runtime
from postwise.settings import Settings

HERE = Path(__file__).parent
EXAMPLES = int(os.environ.get("POSTWISE_SCHEMATHESIS_EXAMPLES", "12"))
MAX_SECONDS = int(os.environ.get("POSTWISE_SCHEMATHESIS_SECONDS", "200"))


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@pytest.fixture
def live_server(settings: Settings, tmp_path: Path) -> Iterator[str]:
    port = _free_port()
    env = {
        **os.environ,
        "POSTWISE_DATABASE_URL": settings.database_url,
        "POSTWISE_REDIS_URL": settings.redis_url,
        "POSTWISE_DATA_DIR": str(tmp_path / "server-data"),
        "POSTWISE_SECRET_KEY": "schemathesis-secret-key-not-for-production",
        "POSTWISE_MODE": "development",
    }
    command = [sys.executable, "-c", "from postwise.cli import main; main()", "serve"]
    log = (tmp_path / "server.log").open("wb")
    server = subprocess.Popen(
        [*command, "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        cwd=tmp_path,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{base}/health/live", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if server.poll() is not None or time.monotonic() > deadline:
                raise AssertionError((tmp_path / "server.log").read_text()[-3000:])
            time.sleep(0.3)
        yield base
    finally:
        server.terminate()
        try:
            server.wait(timeout=20)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        log.close()
        errors = [
            line
            for line in (tmp_path / "server.log").read_text().splitlines()
            if "Traceback" in line or "unhandled error" in line
        ]
        assert not errors, "the server logged errors: " + "\n".join(errors[:20])


def _seed(base: str, key: str) -> None:
    """One object of each kind, so generated ids (1 is a boundary value) reach real ones."""
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=base, headers=headers, timeout=30) as client:
        for path, body in [
            ("/v1/contacts", {"email": "ann@example.com", "first_name": "Ann", "tags": ["vip"]}),
            ("/v1/segments", {"name": "vips", "rules": {"tag": "vip"}}),
            (
                "/v1/templates",
                {
                    "name": "welcome",
                    "subject": "Hello {{ first_name }}",
                    "html": "<p>Hi {{ first_name }}</p><p>{{ postal_address }}</p>"
                    '<a href="{{ unsubscribe_url }}">Unsubscribe</a>',
                    "text": "Hi {{ first_name }}\n{{ postal_address }}\n{{ unsubscribe_url }}",
                },
            ),
            ("/v1/campaigns", {"name": "launch", "template_id": 1, "segment": "vips"}),
            ("/v1/suppressions", {"email": "gone@example.com"}),
        ]:
            response = client.post(path, json=body)
            assert response.status_code < 300, (path, response.text)


def _run_schemathesis(
    base: str, key: str, report: Path, workdir: Path
) -> subprocess.CompletedProcess[str]:
    executable = shutil.which("schemathesis") or shutil.which("st")
    assert executable, "schemathesis is not installed (pip install -r requirements-test.txt)"
    command = [
        executable,
        "--config-file",
        str(HERE / "schemathesis.toml"),
        "run",
        f"{base}/schema/openapi.json",
        "--checks",
        "all",
        "--header",
        f"Authorization: Bearer {key}",
        "--max-examples",
        str(EXAMPLES),
        "--max-time",
        str(MAX_SECONDS),
        "--seed",
        "1",
        "--workers",
        "1",
        "--report",
        "junit",
        "--report-junit-path",
        str(report),
        "--warnings",
        "off",
        "--no-color",
    ]
    return subprocess.run(
        command,
        check=False,
        capture_output=True,
        text=True,
        timeout=MAX_SECONDS + 120,
        cwd=workdir,  # schemathesis keeps a cache of crashes in .schemathesis/ there
    )


def _junit_figures(report: Path) -> dict[str, Any]:
    root = ET.parse(report).getroot()
    cases = root.iter("testcase")
    failed = [c.get("name", "?") for c in cases if c.find("failure") is not None]
    return {
        "operations": sum(1 for _ in root.iter("testcase")),
        "failed_operations": failed,
    }


def test_schemathesis_finds_nothing_over_every_operation(
    live_server: str, runtime: Runtime, tmp_path: Path
) -> None:
    with runtime.session() as session:
        key = create_api_key(session, "schemathesis").key
    _seed(live_server, key)
    document = httpx.get(f"{live_server}/schema/openapi.json").json()
    operations = [
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in item
        if method in ("get", "put", "post", "delete", "patch", "head")
    ]
    # Every built-in subsystem's routes are there (a plugin that failed to load would hide its
    # operations from the run).
    for path in ("/v1/events", "/v1/metrics/open-rate", "/t/c/{token}", "/u/{token}"):
        assert path in document["paths"], path
    report = tmp_path / "junit.xml"
    result = _run_schemathesis(live_server, key, report, tmp_path)
    summary = result.stdout[result.stdout.rfind("SUMMARY") :]
    figures = _junit_figures(report)
    print(f"schemathesis: {len(operations)} operations", figures, summary, sep="\n")
    (tmp_path / "schemathesis.txt").write_text(result.stdout)
    # One line per failure (the full output, with curl commands to reproduce, is long).
    lines = [
        line[:300]
        for line in result.stdout.splitlines()
        if line.startswith(("___", "- ST", "[", "    `{", "    Invalid component"))
    ]
    assert result.returncode == 0, "\n".join(lines[:200]) + "\n" + summary[-3000:]
    assert not figures["failed_operations"]
