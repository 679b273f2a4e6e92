"""Training from stored data: items from the ``item`` table, interactions from product events."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from recommend_helpers import store_events, store_items

from postwise.db.models import Event
from postwise.errors import ValidationError
from postwise.recommend.base import Item
from postwise.recommend.catalogue import (
    InteractionSource,
    iter_interactions,
    load_items,
    parse_weights,
)
from postwise.recommend.service import fit_from_database
from postwise.recommend.synthetic import SyntheticData
from postwise.runtime import Runtime

NOW = datetime.now(UTC).replace(microsecond=0)


def _event(
    n: int,
    kind: str,
    contact_id: int | None,
    properties: dict[str, Any],
    *,
    at: datetime | None = None,
    automated: bool = False,
) -> Event:
    return Event(
        event_id=f"t-{n}",
        type=kind,
        occurred_at=at or NOW - timedelta(hours=n),
        contact_id=contact_id,
        properties=properties,
        automated=automated,
    )


def _pairs(
    runtime: Runtime, source: InteractionSource | None = None
) -> dict[tuple[int, str], float]:
    return {(i.contact_id, i.item_id): i.weight for i in iter_interactions(runtime.engine, source)}


def test_events_become_one_weighted_interaction_per_contact_and_item(runtime: Runtime) -> None:
    with runtime.session() as session:
        session.add_all(
            [
                _event(1, "view", 1, {"item_id": "a"}),
                _event(2, "view", 1, {"item_id": "a"}),
                _event(3, "purchase", 1, {"item_id": "a", "price": 10}),
                _event(4, "click", 1, {"item_id": "b"}),
                _event(5, "add_to_cart", 2, {"item_id": 42}),  # numbers are ids too
            ]
        )
    assert _pairs(runtime) == {(1, "a"): 7.0, (1, "b"): 2.0, (2, "42"): 3.0}
    latest = {i.item_id: i.at for i in iter_interactions(runtime.engine)}
    assert latest["a"] == NOW - timedelta(hours=1)
    assert latest["a"].tzinfo is not None


def test_events_that_say_nothing_about_taste_are_ignored(runtime: Runtime) -> None:
    with runtime.session() as session:
        session.add_all(
            [
                _event(1, "open", 1, {"item_id": "a"}),  # not an interaction type
                _event(2, "view", 1, {"sku": "a"}),  # no item_id
                _event(3, "view", None, {"item_id": "a"}),  # no contact
                _event(4, "click", 1, {"item_id": "a"}, automated=True),  # a link scanner
                _event(5, "view", 1, {"item_id": "old"}, at=NOW - timedelta(days=400)),
                _event(6, "view", 1, {"item_id": "kept"}),
            ]
        )
    assert _pairs(runtime) == {(1, "kept"): 1.0}
    everything = InteractionSource(lookback_days=None)
    assert _pairs(runtime, everything) == {(1, "kept"): 1.0, (1, "old"): 1.0}


def test_weights_are_configurable(runtime: Runtime) -> None:
    with runtime.session() as session:
        session.add_all(
            [
                _event(1, "view", 1, {"item_id": "a"}),
                _event(2, "wishlist", 1, {"item_id": "b"}),
                _event(3, "purchase", 1, {"item_id": "c"}),
            ]
        )
    source = InteractionSource(weights=parse_weights(["wishlist=4", "purchase=10"]))
    assert _pairs(runtime, source) == {(1, "b"): 4.0, (1, "c"): 10.0}


def test_max_pairs_keeps_the_most_recently_active_pairs(runtime: Runtime) -> None:
    with runtime.session() as session:
        session.add_all(
            [_event(n, "view", n, {"item_id": f"i{n}"}) for n in range(1, 11)]  # n hours ago
        )
    kept = _pairs(runtime, InteractionSource(max_pairs=3))
    assert set(kept) == {(1, "i1"), (2, "i2"), (3, "i3")}


def test_weights_must_be_positive_numbers() -> None:
    with pytest.raises(ValidationError, match="purchase=abc"):
        parse_weights(["purchase=abc"])
    with pytest.raises(ValidationError, match="positive"):
        InteractionSource(weights={"view": -1.0})
    with pytest.raises(ValidationError):
        parse_weights(["view"])


def test_load_items_returns_the_active_catalogue_in_id_order(runtime: Runtime) -> None:
    store_items(runtime, [Item("b", "B", "https://x.test/b", None, {"colour": "red"})])
    store_items(runtime, [Item("a", "A", "https://x.test/a")])
    store_items(runtime, [Item("c", "C", "https://x.test/c")], active=False)
    items = load_items(runtime.engine)
    assert [item.id for item in items] == ["a", "b"]
    assert items[1].attributes == {"colour": "red"}
    assert [item.id for item in load_items(runtime.engine, active_only=False)] == ["a", "b", "c"]


def test_a_recommender_fitted_from_the_database_learns_the_clusters(
    runtime: Runtime, recent_clusters: SyntheticData
) -> None:
    store_items(runtime, recent_clusters.items)
    events = store_events(runtime, recent_clusters.interactions)

    recommender, info = fit_from_database(runtime, "collaborative")

    assert info["items"] == len(recent_clusters.items)
    assert info["pairs"] == events  # the generator never repeats a pair
    assert info["backend"] == "surprise"
    inside = total = 0
    for contact_id in range(1, 101):
        for item in recommender.recommend(contact_id, 5):
            total += 1
            inside += (
                recent_clusters.item_cluster[item.id] == recent_clusters.contact_cluster[contact_id]
            )
    assert inside / total > 0.8
