"""Public tracking endpoints: open pixel, click redirect, one-click unsubscribe (RFC 8058)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from analytics_helpers import add_contacts, add_message, sign, stream_entries
from sqlmodel import select

from postwise.analytics.bots import classify_click, classify_open
from postwise.analytics.tracking import TRANSPARENT_GIF
from postwise.db.models import ConsentRecord, Contact
from postwise.events import EVENT_STREAM, decode_event
from postwise.runtime import Runtime
from postwise.tokens import Purpose

BROWSER = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 Chrome/126.0 Safari/537.36"


def published(runtime: Runtime) -> list[Any]:
    return [decode_event(fields) for _, fields in stream_entries(runtime, EVENT_STREAM)]


@pytest.fixture
def public(client: Any) -> Any:
    """The test client without an API key: tracking endpoints need none."""
    client.headers.pop("Authorization")
    return client


@pytest.fixture
def message(runtime: Runtime) -> tuple[str, int]:
    [contact_id] = add_contacts(runtime, "reader@mail.example.net")
    add_message(runtime, "msg-1", contact_id, experiment_id=3, variant="a", provider="smtp")
    return "msg-1", contact_id


def test_the_open_pixel_is_an_uncached_gif_and_records_an_open(
    public: Any, runtime: Runtime, message: tuple[str, int]
) -> None:
    token = sign(runtime.settings, Purpose.OPEN, {"m": message[0]})
    response = public.get(f"/t/o/{token}.gif", headers={"User-Agent": BROWSER})
    assert response.status_code == 200
    assert response.content == TRANSPARENT_GIF
    assert response.headers["content-type"] == "image/gif"
    assert "no-store" in response.headers["cache-control"]
    assert "set-cookie" not in response.headers
    [event] = published(runtime)
    assert (event.type, event.message_id, event.contact_id) == ("open", "msg-1", message[1])
    assert (event.experiment_id, event.variant, event.provider) == (3, "a", "smtp")
    assert event.properties == {"recipient_domain": "mail.example.net"}


def test_an_apple_privacy_proxy_open_is_flagged_as_a_machine_open(
    public: Any, runtime: Runtime, message: tuple[str, int]
) -> None:
    token = sign(runtime.settings, Purpose.OPEN, {"m": message[0]})
    public.get(f"/t/o/{token}.gif", headers={"User-Agent": "Mozilla/5.0"})
    [event] = published(runtime)
    assert event.properties["machine_open"] is True
    assert event.properties["machine_reason"] == "apple_mpp"


def test_a_bad_open_token_still_gets_the_image_but_records_nothing(
    public: Any, runtime: Runtime
) -> None:
    response = public.get("/t/o/not-a-token.gif")
    assert response.status_code == 200
    assert response.content == TRANSPARENT_GIF
    assert published(runtime) == []


def test_a_click_redirects_to_the_signed_url_and_records_the_link(
    public: Any, runtime: Runtime, message: tuple[str, int]
) -> None:
    url = "https://shop.example.com/item?id=7&ref=mail"
    token = sign(runtime.settings, Purpose.CLICK, {"m": message[0], "u": url})
    response = public.get(f"/t/c/{token}", headers={"User-Agent": BROWSER}, follow_redirects=False)
    assert response.status_code == 302
    assert response.headers["location"] == url
    [event] = published(runtime)
    assert (event.type, event.message_id, event.contact_id) == ("click", "msg-1", message[1])
    assert event.properties["url"] == url
    assert "scanner" not in event.properties


@pytest.mark.parametrize(
    "mangle",
    [
        lambda t: t[:-2] + ("AA" if not t.endswith("AA") else "BB"),  # tampered signature
        lambda t: t[:10] + "x" + t[11:],  # tampered payload
        lambda t: "unsigned",
        lambda t: "",
    ],
)
def test_a_tampered_or_unsigned_click_link_is_a_404_that_redirects_nowhere(
    public: Any, runtime: Runtime, message: tuple[str, int], mangle: Any
) -> None:
    token = sign(runtime.settings, Purpose.CLICK, {"m": message[0], "u": "https://example.com/"})
    response = public.get(f"/t/c/{mangle(token)}", follow_redirects=False)
    assert response.status_code == 404
    assert "location" not in response.headers
    assert published(runtime) == []


def test_an_expired_click_link_is_a_404(
    public: Any, runtime: Runtime, message: tuple[str, int]
) -> None:
    from postwise import tokens

    token = tokens.sign(
        Purpose.CLICK,
        {"m": message[0], "u": "https://example.com/"},
        key=runtime.settings.signing_keys()[0],
        ttl=60,
        now=datetime.now(UTC).timestamp() - 3600,
    )
    response = public.get(f"/t/c/{token}", follow_redirects=False)
    assert response.status_code == 404
    assert "location" not in response.headers


def test_an_open_token_is_not_accepted_as_a_click(
    public: Any, runtime: Runtime, message: tuple[str, int]
) -> None:
    token = sign(runtime.settings, Purpose.OPEN, {"m": message[0], "u": "https://evil.example/"})
    assert public.get(f"/t/c/{token}", follow_redirects=False).status_code == 404


def test_a_signed_link_to_a_non_web_url_is_refused(
    public: Any, runtime: Runtime, message: tuple[str, int]
) -> None:
    token = sign(runtime.settings, Purpose.CLICK, {"m": message[0], "u": "javascript:alert(1)"})
    assert public.get(f"/t/c/{token}", follow_redirects=False).status_code == 404


def test_a_click_on_delivery_is_flagged_as_a_scanner(public: Any, runtime: Runtime) -> None:
    [contact_id] = add_contacts(runtime, "fresh@example.com")
    add_message(runtime, "msg-new", contact_id, sent_at=datetime.now(UTC))
    token = sign(runtime.settings, Purpose.CLICK, {"m": "msg-new", "u": "https://example.com/"})
    public.get(f"/t/c/{token}", headers={"User-Agent": BROWSER}, follow_redirects=False)
    [event] = published(runtime)
    assert event.properties["scanner"] is True
    assert event.properties["scanner_reason"] == "on_delivery"


def test_every_link_of_a_message_clicked_at_once_is_a_scanner(
    public: Any, runtime: Runtime, message: tuple[str, int]
) -> None:
    for n in range(4):
        url = f"https://example.com/{n}"
        token = sign(runtime.settings, Purpose.CLICK, {"m": message[0], "u": url})
        public.get(f"/t/c/{token}", headers={"User-Agent": BROWSER}, follow_redirects=False)
    flags = [e.properties.get("scanner_reason") for e in published(runtime)]
    assert flags == [None, None, "burst", "burst"]


def _consent_rows(runtime: Runtime, contact_id: int) -> list[ConsentRecord]:
    with runtime.session() as session:
        return list(
            session.exec(select(ConsentRecord).where(ConsentRecord.contact_id == contact_id))
        )


def test_the_unsubscribe_page_confirms_with_a_button_and_changes_nothing(
    public: Any, runtime: Runtime, message: tuple[str, int]
) -> None:
    token = sign(runtime.settings, Purpose.UNSUBSCRIBE, {"c": message[1], "m": message[0]})
    response = public.get(f"/u/{token}")
    assert response.status_code == 200
    assert '<form method="post">' in response.text
    assert "<button" in response.text
    assert "set-cookie" not in response.headers
    with runtime.session() as session:
        contact = session.get(Contact, message[1])
        assert contact is not None
        assert contact.status == "active"
    assert _consent_rows(runtime, message[1]) == []
    assert published(runtime) == []


def test_one_click_post_unsubscribes_without_cookies_and_is_idempotent(
    public: Any, runtime: Runtime, message: tuple[str, int]
) -> None:
    token = sign(runtime.settings, Purpose.UNSUBSCRIBE, {"c": message[1], "m": message[0]})
    for _ in range(2):
        response = public.post(
            f"/u/{token}",
            content=b"List-Unsubscribe=One-Click",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert response.status_code == 200
        assert "set-cookie" not in response.headers
    with runtime.session() as session:
        contact = session.get(Contact, message[1])
        assert contact is not None
        assert contact.status == "unsubscribed"
    withdrawals = [r for r in _consent_rows(runtime, message[1]) if not r.granted]
    assert len(withdrawals) == 1
    assert withdrawals[0].source == "one-click"
    [event] = published(runtime)
    assert (event.type, event.contact_id, event.message_id) == ("unsubscribe", message[1], "msg-1")


def test_a_tampered_unsubscribe_token_is_a_404_on_get_and_post(
    public: Any, runtime: Runtime, message: tuple[str, int]
) -> None:
    token = sign(runtime.settings, Purpose.UNSUBSCRIBE, {"c": message[1]})
    bad = token[:-3] + "xyz"
    assert public.get(f"/u/{bad}").status_code == 404
    assert public.post(f"/u/{bad}", content=b"List-Unsubscribe=One-Click").status_code == 404
    with runtime.session() as session:
        contact = session.get(Contact, message[1])
        assert contact is not None
        assert contact.status == "active"


def test_open_classification_rules() -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    sent = now - timedelta(seconds=5)
    assert classify_open(BROWSER, "203.0.113.9", sent_at=sent, now=now) is None
    assert classify_open(BROWSER, "17.58.1.2", sent_at=sent, now=now) == "apple_mpp"
    assert classify_open(BROWSER, "::ffff:17.1.2.3", sent_at=sent, now=now) == "apple_mpp"
    proxy = (
        "Mozilla/5.0 (Windows NT 5.1; rv:11.0) Gecko Firefox/11.0 (via ggpht.com GoogleImageProxy)"
    )
    assert classify_open(proxy, None, sent_at=sent, now=now) == "proxy_prefetch"
    assert classify_open(proxy, None, sent_at=now - timedelta(hours=2), now=now) is None
    assert classify_open("python-requests/2.31", None, sent_at=None, now=now) == "automation"
    assert classify_open(None, None, sent_at=None, now=now) == "automation"


def test_click_classification_rules() -> None:
    now = datetime(2025, 1, 1, tzinfo=UTC)
    long_ago = now - timedelta(hours=1)
    assert classify_click(BROWSER, sent_at=long_ago, now=now) is None
    assert classify_click(BROWSER, sent_at=now - timedelta(seconds=1), now=now) == "on_delivery"
    assert classify_click("Mimecast URL check", sent_at=long_ago, now=now) == "scanner_agent"
    assert classify_click("curl/8.1", sent_at=long_ago, now=now) == "automation"
    assert classify_click(BROWSER, sent_at=long_ago, now=now, burst=True) == "burst"
