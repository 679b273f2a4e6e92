"""Offline evaluation: hold out the last interaction; learnt recommenders beat popularity."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from postwise.recommend.base import Interaction, Item
from postwise.recommend.collaborative import CollaborativeRecommender
from postwise.recommend.content import ContentRecommender
from postwise.recommend.evaluation import evaluate, leave_last_out
from postwise.recommend.hybrid import HybridRecommender
from postwise.recommend.popularity import PopularityRecommender
from postwise.recommend.synthetic import SyntheticData, clustered

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _items(*ids: str) -> list[Item]:
    return [Item(i, i.upper(), f"https://x.test/{i}") for i in ids]


def test_the_last_item_of_each_contact_with_two_or_more_is_held_out() -> None:
    interactions = [
        Interaction(1, "a", 1.0, T0),
        Interaction(1, "b", 1.0, T0 + timedelta(days=2)),
        Interaction(1, "c", 1.0, T0 + timedelta(days=1)),
        Interaction(2, "a", 1.0, T0),  # one item only: nothing to hold out
        Interaction(3, "a", 1.0, T0 + timedelta(days=5)),  # a again, later: a is the last
        Interaction(3, "b", 1.0, T0 + timedelta(days=3)),
        Interaction(3, "a", 1.0, T0),
    ]
    split = leave_last_out(interactions, _items("a", "b", "c"))
    assert split.held_out == {1: "b", 3: "a"}
    assert sorted((i.contact_id, i.item_id) for i in split.train) == [
        (1, "a"),
        (1, "c"),
        (2, "a"),
        (3, "b"),
    ]


def test_held_out_items_outside_the_catalogue_are_not_tested() -> None:
    interactions = [Interaction(1, "a", 1.0, T0), Interaction(1, "gone", 1.0, T0 + timedelta(1))]
    assert leave_last_out(interactions, _items("a")).held_out == {}


def test_max_contacts_samples_the_same_contacts_every_time(clusters: SyntheticData) -> None:
    first = leave_last_out(clusters.interactions, clusters.items, max_contacts=50)
    second = leave_last_out(clusters.interactions, clusters.items, max_contacts=50)
    assert len(first.held_out) == 50 and first.held_out == second.held_out
    # Contacts outside the sample keep all their interactions for training.
    assert len(first.train) == len(clusters.interactions) - 50


def test_hit_rate_counts_held_out_items_in_the_top_k() -> None:
    items = _items("a", "b", "c", "d")
    interactions = [Interaction(c, i, 1.0, T0) for c in range(1, 6) for i in ("a", "b")] + [
        Interaction(9, "c", 1.0, T0),
        Interaction(9, "a", 1.0, T0 + timedelta(days=1)),
    ]
    (result,) = evaluate(
        {"popularity": PopularityRecommender}, leave_last_out(interactions, items), items, k=1
    )
    # Training keeps a for contacts 1-5 and c for contact 9, so popularity ranks a, c, b, d.
    # Contacts 1-5 have a: their top 1 is c, not their held-out b. Contact 9's top 1 is a, its
    # held-out item. One hit in six; a and c are the two of four items ever shown.
    assert (result.contacts, result.hits) == (6, 1)
    assert result.hit_rate == 1 / 6
    assert result.coverage == 2 / 4


def test_collaborative_and_hybrid_beat_popularity_on_clustered_data() -> None:
    data = clustered(contacts=1200, seed=1)
    split = leave_last_out(data.interactions, data.items)
    results = {
        r.recommender: r
        for r in evaluate(
            {
                "popularity": PopularityRecommender,
                "collaborative": CollaborativeRecommender,
                "content": ContentRecommender,
                "hybrid": HybridRecommender,
            },
            split,
            data.items,
            k=10,
        )
    }
    popularity = results["popularity"].hit_rate
    assert results["collaborative"].hit_rate > 2 * popularity
    assert results["hybrid"].hit_rate > 2 * popularity
    assert results["content"].hit_rate > popularity
    assert results["hybrid"].coverage > 3 * results["popularity"].coverage


def test_recommenders_never_see_the_held_out_items_they_are_judged_on() -> None:
    from postwise.recommend.base import Recommender

    data = clustered(contacts=200, seed=5)
    split = leave_last_out(data.interactions, data.items, cold_share=0.3)
    seen: list[tuple[int, str]] = []

    class Spy(Recommender):
        name = "spy"

        def fit(self, interactions: Any, items: Any) -> None:
            seen.extend((i.contact_id, i.item_id) for i in interactions)

        def recommend(self, contact_id: int, n: int, *, exclude: Any = ()) -> list[Item]:
            return []

    evaluate({"spy": Spy}, split, data.items)
    assert seen and not set(seen) & set(split.held_out.items())
    cold = [c for c in split.held_out if split.segment(c) == "cold"]
    assert cold and all(1 <= split.history[c] <= 3 for c in cold)
