"""HubSpot's webhook signature, version 3.

``X-HubSpot-Signature-v3`` is the base64 HMAC-SHA256, keyed with the app's client secret, of
the UTF-8 string method + URI + body + timestamp, where the timestamp is
``X-HubSpot-Request-Timestamp`` (milliseconds) and the URI is the full URL HubSpot called with
a few URL-encoded characters decoded (``%3A`` ``%2F`` ``%3F`` ``%40`` ``%21`` ``%24`` ``%27``
``%28`` ``%29`` ``%2A`` ``%2C`` ``%3B``). Requests older than five minutes are refused as
possible replays (and so are timestamps more than five minutes ahead: a skewed clock).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from collections.abc import Mapping

__all__ = [
    "MAX_AGE_MS",
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "signature_v3",
    "verify_v3",
]

SIGNATURE_HEADER = "X-HubSpot-Signature-v3"
TIMESTAMP_HEADER = "X-HubSpot-Request-Timestamp"
MAX_AGE_MS = 5 * 60 * 1000
_DECODED = {
    "%3A": ":",
    "%2F": "/",
    "%3F": "?",
    "%40": "@",
    "%21": "!",
    "%24": "$",
    "%27": "'",
    "%28": "(",
    "%29": ")",
    "%2A": "*",
    "%2C": ",",
    "%3B": ";",
}


def _decode_uri(uri: str) -> str:
    for encoded, decoded in _DECODED.items():
        uri = uri.replace(encoded, decoded).replace(encoded.lower(), decoded)
    return uri


def signature_v3(secret: str, method: str, uri: str, body: bytes, timestamp: str) -> str:
    """The v3 signature HubSpot sends for this request."""
    source = method.upper() + _decode_uri(uri) + body.decode("utf-8") + timestamp
    digest = hmac.new(secret.encode(), source.encode("utf-8"), hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


def verify_v3(
    secret: str,
    method: str,
    uri: str,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now_ms: int | None = None,
) -> bool:
    """Whether the request carries a valid, recent v3 signature (headers in lower case)."""
    signature = headers.get(SIGNATURE_HEADER.lower(), "").strip()
    timestamp = headers.get(TIMESTAMP_HEADER.lower(), "").strip()
    if not secret or not signature or not timestamp.isdigit():
        return False
    now_ms = int(time.time() * 1000) if now_ms is None else now_ms
    if abs(now_ms - int(timestamp)) > MAX_AGE_MS:
        return False
    try:
        expected = signature_v3(secret, method, uri, body, timestamp)
    except UnicodeDecodeError:
        return False
    return hmac.compare_digest(expected, signature)
