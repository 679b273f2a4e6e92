from __future__ import annotations

import base64
import hashlib
import hmac
import re

import pytest

from postwise.errors import ConfigurationError, PostwiseError
from postwise.tokens import (
    InvalidToken,
    Purpose,
    TokenExpired,
    click_signer,
    click_token,
    sign,
    verify,
)

KEY = b"current-signing-key-0123456789abcdef"
OLD_KEY = b"previous-signing-key-0123456789abcd"
NOW = 1_800_000_000.0


def test_a_signed_token_verifies_and_returns_its_payload() -> None:
    token = sign(Purpose.UNSUBSCRIBE, {"c": 42, "l": "news"}, key=KEY, ttl=3600, now=NOW)

    assert verify(Purpose.UNSUBSCRIBE, token, keys=[KEY], now=NOW + 10) == {"c": 42, "l": "news"}


def test_tokens_are_url_safe_and_compact() -> None:
    token = click_token("c7.42.1001", "https://shop.example.com/p/17", key=KEY, ttl=86400)

    assert re.fullmatch(r"[A-Za-z0-9_-]+", token)
    assert len(token) < 120


def test_a_token_for_one_purpose_never_verifies_for_another() -> None:
    token = sign(Purpose.CLICK, {"m": "m1", "u": "https://a.example"}, key=KEY, ttl=60, now=NOW)

    for other in (Purpose.OPEN, Purpose.UNSUBSCRIBE, Purpose.CONFIRM_CONSENT):
        with pytest.raises(InvalidToken, match="signature does not match"):
            verify(other, token, keys=[KEY], now=NOW)


def test_an_expired_token_is_refused_with_token_expired() -> None:
    token = sign(Purpose.CONFIRM_CONSENT, {"c": 1}, key=KEY, ttl=60, now=NOW)

    assert verify(Purpose.CONFIRM_CONSENT, token, keys=[KEY], now=NOW + 59) == {"c": 1}
    with pytest.raises(TokenExpired):
        verify(Purpose.CONFIRM_CONSENT, token, keys=[KEY], now=NOW + 60)


def test_expired_is_a_kind_of_invalid_token_and_a_postwise_error() -> None:
    assert issubclass(TokenExpired, InvalidToken)
    assert issubclass(InvalidToken, PostwiseError)


def test_any_flipped_bit_makes_the_token_invalid() -> None:
    token = sign(Purpose.OPEN, {"m": "m1"}, key=KEY, ttl=60, now=NOW)
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))

    for position in range(len(raw)):
        tampered = bytearray(raw)
        tampered[position] ^= 0x01
        text = base64.urlsafe_b64encode(bytes(tampered)).rstrip(b"=").decode()
        with pytest.raises(InvalidToken):
            verify(Purpose.OPEN, text, keys=[KEY], now=NOW)


def test_a_click_token_with_a_swapped_url_does_not_verify() -> None:
    token = click_token("m1", "https://shop.example.com/p/1", key=KEY, ttl=60)
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    swapped = raw.replace(b"shop.example.com", b"evil.example.net")
    forged = base64.urlsafe_b64encode(swapped).rstrip(b"=").decode()

    assert verify(Purpose.CLICK, token, keys=[KEY])["u"] == "https://shop.example.com/p/1"
    with pytest.raises(InvalidToken):
        verify(Purpose.CLICK, forged, keys=[KEY])


def test_click_token_matches_the_generic_signer_and_keeps_any_url() -> None:
    url = 'https://example.com/straße?q="x"&r=\u2028'

    fast = click_token("m-1", url, key=KEY, ttl=60, now=NOW)

    assert fast == sign(Purpose.CLICK, {"m": "m-1", "u": url}, key=KEY, ttl=60, now=NOW)
    assert verify(Purpose.CLICK, fast, keys=[KEY], now=NOW) == {"m": "m-1", "u": url}


def test_rotated_keys_keep_old_tokens_valid_while_listed() -> None:
    old_token = sign(Purpose.UNSUBSCRIBE, {"c": 9}, key=OLD_KEY, ttl=60, now=NOW)
    new_token = sign(Purpose.UNSUBSCRIBE, {"c": 9}, key=KEY, ttl=60, now=NOW)

    assert verify(Purpose.UNSUBSCRIBE, old_token, keys=[KEY, OLD_KEY], now=NOW) == {"c": 9}
    assert verify(Purpose.UNSUBSCRIBE, new_token, keys=[KEY, OLD_KEY], now=NOW) == {"c": 9}
    with pytest.raises(InvalidToken):
        verify(Purpose.UNSUBSCRIBE, old_token, keys=[KEY], now=NOW)


@pytest.mark.parametrize("garbage", ["", "abc", "!!!!", "A" * 7, "AQID" * 3])
def test_garbage_is_an_invalid_token_not_a_crash(garbage: str) -> None:
    with pytest.raises(InvalidToken):
        verify(Purpose.CLICK, garbage, keys=[KEY])


def test_short_keys_are_refused_as_configuration_errors() -> None:
    with pytest.raises(ConfigurationError, match="at least 16 bytes"):
        sign(Purpose.OPEN, {"m": "m"}, key=b"short", ttl=60)
    with pytest.raises(ConfigurationError):
        verify(Purpose.OPEN, "AAAA", keys=[])


def test_a_non_positive_ttl_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="ttl must be positive"):
        sign(Purpose.OPEN, {"m": "m"}, key=KEY, ttl=0)


@pytest.mark.parametrize("key", [KEY, b"k" * 64, b"long-key-" * 20])
def test_the_mac_is_hmac_sha256_of_purpose_and_signed_bytes_truncated_to_128_bits(
    key: bytes,
) -> None:
    token = sign(Purpose.OPEN, {"m": "m1"}, key=key, ttl=60, now=NOW)
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    signed, mac = raw[:-16], raw[-16:]

    assert mac == hmac.new(key, b"open\x00" + signed, hashlib.sha256).digest()[:16]


def test_a_click_signer_makes_the_same_tokens_as_sign_for_every_url() -> None:
    signer = click_signer("m-7", key=KEY, ttl=60, now=NOW)

    for url in ("https://a.example/1", "https://b.example/?x=1&y=\u00e9", ""):
        expected = sign(Purpose.CLICK, {"m": "m-7", "u": url}, key=KEY, ttl=60, now=NOW)
        assert signer(url) == expected
