"""Signed, expiring, purpose-bound tokens for tracking, unsubscribe and consent links.

A token is ``base64url(version | expiry | json payload | mac)`` without padding. The MAC is
HMAC-SHA256 over the purpose and the signed bytes, truncated to 128 bits (RFC 2104 allows
truncation to half the hash length; 128 bits is far beyond what an online forger can try). The
purpose is authenticated but not stored, so a click token never verifies as an unsubscribe
token and tokens stay short. Keys rotate: :func:`sign` uses one key, :func:`verify` accepts a
list (newest first), so old links keep working while the previous key is still listed.

Click tokens carry the target URL: the redirect endpoint needs it, and because it is signed a
tampered URL never verifies (no open redirect).
"""

from __future__ import annotations

import base64
import binascii
import enum
import functools
import hashlib
import hmac
import json
import struct
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from postwise.errors import ConfigurationError, PostwiseError

__all__ = [
    "MIN_KEY_BYTES",
    "InvalidToken",
    "Purpose",
    "TokenExpired",
    "click_signer",
    "click_token",
    "sign",
    "verify",
]

#: Keys shorter than this are refused: a short HMAC key can be brute-forced offline from any
#: token seen in the wild.
MIN_KEY_BYTES = 16

_VERSION = 1
_HEADER = struct.Struct(">BI")  # version, expiry as unsigned seconds since the epoch
_MAC_BYTES = 16
_BLOCK = 64  # SHA-256 block size, the HMAC key length
_MAX_EXPIRY = 2**32 - 1
# ASCII-only JSON: any string, even one with a lone surrogate, encodes to bytes.
_ENCODER = json.JSONEncoder(separators=(",", ":"))
# The string encoder _ENCODER itself uses, so sign() and click_token() produce the same JSON.
_json_string: Callable[[str], str] = json.encoder.encode_basestring_ascii


class Purpose(enum.StrEnum):
    """What a token authorises. A token verifies only for the purpose it was signed for."""

    CLICK = "click"
    OPEN = "open"
    UNSUBSCRIBE = "unsubscribe"
    CONFIRM_CONSENT = "confirm-consent"
    UI_SESSION = "ui-session"


class InvalidToken(PostwiseError):
    """A token was tampered with, signed for another purpose or key, malformed or expired."""


class TokenExpired(InvalidToken):
    """The token's signature is valid but its validity period is over."""


def _check_key(key: bytes) -> None:
    if not isinstance(key, bytes) or len(key) < MIN_KEY_BYTES:
        raise ConfigurationError(
            f"token signing keys must be at least {MIN_KEY_BYTES} bytes; "
            "set secret_key to a long random value (e.g. `python -c "
            '"import secrets; print(secrets.token_urlsafe(32))"`)'
        )


@functools.lru_cache(maxsize=32)
def _keyed(key: bytes) -> tuple[Any, Any]:
    """SHA-256 states with the HMAC inner and outer key pads already absorbed (RFC 2104).

    Copying them per token is four times faster than ``hmac.digest``, which sets the key up
    again for every call; rendering signs a token for every link of every message.
    """
    block = hashlib.sha256(key).digest() if len(key) > _BLOCK else key
    block = block.ljust(_BLOCK, b"\x00")
    inner = hashlib.sha256(bytes(b ^ 0x36 for b in block))
    outer = hashlib.sha256(bytes(b ^ 0x5C for b in block))
    return inner, outer


def _finish(inner: Any, outer: Any, data: bytes) -> bytes:
    state = inner.copy()
    state.update(data)
    final = outer.copy()
    final.update(state.digest())
    return bytes(final.digest()[:_MAC_BYTES])


def _mac(key: bytes, purpose: str, signed: bytes) -> bytes:
    inner, outer = _keyed(key)
    return _finish(inner, outer, purpose.encode() + b"\x00" + signed)


def sign(
    purpose: str,
    payload: Mapping[str, Any],
    *,
    key: bytes,
    ttl: float,
    now: float | None = None,
) -> str:
    """Sign ``payload`` (JSON-serialisable) for ``purpose``, valid for ``ttl`` seconds.

    Returns a URL-safe token (``[A-Za-z0-9_-]``) that :func:`verify` accepts until it expires.
    """
    _check_key(key)
    return _seal(purpose, _ENCODER.encode(payload), key=key, expiry=_expiry(ttl, now))


def click_token(
    message_id: str, url: str, *, key: bytes, ttl: float, now: float | None = None
) -> str:
    """A click token binding ``message_id`` and the target ``url``: payload ``{"m", "u"}``."""
    return click_signer(message_id, key=key, ttl=ttl, now=now)(url)


def click_signer(
    message_id: str, *, key: bytes, ttl: float, now: float | None = None
) -> Callable[[str], str]:
    """A function signing the click tokens of one message, one call per target URL.

    The tokens are exactly those :func:`sign` makes for ``{"m": message_id, "u": url}``; what
    all links of a message share (expiry, message id, the keyed hash state) is prepared once.
    """
    _check_key(key)
    head = _HEADER.pack(
        _VERSION, _expiry(ttl, now)
    ) + f'{{"m":{_json_string(message_id)},"u":'.encode("ascii")
    inner, outer = _keyed(key)
    inner = inner.copy()
    inner.update(Purpose.CLICK.encode() + b"\x00" + head)

    def signer(url: str) -> str:
        tail = _json_string(url).encode("ascii") + b"}"
        mac = _finish(inner, outer, tail)
        return base64.urlsafe_b64encode(head + tail + mac).rstrip(b"=").decode("ascii")

    return signer


def _expiry(ttl: float, now: float | None) -> int:
    if ttl <= 0:
        raise ConfigurationError(f"token ttl must be positive, got {ttl!r} seconds")
    expiry = int((time.time() if now is None else now) + ttl)
    if expiry > _MAX_EXPIRY:
        raise ConfigurationError(f"token ttl {ttl!r} seconds reaches past the year 2106")
    return expiry


def _seal(purpose: str, body: str, *, key: bytes, expiry: int) -> str:
    signed = _HEADER.pack(_VERSION, expiry) + body.encode("ascii")
    return base64.urlsafe_b64encode(signed + _mac(key, purpose, signed)).rstrip(b"=").decode()


def verify(
    purpose: str,
    token: str,
    *,
    keys: Sequence[bytes],
    now: float | None = None,
) -> dict[str, Any]:
    """Return the payload of ``token`` if it was signed for ``purpose`` by one of ``keys``.

    Raises :class:`TokenExpired` when the signature is good but the token expired, and
    :class:`InvalidToken` for anything else (tampering, other purpose, unknown key, garbage).
    """
    if not keys:
        raise ConfigurationError("no token verification keys configured")
    for key in keys:
        _check_key(key)
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    except (binascii.Error, ValueError, TypeError) as exc:
        raise InvalidToken(
            "token is not valid base64url; the link was truncated or altered"
        ) from exc
    if len(raw) < _HEADER.size + _MAC_BYTES:
        raise InvalidToken("token is too short; the link was truncated or altered")
    signed, mac = raw[:-_MAC_BYTES], raw[-_MAC_BYTES:]
    # Every key is tried even after a match so timing does not reveal which key signed.
    matched = False
    for key in keys:
        matched |= hmac.compare_digest(_mac(key, purpose, signed), mac)
    if not matched:
        raise InvalidToken(
            f"token signature does not match for purpose {purpose!r} "
            "(altered, signed for another purpose, or signed with a retired key)"
        )
    version, expiry = _HEADER.unpack_from(signed)
    if version != _VERSION:
        raise InvalidToken(f"token format version {version} is not supported")
    if (time.time() if now is None else now) >= expiry:
        raise TokenExpired(f"token for {purpose!r} expired; ask for a fresh link")
    try:
        payload = json.loads(signed[_HEADER.size :])
    except ValueError as exc:
        raise InvalidToken("token payload is not valid JSON") from exc
    if not isinstance(payload, dict):
        raise InvalidToken("token payload is not an object")
    return payload
