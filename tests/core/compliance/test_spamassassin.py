"""Deliverability in CI: example mail, rendered for real, scores below 1.0 in SpamAssassin and
carries a DKIM signature that dkimpy verifies, covering both List-Unsubscribe headers.

Scoring uses local rules only (``spamassassin -L -t``): network tests (DNS blocklists, Razor)
would make the score depend on the day. ``.ci/spamassassin.sh`` installs Debian's package.
"""

from __future__ import annotations

import mailbox
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import dkim
import pytest

from postwise.content import TemplateCache, TemplateSource, TrackingConfig
from postwise.delivery.dkim import DkimSigner, generate_key
from postwise.delivery.message import Mailbox, build_message
from postwise.devtools.demo import run_demo
from postwise.settings import Settings

pytestmark = pytest.mark.spamassassin

ROOT = Path(__file__).resolve().parents[3]
MAX_SCORE = 1.0
_STATUS = re.compile(r"score=(-?\d+(?:\.\d+)?)\b.*?tests=(.*?)(?:\s+autolearn=|\s+version=|$)")


@pytest.fixture(scope="module")
def spamassassin() -> str:
    found = shutil.which("spamassassin")
    if found is None:
        if os.environ.get("POSTWISE_TEST_REQUIRE_ALL"):
            pytest.fail("spamassassin is not installed; .ci/spamassassin.sh installs it")
        pytest.skip("spamassassin is not installed (run .ci/spamassassin.sh)")
    return found


def score(command: str, messages: list[bytes], tmp_path: Path) -> list[tuple[float, str]]:
    """(score, rules hit) for each message, from one ``spamassassin -L -t --mbox`` run."""
    box = tmp_path / "in.mbox"
    with box.open("wb") as out:
        for raw in messages:
            body = raw.replace(b"\r\n", b"\n").replace(b"\nFrom ", b"\n>From ")
            out.write(b"From postwise@example.com Thu Jan  1 00:00:00 2026\n" + body + b"\n")
    with box.open("rb") as stdin:
        result = subprocess.run(
            [command, "-L", "-t", "--mbox"],
            stdin=stdin,
            capture_output=True,
            timeout=300,
            check=True,
        )
    scored = tmp_path / "out.mbox"
    scored.write_bytes(result.stdout)
    found = []
    for message in mailbox.mbox(scored):
        status = " ".join(str(message.get("X-Spam-Status", "")).split())
        match = _STATUS.search(status)
        assert match, f"no X-Spam-Status in SpamAssassin's output: {status!r}"
        found.append((float(match.group(1)), match.group(2)))
    assert len(found) == len(messages)
    return found


def verify_dkim(raw: bytes, dns_record: str) -> list[str]:
    """Verify ``raw`` with dkimpy against ``dns_record``; returns the signed header names."""

    def dns(_name: bytes, timeout: int = 5) -> bytes:
        return dns_record.encode()

    assert dkim.verify(raw, dnsfunc=dns), "dkimpy rejected the DKIM signature"
    header = raw.split(b"\r\n\r\n", 1)[0].decode()
    signature = re.search(r"^DKIM-Signature:(.*?)(?=\r\n\S)", header, re.M | re.S)
    assert signature is not None
    pairs = re.sub(r"\s+", "", signature.group(1)).split(";")
    tags = {k: v for k, _, v in (t.partition("=") for t in pairs)}
    return tags["h"].lower().split(":")


def test_the_scorer_notices_spam(spamassassin: str, tmp_path: Path) -> None:
    spam = build_message(
        sender=Mailbox("winner@example.com", "WINNER"),
        recipient="you@example.net",
        subject="FREE MONEY!!! 100% GUARANTEED - ACT NOW",
        text="CLICK HERE TO CLAIM YOUR FREE PRIZE!!! $$$ 100% FREE, NO RISK, "
        "BUY VIAGRA CHEAP, WIN CASH NOW, CREDIT CARD REQUIRED !!!\n" * 5,
        html="<html><body><font size=7 color=red>FREE $$$ CLICK HERE</font>"
        "<img src='http://example.com/x.gif'></body></html>",
        message_id="spam-1",
    )
    [(points, rules)] = score(spamassassin, [spam], tmp_path)
    assert points >= MAX_SCORE, rules


@pytest.fixture(scope="module")
def demo_messages(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[bytes], str]:
    """The delivery demo's campaign, sent through the real pipeline to the SMTP sink."""
    base = tmp_path_factory.mktemp("demo")
    from postwise.settings import load_settings

    settings = load_settings(
        environ={},
        config_file=None,
        data_dir=base / "data",
        secret_key="spamassassin-test-key-0123456789",
        base_url="https://mail.example.com",
    )
    result = run_demo(settings, contacts=24, outbox=base / "outbox")
    assert result.sent > 0
    key = (base / "data" / "demo" / "dkim-rsa.pem").read_bytes()
    record = DkimSigner("demo", "example.com", key).dns_record()
    return [p.read_bytes() for p in sorted((base / "outbox").glob("*.eml"))], record


def test_demo_campaign_messages_score_below_one(
    spamassassin: str, demo_messages: tuple[list[bytes], str], tmp_path: Path
) -> None:
    messages, _record = demo_messages
    scores = score(spamassassin, messages, tmp_path)
    worst = max(scores)
    assert worst[0] < MAX_SCORE, f"demo template scores {worst[0]} ({worst[1]})"


def test_demo_campaign_messages_are_signed_over_both_unsubscribe_headers(
    demo_messages: tuple[list[bytes], str],
) -> None:
    messages, record = demo_messages
    for raw in messages:
        assert b"\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in raw
        signed = verify_dkim(raw, record)
        assert {"list-unsubscribe", "list-unsubscribe-post", "from"} <= set(signed)


def _example_templates() -> list[Path]:
    return sorted((ROOT / "examples").glob("**/*.html"))


def render_example(path: Path) -> tuple[bytes, str]:
    """``path`` (with an optional sibling ``.txt``) rendered, built and DKIM-signed for a
    sample contact, through the same functions the send path uses."""
    html = path.read_text()
    text_path = path.with_suffix(".txt")
    text = text_path.read_text() if text_path.exists() else None
    title = re.search(r"<title>(.*?)</title>", html, re.S | re.I)
    subject = title.group(1).strip() if title else path.stem.replace("-", " ").capitalize()
    key = generate_key("rsa-sha256")
    signer = DkimSigner("postwise", "example.com", key.private_key_pem)
    unsubscribe = "https://mail.example.com/u/sample-token"
    contact: dict[str, Any] = {
        "id": 1,
        "email": "ann@example.net",
        "first_name": "Ann",
        "last_name": "Example",
        "postal_address": Settings().postal_address,
    }
    compiled = TemplateCache().get(
        TemplateSource(id=str(path), version=1, subject=subject, html=html, text=text)
    )
    content = compiled.render(
        contact,
        message_id="example-1",
        unsubscribe_url=unsubscribe,
        tracking=TrackingConfig("https://mail.example.com", b"example-signing-key-0123456789"),
    )
    raw = build_message(
        sender=Mailbox("news@example.com", "Example News"),
        recipient=Mailbox("ann@example.net", "Ann Example"),
        subject=content.subject,
        text=content.text,
        html=content.html,
        message_id="example-1",
        unsubscribe_url=unsubscribe,
        unsubscribe_mailto="unsubscribe@example.com",
    )
    return signer.sign(raw), key.dns_record


@pytest.fixture(params=_example_templates(), ids=lambda p: str(p.relative_to(ROOT)))
def example(request: pytest.FixtureRequest) -> tuple[bytes, str]:
    return render_example(request.param)


def test_example_templates_score_below_one_and_verify(
    spamassassin: str, example: tuple[bytes, str], tmp_path: Path
) -> None:
    raw, record = example
    [(points, rules)] = score(spamassassin, [raw], tmp_path)
    assert points < MAX_SCORE, rules
    assert {"list-unsubscribe", "list-unsubscribe-post"} <= set(verify_dkim(raw, record))
