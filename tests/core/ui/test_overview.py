"""The overview's counts come from the database, bucketed by hour or day."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from postwise.db.models import Event
from postwise.runtime import Runtime
from postwise.ui.pages import _event_counts


def test_events_are_counted_per_type_and_day_by_the_database(runtime: Runtime) -> None:
    now = datetime.now(UTC)
    with runtime.session() as s:
        for i, (t, ago) in enumerate([("open", 1), ("open", 2), ("sent", 30), ("click", 50)]):
            s.add(Event(event_id=f"e{i}", type=t, occurred_at=now - timedelta(hours=ago)))
        s.commit()
    since = now - timedelta(days=3)
    counts = _event_counts(runtime, ("sent", "open", "click"), since, 3, 24)
    assert sum(counts["open"]) == 2 and sum(counts["sent"]) == 1 and sum(counts["click"]) == 1
    assert counts["open"][2] == 2 and counts["sent"][1] == 1 and counts["click"][0] == 1
