"""HTTP helpers every API client of postwise shares (ESP providers, CRM connectors).

:func:`retry_after_seconds` reads how long a server asks a client to wait: ``Retry-After``
(RFC 9110 §10.2.3: seconds or an HTTP date) and, where a vendor sends one, an epoch-seconds reset
header such as SendGrid's ``X-RateLimit-Reset``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping
from email.utils import parsedate_to_datetime

__all__ = ["header", "retry_after_seconds"]


def retry_after_seconds(
    headers: Mapping[str, str], now: float | None = None, *, reset_header: str | None = None
) -> float | None:
    """Seconds to wait according to ``Retry-After`` (seconds or an HTTP date), else according
    to ``reset_header`` (a vendor's epoch-seconds reset time); ``None`` when neither says.

    Header names match in any case. A date in the past means "now" (0); values that are
    neither seconds nor a date are ignored.
    """
    now = time.time() if now is None else now
    value = (header(headers, "retry-after") or "").strip()
    if value:
        try:
            seconds = float(value)
        except ValueError:
            seconds = math.nan
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - now)
        except (TypeError, ValueError, IndexError):
            pass
    if reset_header is not None:
        reset = (header(headers, reset_header.lower()) or "").strip()
        if reset.isdigit():
            return max(0.0, float(reset) - now)
    return None


def header(headers: Mapping[str, str], name: str) -> str | None:
    """The value of header ``name`` (lower-case), whatever case the mapping uses."""
    value = headers.get(name)
    if value is None:
        value = next((v for k, v in headers.items() if k.lower() == name), None)
    return value
