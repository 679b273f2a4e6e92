"""What each recommender recommends, on generated data where the right answer is known."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from postwise.errors import ConfigurationError
from postwise.recommend.base import Interaction, Item
from postwise.recommend.collaborative import CollaborativeRecommender
from postwise.recommend.content import ContentRecommender, item_features
from postwise.recommend.hybrid import HybridRecommender
from postwise.recommend.matrix import InteractionMatrix
from postwise.recommend.popularity import PopularityRecommender
from postwise.recommend.synthetic import SyntheticData


def _share_in_own_cluster(
    recommender: CollaborativeRecommender | ContentRecommender | HybridRecommender,
    data: SyntheticData,
    contacts: range,
) -> float:
    inside = total = 0
    for contact_id in contacts:
        for item in recommender.recommend(contact_id, 5):
            total += 1
            inside += data.item_cluster[item.id] == data.contact_cluster[contact_id]
    return inside / total


@pytest.mark.parametrize("backend", ["surprise", "numpy"])
def test_collaborative_recommends_within_the_contacts_taste_cluster(
    clusters: SyntheticData, backend: str
) -> None:
    recommender = CollaborativeRecommender(backend=backend)  # type: ignore[arg-type]
    recommender.fit(clusters.interactions, clusters.items)
    assert recommender.backend == backend
    # Four clusters: a recommender blind to taste would land in the own cluster 25% of the time.
    assert _share_in_own_cluster(recommender, clusters, range(1, 201)) > 0.8


def test_popularity_does_not_know_taste(clusters: SyntheticData) -> None:
    recommender = PopularityRecommender(half_life_days=None)
    recommender.fit(clusters.interactions, clusters.items)
    inside = total = 0
    for contact_id in range(1, 201):
        for item in recommender.recommend(contact_id, 5):
            total += 1
            inside += clusters.item_cluster[item.id] == clusters.contact_cluster[contact_id]
    assert inside / total < 0.5


def test_content_recommends_items_like_the_one_viewed() -> None:
    items = [
        Item("run-1", "Trail running shoe", "https://x.test/1", None, {"category": "running"}),
        Item("run-2", "Marathon running shoe", "https://x.test/2", None, {"category": "running"}),
        Item("run-3", "Running socks", "https://x.test/3", None, {"category": "running"}),
        Item("cof-1", "Espresso grinder", "https://x.test/4", None, {"category": "coffee"}),
        Item("cof-2", "Coffee beans", "https://x.test/5", None, {"category": "coffee"}),
        Item("cof-3", "Espresso cups", "https://x.test/6", None, {"category": "coffee"}),
    ]
    # Coffee is what everybody else buys: popularity would show it first.
    history = [Interaction(c, f"cof-{k}", 5.0) for c in range(10, 20) for k in (1, 2, 3)]
    recommender = ContentRecommender()
    recommender.fit([*history, Interaction(1, "run-1", 1.0)], items)

    ids = [item.id for item in recommender.recommend(1, 3)]

    assert ids[:2] == ["run-2", "run-3"]  # "running shoe" twice beats "running" once
    assert "run-1" not in ids


def test_content_ranks_new_items_nobody_has_touched(clusters: SyntheticData) -> None:
    new = Item(
        "new-espresso",
        "Espresso barista roast",
        "https://x.test/new",
        None,
        {"category": "coffee", "tags": ["espresso", "roast", "barista"]},
    )
    coffee_contact = next(c for c, k in clusters.contact_cluster.items() if k == 1)
    # Without the popularity prior (validation favours items with a history: held-out items
    # have one by definition), an item nobody has touched ranks by similarity alone.
    recommender = ContentRecommender(prior=0.0)
    recommender.fit(clusters.interactions, [*clusters.items, new])
    assert "new-espresso" in [item.id for item in recommender.recommend(coffee_contact, 10)]

    collaborative = CollaborativeRecommender()
    collaborative.fit(clusters.interactions, [*clusters.items, new])
    assert "new-espresso" not in [item.id for item in collaborative.recommend(coffee_contact, 10)]


def test_item_features_cover_title_words_categorical_values_and_lists() -> None:
    item = Item(
        "x",
        "The Trail Shoe",
        "https://x.test",
        None,
        {"category": "Running", "tags": ["light", "waterproof"], "sale": True, "price": 19.5},
    )
    assert sorted(item_features(item)) == sorted(
        ["trail", "shoe", "category=running", "tags=light", "tags=waterproof", "sale=true"]
    )


def test_hybrid_gives_cold_start_contacts_the_popular_items(clusters: SyntheticData) -> None:
    hybrid = HybridRecommender()
    hybrid.fit(clusters.interactions, clusters.items)
    popularity = PopularityRecommender(half_life_days=30.0)
    popularity.fit(clusters.interactions, clusters.items)

    cold = [item.id for item in hybrid.recommend(999_999, 8)]

    assert cold == [item.id for item in popularity.recommend(999_999, 8)]
    assert hybrid.scores(999_999) is None


def test_hybrid_gives_a_contact_with_one_view_items_of_that_taste(
    clusters: SyntheticData,
) -> None:
    garden = [item for item in clusters.items if clusters.item_cluster[item.id] == 3]
    newcomer = 50_000
    hybrid = HybridRecommender()
    hybrid.fit([*clusters.interactions, Interaction(newcomer, garden[5].id, 1.0)], clusters.items)

    recommended = hybrid.recommend(newcomer, 5)

    assert [clusters.item_cluster[item.id] for item in recommended] == [3] * 5
    assert garden[5].id not in {item.id for item in recommended}


def test_hybrid_blend_is_chosen_per_segment_on_validation_and_never_below_a_part(
    clusters: SyntheticData,
) -> None:
    from postwise.recommend.hybrid import PARTS
    from postwise.recommend.matrix import InteractionMatrix
    from postwise.recommend.tuning import best_blend, validation_split

    hybrid = HybridRecommender()
    hybrid.fit(clusters.interactions, clusters.items)
    validated = hybrid.tuned["validation"]
    assert isinstance(validated, dict) and set(validated) == {"cold", "warm"}
    for segment in ("cold", "warm"):
        weights = hybrid.blend[segment]
        assert len(weights) == len(PARTS) and sum(weights) == pytest.approx(1.0)

    # best_blend searches a grid that holds every part alone: never worse than the best part.
    matrix = InteractionMatrix.build(clusters.interactions, clusters.items)
    validation = validation_split(matrix)
    assert validation is not None
    rng = np.random.default_rng(0)
    parts = [rng.random((len(validation), matrix.n_catalogue)) for _ in range(3)]
    blocked = validation.blocked()
    _, blended = best_blend(parts, validation.held, blocked)
    for index in range(3):
        alone = [np.zeros_like(p) if i != index else p for i, p in enumerate(parts)]
        _, single = best_blend([alone[index]], validation.held, blocked)
        assert blended >= single - 1e-12


def test_hybrid_beats_both_parts_for_short_histories() -> None:
    from postwise.recommend.evaluation import evaluate, leave_last_out
    from postwise.recommend.synthetic import clustered

    data = clustered(contacts=1500, clusters=6, items_per_cluster=40, per_contact=(2, 4), seed=4)
    split = leave_last_out(data.interactions, data.items)
    results = {
        r.recommender: r.hit_rate
        for r in evaluate(
            {
                "collaborative": CollaborativeRecommender,
                "content": ContentRecommender,
                "hybrid": HybridRecommender,
            },
            split,
            data.items,
        )
    }
    assert results["hybrid"] > max(results["collaborative"], results["content"])


def test_items_only_in_interactions_inform_taste_but_are_never_recommended() -> None:
    items = [Item(f"i{n}", f"Item {n}", f"https://x.test/{n}") for n in range(6)]
    interactions = [
        Interaction(c, item_id, 1.0) for c in range(1, 9) for item_id in ("gone", "i0", "i1", "i2")
    ]
    for recommender in (CollaborativeRecommender(), ContentRecommender(), HybridRecommender()):
        recommender.fit([*interactions, Interaction(20, "gone", 1.0)], items)
        recommended = {item.id for item in recommender.recommend(20, 6)}
        assert "gone" not in recommended
        assert recommended <= {item.id for item in items}


def test_seen_and_excluded_items_are_left_out_and_blocks_are_filled_from_popularity() -> None:
    items = [Item(f"i{n}", f"Item {n}", f"https://x.test/{n}") for n in range(5)]
    interactions = [Interaction(1, "i0", 1.0), Interaction(2, "i0", 1.0), Interaction(2, "i1", 1.0)]
    for recommender in (CollaborativeRecommender(), ContentRecommender(), HybridRecommender()):
        recommender.fit(interactions, items)
        ids = [item.id for item in recommender.recommend(1, 5, exclude=["i2"])]
        assert sorted(ids) == ["i1", "i3", "i4"], type(recommender).__name__


def test_the_matrix_sums_repeated_interactions_and_drops_meaningless_weights() -> None:
    items = [Item("a", "A", "https://x.test/a"), Item("b", "B", "https://x.test/b")]
    matrix = InteractionMatrix.build(
        [
            Interaction(7, "a", 1.0),
            Interaction(7, "a", 5.0),
            Interaction(7, "b", 0.0),
            Interaction(7, "b", float("nan")),
            Interaction(3, "b", -1.0),
        ],
        items,
    )
    assert matrix.contact_ids.tolist() == [7]
    assert matrix.n_pairs == 1
    row = matrix.row(7)
    assert row is not None
    columns, weights = matrix.history(row)
    assert columns.tolist() == [0] and weights.tolist() == [6.0]
    assert matrix.row(3) is None


def test_popularity_ranking_of_the_matrix_decays_with_age() -> None:
    items = [Item("old", "Old", "https://x.test/o"), Item("new", "New", "https://x.test/n")]
    now = datetime(2026, 6, 1, tzinfo=UTC)
    old = datetime(2026, 1, 1, tzinfo=UTC)
    interactions = [Interaction(c, "old", 1.0, old) for c in range(10)] + [
        Interaction(c, "new", 1.0, now) for c in range(3)
    ]
    matrix = InteractionMatrix.build(interactions, items, half_life_days=30.0, now=now)
    assert [matrix.items[int(c)].id for c in matrix.popularity] == ["new", "old"]


def test_collaborative_refuses_a_backend_it_cannot_use() -> None:
    with pytest.raises(ConfigurationError, match="backend"):
        CollaborativeRecommender(backend="tensorflow")  # type: ignore[arg-type]


def test_collaborative_fits_an_empty_history_and_answers_from_the_catalogue() -> None:
    items = [Item(f"i{n}", f"Item {n}", f"https://x.test/{n}") for n in range(3)]
    for recommender in (
        CollaborativeRecommender(backend="surprise"),
        CollaborativeRecommender(backend="numpy"),
    ):
        recommender.fit([], items)
        assert [item.id for item in recommender.recommend(1, 2)] == ["i0", "i1"]


def test_recommenders_fitted_on_nothing_recommend_nothing() -> None:
    for recommender in (CollaborativeRecommender(), ContentRecommender(), HybridRecommender()):
        recommender.fit([], [])
        assert recommender.recommend(1, 5) == []


def test_collaborative_training_is_deterministic_for_a_seed(clusters: SyntheticData) -> None:
    first, second = CollaborativeRecommender(seed=3), CollaborativeRecommender(seed=3)
    first.fit(clusters.interactions, clusters.items)
    second.fit(clusters.interactions, clusters.items)
    a, b = first.scores(1), second.scores(1)
    assert a is not None and b is not None and np.array_equal(a, b)


def test_hybrid_shows_far_more_of_the_catalogue_than_popularity(clusters: SyntheticData) -> None:
    shown: dict[str, set[str]] = {}
    for recommender in (HybridRecommender(), PopularityRecommender()):
        recommender.fit(clusters.interactions, clusters.items)
        shown[recommender.name] = {
            item.id for contact_id in range(1, 401) for item in recommender.recommend(contact_id, 5)
        }
    # Not the same handful for everybody: each cluster's items reach that cluster.
    assert len(shown["hybrid"]) >= 3 * len(shown["popularity"])
    assert len(shown["hybrid"]) > 0.5 * len(clusters.items)
