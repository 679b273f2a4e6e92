from __future__ import annotations

import os
import re
from collections.abc import Callable
from datetime import UTC, datetime

import dkim
import pytest

from postwise.content import TemplateCache, TemplateSource, TrackingConfig
from postwise.delivery.dkim import DEFAULT_SIGNED_HEADERS, DkimSigner, generate_key, sign_message
from postwise.delivery.message import Mailbox, build_message
from postwise.errors import ConfigurationError, ValidationError

DOMAIN = "example.com"
RSA_KEY = generate_key("rsa-sha256")
ED_KEY = generate_key("ed25519-sha256")
RSA = DkimSigner("rsa2025", DOMAIN, RSA_KEY.private_key_pem)
ED = DkimSigner("ed2025", DOMAIN, ED_KEY.private_key_pem, "ed25519-sha256")

DnsFunc = Callable[..., bytes | None]


def require_pynacl() -> None:
    """dkimpy verifies Ed25519 signatures with PyNaCl; without it those checks cannot run."""
    try:
        import nacl  # noqa: F401
    except ImportError:
        reason = "dkimpy needs PyNaCl to verify Ed25519 signatures: pip install pynacl"
        if os.environ.get("POSTWISE_TEST_REQUIRE_ALL"):
            pytest.fail(reason)
        pytest.skip(reason)


def dns_for(*signers: DkimSigner) -> DnsFunc:
    if any(s.algorithm == "ed25519-sha256" for s in signers):
        require_pynacl()
    records = {f"{s.record_name}.".encode(): s.dns_record().encode() for s in signers}

    def dnsfunc(name: bytes, timeout: int = 5) -> bytes | None:
        return records.get(name)

    return dnsfunc


def message(**overrides: object) -> bytes:
    args: dict[str, object] = {
        "sender": Mailbox("news@example.com", "Café Ünïcode News"),
        "recipient": Mailbox("zoë@example.org".replace("ë", "e"), "Zoë"),
        "subject": "Grüße — " + "a long subject that needs folding " * 4,
        "text": "Hello Zoë,\n\ntrailing spaces   \n\ttabs\there\n" + "x" * 3000 + "\n",
        "html": "<p>" + "Grüße " * 600 + "</p>\n",
        "message_id": "c1.v2.3",
        "unsubscribe_url": "https://t.example.com/u/tok",
        "unsubscribe_mailto": "unsubscribe@example.com",
        "date": datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
    }
    args.update(overrides)
    return build_message(**args)  # type: ignore[arg-type]


@pytest.mark.parametrize("signer", [RSA, ED], ids=["rsa-sha256", "ed25519-sha256"])
def test_signatures_verify_with_dkimpy_for_non_ascii_and_long_line_messages(
    signer: DkimSigner,
) -> None:
    raw = message()
    assert max(len(line) for line in raw.split(b"\r\n")) <= 998

    signed = signer.sign(raw)

    assert signed.endswith(raw)
    assert dkim.verify(signed, dnsfunc=dns_for(signer))


def test_dual_signed_messages_carry_two_signatures_that_both_verify() -> None:
    signed = sign_message(message(), [RSA, ED])
    verifier = dkim.DKIM(signed)
    dnsfunc = dns_for(RSA, ED)

    assert signed.count(b"DKIM-Signature:") == 2
    assert verifier.verify(idx=0, dnsfunc=dnsfunc)
    assert verifier.verify(idx=1, dnsfunc=dnsfunc)
    assert b"a=rsa-sha256" in signed
    assert b"a=ed25519-sha256" in signed


def test_the_signature_covers_the_headers_receivers_require() -> None:
    signed = RSA.sign(message(reply_to="support@example.com"))
    tags = re.search(rb"\sh=([^;]+);", signed)
    assert tags
    covered = set(tags.group(1).decode().replace("\r\n", "").replace(" ", "").split(":"))

    required = {
        "from",
        "to",
        "subject",
        "date",
        "message-id",
        "list-unsubscribe",
        "list-unsubscribe-post",
        "mime-version",
        "content-type",
        "reply-to",
    }
    assert required <= covered
    assert b"c=relaxed/relaxed" in signed


@pytest.mark.parametrize(
    "tamper",
    [
        lambda m: m.replace(b"Subject: ", b"Subject: Re: ", 1),
        lambda m: m.replace(b"From: ", b"From: evil@example.net\r\nX-Old-From: ", 1),
        lambda m: m.replace(b"\r\n\r\n", b"\r\nFrom: evil@example.net\r\n\r\n", 1),
        lambda m: m.replace(
            b"\r\n\r\n", b"\r\nList-Unsubscribe: <https://evil.example>\r\n\r\n", 1
        ),
        lambda m: m.replace(b"https://t.example.com/u/tok", b"https://t.example.com/u/toc", 1),
        lambda m: m[:-40] + b"tampered" + m[-32:],
    ],
    ids=["subject", "from", "added-from", "added-list-unsubscribe", "unsubscribe-url", "body"],
)
def test_changed_or_added_headers_and_bodies_fail_verification(
    tamper: Callable[[bytes], bytes],
) -> None:
    signed = RSA.sign(message())
    tampered = tamper(signed)

    assert tampered != signed
    assert not dkim.verify(tampered, dnsfunc=dns_for(RSA))


def test_relaxed_canonicalisation_survives_refolding_and_trailing_whitespace() -> None:
    signed = ED.sign(message(html=None, text="line one\nline two\n"))
    head, body = signed.split(b"\r\n\r\n", 1)
    relayed = (
        head.replace(b"MIME-Version: 1.0", b"MIME-Version:   1.0 ")
        + b"\r\n\r\n"
        + body.replace(b"line one", b"line  one \t")
        + b"\r\n\r\n"
    )

    assert dkim.verify(relayed, dnsfunc=dns_for(ED))


@pytest.mark.parametrize(
    "body",
    [b"", b"\r\n", b"\r\n\r\n", b"a  b\t\tc \r\n\r\n\r\n", b" \t \r\n x", b"end  \t"],
    ids=["empty", "one-crlf", "blank-lines", "runs-and-trailing", "leading-space", "no-final-crlf"],
)
@pytest.mark.parametrize("signer", [RSA, ED], ids=["rsa", "ed25519"])
def test_body_canonicalisation_matches_dkimpy_on_edge_cases(
    signer: DkimSigner, body: bytes
) -> None:
    raw = (
        b"From: Ann <ann@example.com>\r\nTo: bob@example.org\r\n"
        b"Subject:  spaced \t out\r\n\tfolded with a tab\r\n"
        b"Date: Thu, 02 Jan 2025 03:04:05 +0000\r\n\r\n" + body
    )

    assert dkim.verify(signer.sign(raw), dnsfunc=dns_for(signer))


def test_a_rendered_tracked_message_signs_and_verifies_end_to_end() -> None:
    src = TemplateSource(
        id="e2e",
        version=1,
        subject="{{ first_name }}, ¡ofertas!",
        html="<style>p{color:#123456}</style><p>Hola {{ first_name }}</p>"
        '<a href="https://shop.example.com/?a=1&amp;b=2">Shop</a>'
        '<a href="{{ unsubscribe_url }}">Baja</a>',
    )
    content = (
        TemplateCache()
        .get(src)
        .render(
            {"id": 3, "first_name": "José\r\nBcc: x@y.z"},
            message_id="e2e.3",
            unsubscribe_url="https://t.example.com/u/x",
            tracking=TrackingConfig("https://t.example.com", b"k" * 32),
        )
    )
    raw = build_message(
        sender="news@example.com",
        recipient="jose@example.org",
        subject=content.subject,
        text=content.text,
        html=content.html,
        message_id="e2e.3",
        unsubscribe_url="https://t.example.com/u/x",
    )

    signed = sign_message(raw, [RSA, ED])

    assert dkim.DKIM(signed).verify(idx=0, dnsfunc=dns_for(RSA, ED))
    assert dkim.DKIM(signed).verify(idx=1, dnsfunc=dns_for(RSA, ED))
    headers = signed.split(b"\r\n\r\n", 1)[0]
    assert b"\nBcc:" not in headers
    assert b"Subject: =?utf-8?b?" in headers


def test_messages_with_bare_line_feeds_are_refused() -> None:
    with pytest.raises(ValidationError, match="bare CR or LF"):
        RSA.sign(b"From: a@example.com\nSubject: x\n\nbody\n")
    with pytest.raises(ValidationError, match="no blank line"):
        RSA.sign(b"From: a@example.com\r\nSubject: x\r\n")


def test_generated_keys_come_with_their_dns_record() -> None:
    assert re.fullmatch(r"v=DKIM1; k=rsa; p=[A-Za-z0-9+/=]{300,}", RSA_KEY.dns_record)
    assert re.fullmatch(r"v=DKIM1; k=ed25519; p=[A-Za-z0-9+/]{43}=", ED_KEY.dns_record)
    assert RSA_KEY.private_key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert RSA.dns_record() == RSA_KEY.dns_record
    assert RSA.record_name == "rsa2025._domainkey.example.com"


def test_a_signer_accepts_a_pem_string() -> None:
    signer = DkimSigner("s", DOMAIN, ED_KEY.private_key_pem.decode(), "ed25519-sha256")

    assert dkim.verify(signer.sign(message()), dnsfunc=dns_for(signer))


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("s", DOMAIN, ED_KEY.private_key_pem, "rsa-sha256"), "needs an RSA private key"),
        (("s", DOMAIN, RSA_KEY.private_key_pem, "ed25519-sha256"), "needs an Ed25519"),
        (("s", DOMAIN, RSA_KEY.private_key_pem, "rsa-sha1"), "unknown"),
        (("bad selector", DOMAIN, RSA_KEY.private_key_pem), "not a valid DNS name"),
        (("s", "example.com;x=1", RSA_KEY.private_key_pem), "not a valid DNS name"),
        (("s", DOMAIN, b"not a key"), "could not be read"),
    ],
)
def test_misconfigured_signers_are_refused(args: tuple[object, ...], error: str) -> None:
    with pytest.raises(ConfigurationError, match=error):
        DkimSigner(*args)  # type: ignore[arg-type]


def test_from_must_be_among_the_signed_headers() -> None:
    with pytest.raises(ConfigurationError, match="must include From"):
        DkimSigner("s", DOMAIN, ED_KEY.private_key_pem, "ed25519-sha256", signed_headers=["to"])
    assert "from" in DEFAULT_SIGNED_HEADERS
