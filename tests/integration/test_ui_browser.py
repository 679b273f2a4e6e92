"""The web interface in a real browser: Debian's Chromium driven by Playwright.

A real server and a real delivery worker run as processes on this test's PostgreSQL or SQLite
database and Redis; mail goes to an SMTP server on loopback. The test signs in, creates a
template, a segment and a campaign, sends it and watches the progress reach 100%, opens the
experiment and contact pages, erases a contact, and on every page checks for console errors and
failed requests and runs axe-core's accessibility audit (no serious or critical violation).
Screenshots of every page go to ``test-artifacts/ui/``.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from postwise.db.models import Contact
from postwise.experiments.service import create_experiment
from postwise.runtime import Runtime
from postwise.testing.smtp import FaultySmtpServer
from postwise.ui.users import create_user

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
AXE = Path(
    os.environ.get("POSTWISE_AXE_JS", "/var/tmp/postwise-axe/node_modules/axe-core/axe.min.js")
)
ARTIFACTS = Path(__file__).parents[2] / "test-artifacts" / "ui"
PASSWORD = "correct horse battery staple"
HTML = (
    "<p>Hello {{ first_name }}, our spring collection is here.</p>"
    '<p><a href="https://www.example.com/spring">See it</a></p>'
    '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a> · {{ postal_address }}</p>'
)

pytestmark = pytest.mark.skipif(
    (CHROMIUM is None or not AXE.exists()) and not os.environ.get("POSTWISE_TEST_REQUIRE_ALL"),
    reason="Chromium and axe-core are not installed (run .ci/browser.sh)",
)


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def smtp() -> Iterator[FaultySmtpServer]:
    server = FaultySmtpServer()
    server.start()
    yield server
    server.stop()


@pytest.fixture
def site(
    tmp_path: Path, database_url: str, real_redis_url: str, runtime: Runtime, smtp: FaultySmtpServer
) -> Iterator[str]:
    """A server and a worker on this test's database and Redis; yields the base URL."""
    with runtime.session() as session:
        create_user(session, email="admin@example.org", password=PASSWORD, role="admin")
        for i in range(12):
            session.add(
                Contact(
                    email=f"reader{i}@example.org",
                    first_name=f"Reader{i}",
                    attributes={"plan": "pro" if i % 2 else "free"},
                )
            )
        session.commit()
        create_experiment(
            session,
            runtime,
            {
                "name": "subject test",
                "variants": [{"name": "A", "weight": 0.5}, {"name": "B", "weight": 0.5}],
                "metric": "click",
            },
        )
        session.commit()
    port = _port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTWISE_")}
    env.update(
        POSTWISE_MODE="development",
        POSTWISE_DATA_DIR=str(tmp_path),
        POSTWISE_DATABASE_URL=database_url,
        POSTWISE_REDIS_URL=real_redis_url,
        POSTWISE_SECRET_KEY=runtime.settings.secret_key.get_secret_value(),
        POSTWISE_SMTP_PORT=str(smtp.port),
        POSTWISE_SMTP_STARTTLS="off",
        POSTWISE_FREQUENCY_CAP="off",
        POSTWISE_LOG_LEVEL="WARNING",
    )
    base = f"http://127.0.0.1:{port}"
    server = subprocess.Popen(
        [sys.executable, "-m", "postwise.cli", "serve", "--no-migrate", "--port", str(port)],
        env=env,
    )
    worker = subprocess.Popen([sys.executable, "-m", "postwise.cli", "worker"], env=env)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/health/live", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.3)
        else:
            raise AssertionError("the server did not start")
        yield base
    finally:
        for process in (server, worker):
            process.send_signal(signal.SIGTERM)
        for process in (server, worker):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()


@pytest.fixture
def page(site: str) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
            ],
        )
        context = browser.new_context(base_url=site)
        tab = context.new_page()
        tab.problems = []
        tab.on("console", lambda m: m.type == "error" and tab.problems.append(f"console: {m.text}"))
        tab.on("requestfailed", lambda r: tab.problems.append(f"failed: {r.url}"))
        tab.on("pageerror", lambda e: tab.problems.append(f"page error: {e}"))
        yield tab
        browser.close()


def _check(page: Any, name: str) -> None:
    """No console error or failed request so far, no serious accessibility problem; a shot."""
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)
    assert page.problems == [], page.problems
    # Evaluated through the DevTools protocol: the pages' CSP (no inline script) stays on.
    if not page.evaluate("typeof axe !== 'undefined'"):
        page.evaluate(AXE.read_text())
    result = page.evaluate(
        "async () => (await axe.run(document, {runOnly: ['wcag2a', 'wcag2aa']})).violations"
        ".filter(v => ['serious', 'critical'].includes(v.impact))"
        ".map(v => v.id + ': ' + v.nodes.map(n => n.target.join(' ')).join(', '))"
    )
    assert result == [], f"{name}: {result}"


def test_a_marketer_signs_in_builds_and_sends_a_campaign_and_erases_a_contact(
    page: Any, smtp: FaultySmtpServer
) -> None:
    from playwright.sync_api import expect

    page.goto("/ui/")
    assert page.url.endswith("/ui/login?next=/ui")
    _check(page, "login")
    page.fill("input[name=email]", "admin@example.org")
    page.fill("input[name=password]", PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_selector("h1:text('Overview')")
    assert page.title() == "Overview · postwise"
    _check(page, "overview")

    page.goto("/ui/templates")
    page.fill("#t-name", "spring")
    page.fill("#t-subject", "Spring is here, {{ first_name }}")
    page.fill("#t-html", HTML)
    page.click("button[value=preview]")
    expect(page.locator("main")).to_contain_text("Spring is here, Ada")
    _check(page, "templates-preview")
    page.click("button[value=save]")
    page.wait_for_url("**/ui/templates/*")
    _check(page, "template")

    page.goto("/ui/segments")
    page.fill("#s-name", "pro")
    page.fill("#s-field", "attributes.plan")
    page.select_option("#s-op", "eq")
    page.fill("#s-value", "pro")
    expect(page.locator("[data-count]")).to_have_text("6 contacts match", timeout=15_000)
    page.click("form[data-count-url] button[type=submit]")
    page.wait_for_url("**/ui/segments")
    _check(page, "segments")

    page.goto("/ui/campaigns")
    page.fill("#c-name", "spring launch")
    page.select_option("#c-template", label="spring")
    page.select_option("#c-segment", label="pro")
    page.click("form[action='/ui/campaigns'] button[type=submit]")
    page.wait_for_url("**/ui/campaigns/*")
    expect(page.locator("main")).to_contain_text("This sends to 6 contacts")
    _check(page, "campaign-draft")
    page.check("input[name=confirm]")
    page.click("text=Send now")
    expect(page.locator("[data-progress-text]")).to_have_text(
        re.compile(r"^100% · 6 sent"), timeout=60_000
    )
    assert len(smtp.accepted) == 6
    expect(page.locator("main p strong").first).to_have_text("sent", timeout=30_000)
    assert "Send now" not in page.content()
    _check(page, "campaign-sent")

    for path, name in (
        ("/ui/campaigns", "campaigns"),
        ("/ui/triggers", "triggers"),
        ("/ui/experiments", "experiments"),
        ("/ui/deliverability", "deliverability"),
        ("/ui/crm", "crm"),
        ("/ui/users", "users"),
    ):
        page.goto(path)
        _check(page, name)
    page.goto("/ui/experiments")
    page.click("text=subject test")
    _check(page, "experiment")

    page.goto("/ui/contacts?q=reader3")
    page.click("text=reader3@example.org")
    _check(page, "contact")
    page.fill("#erase-confirm", "reader3@example.org")
    page.click("text=Erase this contact")
    expect(page.locator("h1")).to_have_text("Contact erased")
    page.goto("/ui/contacts?q=reader3")
    expect(page.locator("main")).to_contain_text("No contact matches.")
