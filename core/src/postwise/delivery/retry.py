"""When to try a transiently failed message again: exponential backoff with jitter.

Attempt ``n`` (1-based, the attempt that just failed) waits ``base * 2**(n-1)`` seconds, capped at
``retry_max_seconds``, then drawn uniformly from the upper half of that ("equal jitter"): a
relay that answered 421 to a whole campaign does not get the whole campaign back in one second,
and no retry comes sooner than half its nominal delay.
"""

from __future__ import annotations

import random

from postwise.settings import Settings

__all__ = ["backoff_seconds", "is_exhausted"]


def backoff_seconds(attempt: int, settings: Settings, *, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1 for the first)."""
    nominal = min(
        settings.retry_max_seconds, settings.retry_base_seconds * 2 ** max(0, attempt - 1)
    )
    draw = (rng or random).random()
    return nominal / 2 + draw * nominal / 2


def is_exhausted(attempts: int, settings: Settings) -> bool:
    """Whether a message that has made ``attempts`` attempts may not be tried again."""
    return attempts >= settings.max_attempts
