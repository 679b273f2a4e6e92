"""The signature of change notifications a Salesforce Flow (or Apex trigger) posts to postwise.

Salesforce's own Outbound Messages are SOAP and unsigned, so postwise defines a small signed
JSON notification instead. The sender adds::

    X-Postwise-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>

with the shared ``webhook_secret``. Notifications signed more than five minutes ago (or ahead)
are refused as possible replays. In Apex::

    String t = String.valueOf(Datetime.now().getTime() / 1000);
    Blob mac = Crypto.generateMac('HmacSHA256', Blob.valueOf(t + '.' + body),
                                  Blob.valueOf(secret));
    req.setHeader('X-Postwise-Signature', 't=' + t + ',v1=' + EncodingUtil.convertToHex(mac));
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping

__all__ = ["MAX_AGE_SECONDS", "SIGNATURE_HEADER", "sign", "verify"]

SIGNATURE_HEADER = "X-Postwise-Signature"
MAX_AGE_SECONDS = 300


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The header value for ``body`` signed at ``timestamp``."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def verify(
    secret: str, headers: Mapping[str, str], body: bytes, *, now: float | None = None
) -> bool:
    """Whether the request carries a valid, recent signature (headers in lower case)."""
    value = headers.get(SIGNATURE_HEADER.lower(), "")
    parts = dict(p.strip().partition("=")[::2] for p in value.split(",") if "=" in p)
    timestamp, given = parts.get("t", ""), parts.get("v1", "")
    if not secret or not timestamp.isdigit() or not given:
        return False
    current = time.time() if now is None else now
    if abs(current - int(timestamp)) > MAX_AGE_SECONDS:
        return False
    expected = sign(secret, body, int(timestamp)).rpartition("v1=")[2]
    return hmac.compare_digest(expected, given)
