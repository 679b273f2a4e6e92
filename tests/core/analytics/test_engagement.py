"""The engagement score: exponentially decayed, incremental, independent of arrival order."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from postwise.analytics.engagement import EngagementModel
from postwise.analytics.sinks import StoredEvent

T0 = datetime(2025, 1, 1, tzinfo=UTC)
MODEL = EngagementModel(half_life_days=10)


def _direct(events: list[StoredEvent], at: datetime) -> float:
    """The definition: every event's weight decayed to ``at``."""
    return sum(
        MODEL.weight(e) * 0.5 ** ((at - e.occurred_at).total_seconds() / (10 * 86400))
        for e in events
    )


def _incremental(batches: list[list[StoredEvent]]) -> tuple[float, datetime | None]:
    score, updated = 0.0, None
    for batch in batches:
        for delta, at in MODEL.fold(batch).values():
            score, updated = MODEL.combine(score, updated, delta, at)
    return score, updated


events_strategy = st.lists(
    st.tuples(
        st.sampled_from(["open", "click", "conversion", "page_view"]),
        st.integers(min_value=0, max_value=200 * 86400),
    ),
    min_size=1,
    max_size=40,
)


@settings(max_examples=200, deadline=None)
@given(events_strategy, st.randoms(use_true_random=False), st.integers(min_value=1, max_value=5))
def test_incremental_updates_equal_the_definition_in_any_order_and_batching(
    spec: list[tuple[str, int]], rng: random.Random, batches: int
) -> None:
    events = [
        StoredEvent(f"e{i}", kind, T0 + timedelta(seconds=offset), contact_id=1)
        for i, (kind, offset) in enumerate(spec)
    ]
    rng.shuffle(events)
    cut = sorted(rng.sample(range(1, len(events)), min(batches - 1, len(events) - 1)))
    chunks = [events[a:b] for a, b in zip([0, *cut], [*cut, len(events)], strict=True)]
    score, updated = _incremental(chunks)
    if updated is None:
        assert _direct(events, T0) == 0
        return
    assert score == pytest.approx(_direct(events, updated), rel=1e-9, abs=1e-12)
    later = updated + timedelta(days=25)
    assert MODEL.current(score, updated, later) == pytest.approx(
        _direct(events, later), rel=1e-9, abs=1e-12
    )


def test_one_half_life_halves_the_score() -> None:
    assert MODEL.current(8.0, T0, T0 + timedelta(days=10)) == pytest.approx(4.0)


def test_machine_opens_and_scanner_clicks_weigh_nothing() -> None:
    machine = StoredEvent("m", "open", T0, contact_id=1, properties={"machine_open": True})
    scanner = StoredEvent("s", "click", T0, contact_id=1, properties={"scanner": True})
    assert MODEL.fold([machine, scanner]) == {}


def test_very_old_scores_decay_to_zero_without_underflow_errors() -> None:
    assert MODEL.current(5.0, T0, T0 + timedelta(days=365 * 200)) < 1e-300
    assert not math.isnan(MODEL.combine(1.0, T0, 1.0, T0 + timedelta(days=365 * 300))[0])
