from __future__ import annotations

import email
import email.policy
import re
from datetime import UTC, datetime
from email.header import decode_header
from email.message import EmailMessage
from email.utils import parseaddr
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from postwise.content import TemplateCache, TemplateSource
from postwise.delivery.message import Mailbox, build_message, sanitise_header_text
from postwise.errors import ValidationError

UNSUB = "https://t.example.com/u/AbC123_-"
WHEN = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)

BASE_HEADERS = [
    "Date",
    "From",
    "To",
    "Subject",
    "Message-ID",
    "MIME-Version",
    "List-Unsubscribe",
    "List-Unsubscribe-Post",
    "X-Postwise-Message-Id",
    "Content-Type",
]


def build(**overrides: Any) -> bytes:
    args: dict[str, Any] = {
        "sender": Mailbox("news@example.com", "Example News"),
        "recipient": Mailbox("ann@example.org", "Ann Example"),
        "subject": "Hello Ann",
        "text": "Hello Ann\nSee you.\n",
        "html": "<p>Hello Ann</p>\n<p>See you.</p>\n",
        "message_id": "c12.v3.4567",
        "unsubscribe_url": UNSUB,
        "unsubscribe_mailto": "unsubscribe@example.com",
        "date": WHEN,
    }
    args.update(overrides)
    return build_message(**args)


def parse(raw: bytes) -> EmailMessage:
    message = email.message_from_bytes(raw, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    return message


def assert_wire_safe(raw: bytes) -> None:
    assert b"\n" not in raw.replace(b"\r\n", b""), "bare LF"
    assert b"\r" not in raw.replace(b"\r\n", b""), "bare CR"
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998


def raw_header(raw: bytes, name: str) -> str:
    head = raw.split(b"\r\n\r\n", 1)[0].decode("ascii")
    match = re.search(rf"^{re.escape(name)}: ?([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)", head, re.MULTILINE)
    assert match, name
    return match.group(1)


def decoded_mailbox(raw: bytes, name: str) -> tuple[str, str]:
    """Display name and address, decoded the way RFC 2047 section 6.2 says."""
    value = raw_header(raw, name).replace("\r\n", "")
    if "=?" not in value:
        return parseaddr(value)
    parts = decode_header(value)
    display = "".join(data.decode(charset) for data, charset in parts if charset)
    address = [data for data, charset in parts if not charset][-1].decode().strip()
    return display, address.strip("<>")


def body_text(message: EmailMessage, subtype: str) -> str:
    part = message.get_body((subtype,))
    assert part is not None
    content = part.get_content()
    assert isinstance(content, str)
    # The parser hands 7bit parts back with their wire (CRLF) line endings.
    return content.replace("\r\n", "\n")


def normalised(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


def wire_text(text: str) -> str:
    """``text`` as a body carries it: normalised line ends, unencodable surrogates as "?"."""
    return normalised(text).encode("utf-8", "replace").decode()


def test_a_message_parses_back_with_every_expected_header_and_both_parts() -> None:
    raw = build()
    message = parse(raw)

    assert list(message.keys()) == BASE_HEADERS
    assert message["From"] == "Example News <news@example.com>"
    assert message["To"] == "Ann Example <ann@example.org>"
    assert message["Subject"] == "Hello Ann"
    assert message["Message-ID"] == "<c12.v3.4567@example.com>"
    assert message["MIME-Version"] == "1.0"
    assert message["Date"].datetime == WHEN
    assert message["List-Unsubscribe"] == f"<{UNSUB}>, <mailto:unsubscribe@example.com>"
    assert message["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["X-Postwise-Message-Id"] == "c12.v3.4567"
    assert message.get_content_type() == "multipart/alternative"
    assert [p.get_content_type() for p in message.iter_parts()] == ["text/plain", "text/html"]
    assert body_text(message, "plain") == "Hello Ann\nSee you.\n"
    assert body_text(message, "html") == "<p>Hello Ann</p>\n<p>See you.</p>\n"
    assert_wire_safe(raw)


def test_reply_to_and_extra_headers_are_added_when_given() -> None:
    raw = build(
        reply_to=Mailbox("support@example.com", "Support"),
        headers={"Feedback-ID": "c12:v3:postwise", "X-Campaign": "Spring \u2013 sale"},
    )
    message = parse(raw)

    assert message["Reply-To"] == "Support <support@example.com>"
    assert message["Feedback-ID"] == "c12:v3:postwise"
    assert message["X-Campaign"] == "Spring \u2013 sale"


def test_a_message_without_html_is_a_single_text_part() -> None:
    message = parse(build(html=None, text="Only text\n"))

    assert message.get_content_type() == "text/plain"
    assert message.get_content_charset() == "utf-8"
    assert message.get_content().replace("\r\n", "\n") == "Only text\n"


def test_only_a_mailto_unsubscribe_gets_no_one_click_header() -> None:
    message = parse(
        build(unsubscribe_url=None, unsubscribe_mailto="mailto:u@example.com?subject=x")
    )

    assert message["List-Unsubscribe"] == "<mailto:u@example.com?subject=x>"
    assert "List-Unsubscribe-Post" not in message


def test_non_ascii_subjects_and_names_are_encoded_words_that_decode_back() -> None:
    raw = build(
        subject="Grüße, Zoë — ваш заказ 🎉",
        sender=Mailbox("news@example.com", "Café Ünïcode"),
        recipient=Mailbox("zoe@exämple.de", "Zoë O'Brien, Sales"),
    )
    head = raw.split(b"\r\n\r\n", 1)[0]

    assert head.isascii()
    assert parse(raw)["Subject"] == "Grüße, Zoë — ваш заказ 🎉"
    assert decoded_mailbox(raw, "From") == ("Café Ünïcode", "news@example.com")
    assert decoded_mailbox(raw, "To") == ("Zoë O'Brien, Sales", "zoe@xn--exmple-cua.de")


def test_ascii_names_with_specials_are_quoted() -> None:
    raw = build(recipient=Mailbox("ann@example.org", 'Ann "The Boss" Smith, Jr.'))

    assert raw_header(raw, "To") == '"Ann \\"The Boss\\" Smith, Jr." <ann@example.org>'
    assert parse(raw)["To"].addresses[0].display_name == 'Ann "The Boss" Smith, Jr.'


def test_line_breaks_in_a_subject_never_create_a_header() -> None:
    raw = build(subject="Hi\r\nBcc: victim@example.net\nX-Evil: 1\rContent-Type: text/evil")
    message = parse(raw)

    assert list(message.keys()) == BASE_HEADERS
    assert message["Subject"] == "Hi Bcc: victim@example.net X-Evil: 1 Content-Type: text/evil"


def test_line_breaks_in_display_names_never_create_a_header() -> None:
    raw = build(recipient=Mailbox("ann@example.org", "Ann\r\nBcc: victim@example.net"))

    assert list(parse(raw).keys()) == BASE_HEADERS
    assert decoded_mailbox(raw, "To") == ("Ann Bcc: victim@example.net", "ann@example.org")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("recipient", "ann@example.org\r\nBcc: victim@example.net"),
        ("recipient", "ann@example.org\n"),
        ("sender", "news@example.com\x00"),
        ("recipient", "not-an-address"),
        ("recipient", "ännä@example.org"),
        ("reply_to", "a b@example.org"),
        ("unsubscribe_url", "https://t.example.com/u/x\r\nBcc: v@example.net"),
        ("unsubscribe_url", "javascript:alert(1)"),
        ("unsubscribe_mailto", "u@example.com>, <https://evil.example"),
        ("message_id", "id\r\nBcc: v@example.net"),
    ],
)
def test_control_characters_in_addresses_urls_and_ids_are_refused(field: str, value: str) -> None:
    with pytest.raises(ValidationError) as caught:
        build(**{field: value})

    assert caught.value.field == field


def test_headers_postwise_manages_cannot_be_overridden() -> None:
    with pytest.raises(ValidationError, match="not allowed"):
        build(headers={"Bcc": "victim@example.net"})
    with pytest.raises(ValidationError, match="not allowed"):
        build(headers={"X-Bad\r\nBcc": "x"})


def test_long_ascii_lines_are_quoted_printable_and_survive_the_round_trip() -> None:
    html = "<p>" + "word " * 2000 + "</p>"
    raw = build(html=html)

    assert b"Content-Transfer-Encoding: quoted-printable" in raw
    assert body_text(parse(raw), "html") == html
    assert_wire_safe(raw)


def test_mostly_non_ascii_bodies_are_base64() -> None:
    text = "日本語のテキストです。" * 300 + "\n"
    raw = build(text=text)

    assert b"Content-Transfer-Encoding: base64" in raw
    assert body_text(parse(raw), "plain") == text
    assert_wire_safe(raw)


def test_a_body_quoting_the_boundary_cannot_end_its_part() -> None:
    first = build()
    boundary = re.search(rb'boundary="([^"]+)"', first)
    assert boundary
    text = "before\n--" + boundary.group(1).decode() + "--\nafter\n"

    for _ in range(3):
        message = parse(build(text=text + "=_pw_ deadbeef\n"))
        assert body_text(message, "plain") == text + "=_pw_ deadbeef\n"
        assert body_text(message, "html") == "<p>Hello Ann</p>\n<p>See you.</p>\n"


def test_message_ids_that_are_not_dot_atoms_are_hashed_deterministically() -> None:
    first = parse(build(message_id="campaign:12/contact:7"))
    second = parse(build(message_id="campaign:12/contact:7"))

    assert first["Message-ID"] == second["Message-ID"]
    assert re.fullmatch(r"<[0-9a-f]{32}@example\.com>", first["Message-ID"])
    assert first["X-Postwise-Message-Id"] == "campaign:12/contact:7"


def test_sanitise_header_text_replaces_controls_and_collapses_spaces() -> None:
    assert sanitise_header_text("  a\r\n\tb\x00c\u2028d   e \x85") == "a b c d e"


# Any text at all, including CR, LF, NUL, lone line separators and very long runs.
any_text = st.text(max_size=400) | st.text(max_size=3000, alphabet=st.characters())
header_text = st.text(max_size=300)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(subject=header_text, name=header_text, extra=header_text, text=any_text, html=any_text)
def test_any_header_and_body_text_round_trips_without_injection(
    subject: str, name: str, extra: str, text: str, html: str
) -> None:
    raw = build(
        subject=subject,
        recipient=Mailbox("ann@example.org", name),
        text=text,
        html=html,
        headers={"X-Campaign-Name": extra},
    )
    message = parse(raw)

    assert_wire_safe(raw)
    assert list(message.keys()) == [*BASE_HEADERS[:-1], "X-Campaign-Name", "Content-Type"]
    assert message["Subject"] == sanitise_header_text(subject)
    assert message["X-Campaign-Name"] == sanitise_header_text(extra)
    assert decoded_mailbox(raw, "To") == (sanitise_header_text(name), "ann@example.org")
    assert body_text(message, "plain") == wire_text(text)
    assert body_text(message, "html") == wire_text(html)


MERGE_TEMPLATE = TemplateSource(
    id="merge",
    version=1,
    subject="{{ first_name }}, your {{ plan | default('free') }} plan",
    html="<p>Hi {{ first_name }}</p><p>{{ note }}</p><a href='{{ unsubscribe_url }}'>u</a>",
)
COMPILED = TemplateCache().get(MERGE_TEMPLATE)


@settings(max_examples=100, deadline=None)
@given(first_name=header_text, plan=header_text, note=any_text)
@example(first_name="\ud800", plan="pro", note="a lone \udfff surrogate")  # once a CI flake
def test_merge_values_reach_the_wire_sanitised_in_headers_and_intact_in_bodies(
    first_name: str, plan: str, note: str
) -> None:
    content = COMPILED.render(
        {"id": 1, "first_name": first_name, "plan": plan, "note": note},
        message_id="m-1",
        unsubscribe_url=UNSUB,
    )
    raw = build(subject=content.subject, text=content.text, html=content.html)
    message = parse(raw)

    assert_wire_safe(raw)
    assert list(message.keys()) == BASE_HEADERS
    assert message["Subject"] == sanitise_header_text(f"{first_name}, your {plan} plan")
    # A lone surrogate cannot be encoded: it reaches the wire as "?", as in the test above.
    assert body_text(message, "html") == wire_text(content.html)
    assert body_text(message, "plain") == wire_text(content.text)
