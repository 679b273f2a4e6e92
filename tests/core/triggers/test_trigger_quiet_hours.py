"""Quiet hours hold a send until the window ends in the contact's time zone."""

from __future__ import annotations

from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from postwise.errors import ConfigurationError
from postwise.triggers.quiet_hours import QuietHours

PARIS = ZoneInfo("Europe/Paris")


def test_empty_setting_means_no_quiet_hours() -> None:
    assert QuietHours.parse("") is None


def test_a_send_at_night_waits_until_morning_local_time() -> None:
    quiet = QuietHours.parse("22-8")
    assert quiet is not None
    # 23:30 in Paris (UTC+1 in January) is 22:30 UTC; the send waits for 08:00 Paris = 07:00 UTC.
    due = datetime(2026, 1, 10, 22, 30, tzinfo=UTC)
    assert quiet.hold_until(due, PARIS) == datetime(2026, 1, 11, 7, 0, tzinfo=UTC)
    # 02:00 Paris the same night still waits for 08:00 that morning.
    assert quiet.hold_until(datetime(2026, 1, 11, 1, 0, tzinfo=UTC), PARIS) == datetime(
        2026, 1, 11, 7, 0, tzinfo=UTC
    )


def test_a_send_during_the_day_is_not_held() -> None:
    quiet = QuietHours.parse("22:00-08:00")
    assert quiet is not None
    assert quiet.hold_until(datetime(2026, 1, 10, 12, 0, tzinfo=UTC), PARIS) is None


def test_daytime_window_without_wrapping() -> None:
    quiet = QuietHours.parse("12:30-14")
    assert quiet is not None
    assert quiet.hold_until(datetime(2026, 7, 1, 11, 0, tzinfo=UTC), PARIS) == datetime(
        2026, 7, 1, 12, 0, tzinfo=UTC
    )


@pytest.mark.parametrize("text", ["late", "25-8", "8-8", "22:75-8"])
def test_invalid_windows_name_the_setting(text: str) -> None:
    with pytest.raises(ConfigurationError, match="POSTWISE_QUIET_HOURS"):
        QuietHours.parse(text)
