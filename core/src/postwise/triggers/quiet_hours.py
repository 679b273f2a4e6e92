"""Quiet hours: a nightly window, in each contact's own time zone, when marketing mail waits.

``settings.quiet_hours = "22-8"`` (or ``"21:30-07:45"``) means a send due at 23:10 local time is
held until 08:00 local time; it is never dropped. Transactional triggers are exempt.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, time, timedelta
from zoneinfo import ZoneInfo

from postwise.errors import ConfigurationError

__all__ = ["QuietHours"]

_RE = re.compile(r"^\s*(\d{1,2})(?::(\d{2}))?\s*-\s*(\d{1,2})(?::(\d{2}))?\s*$")


@dataclass(frozen=True, slots=True)
class QuietHours:
    """The window from ``start`` to ``end`` minutes after local midnight (wrapping past it)."""

    start: int
    end: int

    @classmethod
    def parse(cls, text: str) -> QuietHours | None:
        """``"22-8"`` / ``"22:00-08:00"``; an empty string means no quiet hours."""
        if not text.strip():
            return None
        match = _RE.match(text)
        if match is None:
            raise ConfigurationError(
                f"POSTWISE_QUIET_HOURS={text!r}: write the window as START-END in 24 h local "
                "time, e.g. '22-8' or '21:30-07:45'"
            )
        h1, m1, h2, m2 = (int(g) if g else 0 for g in match.groups())
        if h1 > 23 or h2 > 24 or m1 > 59 or m2 > 59 or (h2 == 24 and m2):
            raise ConfigurationError(f"POSTWISE_QUIET_HOURS={text!r}: not a time of day")
        start, end = h1 * 60 + m1, h2 * 60 + m2
        if start == end % 1440:
            raise ConfigurationError(
                f"POSTWISE_QUIET_HOURS={text!r}: start and end are equal; leave it empty for "
                "no quiet hours"
            )
        return cls(start, end)

    def contains(self, minute_of_day: int) -> bool:
        if self.start < self.end:
            return self.start <= minute_of_day < self.end
        return minute_of_day >= self.start or minute_of_day < self.end

    def hold_until(self, due: datetime, zone: ZoneInfo) -> datetime | None:
        """When a send due at ``due`` may go: the end of the window (UTC), or None if ``due``
        is outside quiet hours."""
        local = due.astimezone(zone)
        minute = local.hour * 60 + local.minute
        if not self.contains(minute):
            return None
        day = local.date()
        if self.start >= self.end and minute >= self.start:
            day += timedelta(days=1)
        end_hour, end_minute = divmod(self.end, 60)
        if end_hour == 24:
            release = datetime.combine(day + timedelta(days=1), time(0, 0), tzinfo=zone)
        else:
            release = datetime.combine(day, time(end_hour, end_minute), tzinfo=zone)
        return release.astimezone(UTC)
