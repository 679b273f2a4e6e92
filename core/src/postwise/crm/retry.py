"""Retrying CRM API calls: rate limits (429 with ``Retry-After``) and server errors (5xx).

Connectors wrap each API call in :meth:`RetryPolicy.run` and raise :class:`Retryable` for an
answer worth repeating. A wait the CRM asks for (``Retry-After``) is honoured as long as it is
no longer than ``max_wait``; a longer one (a daily limit) ends the attempt at once with
:class:`~postwise.crm.connector.CrmUnavailableError`, and so does the last failed attempt, so
the poll or push that called it stops and the next one starts where it left off.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

from postwise.crm.connector import CrmUnavailableError
from postwise.httputil import retry_after_seconds

# retry_after_seconds is re-exported: connectors read a CRM's Retry-After with it.
__all__ = ["RetryPolicy", "Retryable", "retry_after_seconds"]

T = TypeVar("T")


class Retryable(Exception):
    """An answer worth repeating the call for; ``retry_after`` is the CRM's requested wait."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(slots=True)
class RetryPolicy:
    """How often and how long to retry one call."""

    attempts: int = 5
    base_delay: float = 0.5
    max_wait: float = 60.0
    sleep: Callable[[float], None] = field(default=time.sleep)

    def delay(self, attempt: int, retry_after: float | None) -> float:
        """The wait before attempt ``attempt + 1``: the CRM's word, else exponential backoff."""
        if retry_after is not None:
            return retry_after
        backoff = self.base_delay * 2 ** (attempt - 1)
        return min(self.max_wait, backoff * (0.5 + random.random() / 2))

    def run(self, call: Callable[[], T], what: str) -> T:
        """``call()``, repeated while it raises :class:`Retryable`; ``what`` names it in errors."""
        attempt = 1
        while True:
            try:
                return call()
            except Retryable as exc:
                wait = self.delay(attempt, exc.retry_after)
                if attempt >= self.attempts:
                    raise CrmUnavailableError(
                        f"{what}: {exc}; gave up after {attempt} attempts, the next "
                        "poll or push tries again"
                    ) from None
                if wait > self.max_wait:
                    raise CrmUnavailableError(
                        f"{what}: {exc}; the CRM asks to wait {wait:.0f} s, longer than "
                        f"{self.max_wait:.0f} s, so this run stops here"
                    ) from None
                self.sleep(wait)
                attempt += 1
