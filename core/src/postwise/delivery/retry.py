"""When to try a message again: backoff after a transient failure, waits a provider asked for.

Attempt ``n`` (1-based, the attempt that just failed) waits ``base * 2**(n-1)`` seconds, capped at
``retry_max_seconds``, then drawn uniformly from the upper half of that ("equal jitter"): a
relay that answered 421 to a whole campaign does not get the whole campaign back in one second,
and no retry comes sooner than half its nominal delay.

A provider may also say how long to wait (``Retry-After``). A transient failure then waits at
least that long; a deferral (the provider did not take the message now) waits exactly that long,
and when the provider named no time, the backoff the settlement picks from how long the message
has been deferred already. Either way the
wait is at least :data:`MIN_DEFERRAL_SECONDS` and a requested wait counts for at most
:data:`MAX_RETRY_AFTER_SECONDS`: a ``Retry-After`` of a year, or of zero, is a provider's bug,
not a reason to park messages for a year or to call it again at once.
"""

from __future__ import annotations

import math
import random

from postwise.settings import Settings

__all__ = [
    "MAX_RETRY_AFTER_SECONDS",
    "MIN_DEFERRAL_SECONDS",
    "backoff_seconds",
    "deferral_seconds",
    "is_exhausted",
    "retry_seconds",
]

#: The longest wait a provider's ``Retry-After`` can impose. A throttle that lasts longer
#: (a daily quota) costs one more request per batch an hour, not a lost message.
MAX_RETRY_AFTER_SECONDS = 3600.0
#: The shortest wait before a deferred message comes back (RQ schedules in whole seconds).
MIN_DEFERRAL_SECONDS = 1.0


def backoff_seconds(attempt: int, settings: Settings, *, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1 for the first)."""
    nominal = min(
        settings.retry_max_seconds, settings.retry_base_seconds * 2 ** max(0, attempt - 1)
    )
    draw = (rng or random).random()
    return nominal / 2 + draw * nominal / 2


def _bounded(retry_after: float | None) -> float | None:
    if retry_after is None or math.isnan(retry_after):
        return None
    return min(MAX_RETRY_AFTER_SECONDS, max(0.0, retry_after))


def retry_seconds(backoff: float, retry_after: float | None) -> float:
    """The wait after a transient failure: the backoff, or the provider's longer wait."""
    requested = _bounded(retry_after)
    return backoff if requested is None else max(backoff, requested)


def deferral_seconds(retry_after: float | None, backoff: float) -> float:
    """The wait of a deferred message: what the provider asked for, else ``backoff``."""
    requested = _bounded(retry_after)
    return max(MIN_DEFERRAL_SECONDS, backoff if requested is None else requested)


def is_exhausted(attempts: int, settings: Settings) -> bool:
    """Whether a message that has made ``attempts`` attempts may not be tried again."""
    return attempts >= settings.max_attempts
