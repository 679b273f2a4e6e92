"""Business rules and bad input: exclusions, category caps and boosts on every recommender;
blocks that still render from an empty catalogue, an older model or a killed training."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from recommend_helpers import store_events, store_items

from postwise.db.models import CatalogueItem
from postwise.errors import ConfigurationError, ValidationError
from postwise.recommend import service
from postwise.recommend.als import AlsRecommender, implicit_available
from postwise.recommend.base import Interaction, Item, Recommender
from postwise.recommend.collaborative import CollaborativeRecommender
from postwise.recommend.content import ContentRecommender
from postwise.recommend.ease import EaseRecommender
from postwise.recommend.hybrid import HybridRecommender
from postwise.recommend.popularity import PopularityRecommender
from postwise.recommend.rules import (
    BusinessRules,
    Purchases,
    RuledModel,
    apply_rules,
    in_stock,
    recommend_with_rules,
)
from postwise.recommend.service import recommend_block, recommender_for, train
from postwise.recommend.store import FileModelStore, model_store, unpack_model
from postwise.recommend.synthetic import SyntheticData
from postwise.runtime import Runtime


def _item(item_id: str, **attributes: Any) -> Item:
    return Item(item_id, item_id.title(), f"https://x.test/{item_id}", None, attributes)


RANKED = [
    _item("a", category="shoes"),
    _item("b", category="shoes"),
    _item("c", category="shoes", brand="acme"),
    _item("d", category="hats"),
    _item("e", category="hats", in_stock=False),
    _item("f"),
]


def _ids(items: Iterable[Item]) -> list[str]:
    return [item.id for item in items]


def test_out_of_stock_values_and_unavailable_ids_are_excluded() -> None:
    assert not in_stock(_item("x", in_stock=False))
    assert not in_stock(_item("x", in_stock=0))
    assert not in_stock(_item("x", in_stock="no"))
    assert not in_stock(_item("x", stock=-1), "stock")
    assert in_stock(_item("x", in_stock=3)) and in_stock(_item("x"))
    kept = apply_rules(RANKED, 10, BusinessRules(), unavailable={"b"})
    assert _ids(kept) == ["a", "c", "d", "f"]


def test_category_caps_keep_the_best_of_each_category_and_leave_uncategorised_alone() -> None:
    kept = apply_rules(RANKED, 4, BusinessRules(max_per_category=1))
    assert _ids(kept) == ["a", "d", "f"]
    kept = apply_rules(RANKED, 4, BusinessRules(max_per_category=2))
    assert _ids(kept) == ["a", "b", "d", "f"]


def test_boosts_move_items_up_by_rank_score_and_can_demote() -> None:
    # c is third: 1/log2(4) = 0.5; doubled it ties with a (1.0) and keeps its place after it.
    assert _ids(apply_rules(RANKED, 3, BusinessRules(boosts={"brand=acme": 2.0}))) == [
        "a",
        "c",
        "b",
    ]
    assert _ids(apply_rules(RANKED, 3, BusinessRules(boosts={"brand=ACME": 3.0})))[0] == "c"
    demoted = apply_rules(RANKED, 6, BusinessRules(boosts={"category=shoes": 0.1}))
    assert _ids(demoted)[:2] == ["d", "f"]


def test_bad_rules_are_refused_with_the_field() -> None:
    with pytest.raises(ValidationError, match="ATTRIBUTE=VALUE"):
        BusinessRules(boosts={"acme": 2.0})
    with pytest.raises(ValidationError, match="positive"):
        BusinessRules(boosts={"brand=acme": 0.0})
    with pytest.raises(ValidationError):
        BusinessRules(max_per_category=0)


class _Fixed(Recommender):
    """A plugin-like recommender that ranks a fixed list and ignores history (but honours
    ``exclude``, as the contract requires)."""

    name = "fixed"

    def __init__(self, items: Sequence[Item]) -> None:
        self.items = list(items)

    def fit(self, interactions: Iterable[Interaction], items: Sequence[Item]) -> None:
        pass

    def recommend(self, contact_id: int, n: int, *, exclude: Iterable[str] = ()) -> list[Item]:
        skip = set(exclude)
        return [item for item in self.items if item.id not in skip][:n]


def test_purchases_are_excluded_even_for_a_recommender_that_ignores_history() -> None:
    model = RuledModel(_Fixed(RANKED), Purchases([(7, "a"), (7, "d"), (8, "b")]))
    assert _ids(recommend_with_rules(model, 7, 3, BusinessRules())) == ["b", "c", "f"]
    assert _ids(recommend_with_rules(model, 9, 2, BusinessRules())) == ["a", "b"]
    everything = BusinessRules(exclude_purchased=False)
    assert _ids(recommend_with_rules(model, 7, 2, everything)) == ["a", "b"]


def _recommenders() -> list[Recommender]:
    found: list[Recommender] = [
        PopularityRecommender(),
        CollaborativeRecommender(backend="numpy"),
        ContentRecommender(),
        EaseRecommender(),
        HybridRecommender(),
    ]
    if implicit_available():
        found.append(AlsRecommender(factors=8, half_life=None))
    return found


def test_every_recommender_gets_caps_boosts_and_exclusions_after_scoring(
    clusters: SyntheticData,
) -> None:
    contact = 5
    history = {i.item_id for i in clusters.interactions if i.contact_id == contact}
    banned = {item.id for item in clusters.items[:10]}
    stock_out = {item.id for item in clusters.items[10:20]}
    items = [
        Item(i.id, i.title, i.url, i.image_url, {**i.attributes, "in_stock": i.id not in stock_out})
        for i in clusters.items
    ]
    rules = BusinessRules(max_per_category=2, boosts={"category=camping": 4.0})
    for recommender in _recommenders():
        recommender.fit(clusters.interactions, items)
        block = recommend_with_rules(recommender, contact, 6, rules, unavailable=banned)
        ids = _ids(block)
        assert len(ids) == 6, recommender.name
        assert not set(ids) & (banned | stock_out | history), recommender.name
        categories = [item.attributes["category"] for item in block]
        assert max(categories.count(c) for c in set(categories)) <= 2, recommender.name
        assert "camping" in categories[:2], recommender.name


def test_a_block_respects_settings_purchases_and_items_retired_after_training(
    make_settings: Any, runtime: Runtime, recent_clusters: SyntheticData
) -> None:
    store_items(runtime, recent_clusters.items)
    store_events(runtime, recent_clusters.interactions)
    settings = make_settings(recommender="popularity", recommend_max_per_category=1)
    worker = Runtime(settings)
    train(worker)
    block = recommend_block(worker, 1, 4)
    categories = [item.attributes["category"] for item in block]
    assert len(block) == 4 and len(set(categories)) == 4

    top = block[0].id
    with worker.engine.begin() as connection:
        connection.execute(
            sa.update(CatalogueItem).where(CatalogueItem.id == top).values(active=False)  # type: ignore[arg-type]
        )
    service._serving(worker, "popularity", None)._unavailable_checked = -float("inf")
    assert top not in _ids(recommend_block(worker, 1, 4))
    rendered = recommender_for(worker)(1, 4)
    assert top not in [item["id"] for item in rendered]
    worker.close()


def test_purchased_items_are_collected_at_training(
    runtime: Runtime, recent_clusters: SyntheticData
) -> None:
    store_items(runtime, recent_clusters.items)
    store_events(runtime, recent_clusters.interactions)
    report = train(runtime, "popularity")
    bought = {i for i in recent_clusters.interactions if i.weight == 5.0}
    assert report.model.info["purchases"] == len({(i.contact_id, i.item_id) for i in bought})


def test_an_empty_catalogue_and_a_contact_without_history_still_render(
    make_settings: Any,
) -> None:
    for name in ("ease", "hybrid", "content", "popularity"):
        worker = Runtime(make_settings(recommender=name))
        assert recommender_for(worker)(1, 3) == []
        worker.close()
    for recommender in _recommenders():
        recommender.fit([], [])
        assert recommender.recommend(1, 3) == []
        items = [_item("a"), _item("b")]
        recommender.fit([Interaction(1, "a", 1.0)], items)
        assert _ids(recommender.recommend(2, 2)) == ["a", "b"]  # no history: popularity


def test_items_without_metadata_are_recommended(clusters: SyntheticData) -> None:
    bare = [Item(i.id, i.id, i.url) for i in clusters.items]
    for recommender in (ContentRecommender(), HybridRecommender()):
        recommender.fit(clusters.interactions, bare)
        assert len(recommender.recommend(3, 5)) == 5


def test_a_model_from_an_older_version_is_refused_and_retrained(
    make_settings: Any, runtime: Runtime, recent_clusters: SyntheticData
) -> None:
    store_items(runtime, recent_clusters.items)
    store_events(runtime, recent_clusters.interactions)
    settings = make_settings(recommender="popularity")
    worker = Runtime(settings)
    store = model_store(worker)
    good = store.save("popularity", PopularityRecommender(), trained_at=service.utcnow())
    blob = store._read(good)
    assert blob is not None
    old = blob.replace(b"postwise-model/2\n", b"postwise-model/1\n", 1)
    store._write(good, old)
    with pytest.raises(ConfigurationError, match="format 1"):
        unpack_model(old, settings.signing_keys())
    # The block still renders: the worker refuses the old model and trains a new one.
    assert len(recommender_for(worker)(1, 4)) == 4
    current = store.current("popularity")
    assert current is not None and current.version != good.version
    worker.close()


def test_a_training_killed_halfway_leaves_the_stored_model_whole(
    make_settings: Any, runtime: Runtime, recent_clusters: SyntheticData, monkeypatch: Any
) -> None:
    store_items(runtime, recent_clusters.items)
    store_events(runtime, recent_clusters.interactions)
    worker = Runtime(make_settings(recommender="popularity"))
    before = train(worker).model

    def killed(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(PopularityRecommender, "fit", killed)
    with pytest.raises(KeyboardInterrupt):
        train(worker)
    monkeypatch.undo()
    # The stored model is the previous one, whole, which a new process loads.
    assert model_store(worker).current("popularity") == before
    fresh = Runtime(make_settings(recommender="popularity"))
    assert len(recommender_for(fresh)(1, 4)) == 4
    assert model_store(fresh).current("popularity") == before
    worker.close()
    fresh.close()


def test_a_file_store_killed_while_writing_keeps_the_previous_model(
    tmp_path: Path, monkeypatch: Any
) -> None:
    store = FileModelStore(tmp_path, [b"k" * 32])
    before = store.save("popularity", PopularityRecommender(), trained_at=service.utcnow())

    def killed(*args: Any, **kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("postwise.recommend.store.os.replace", killed)
    fitted = PopularityRecommender()
    fitted.fit([Interaction(1, "a", 1.0)], [_item("a")])
    with pytest.raises(KeyboardInterrupt):
        store.save("popularity", fitted, trained_at=service.utcnow())
    monkeypatch.undo()
    assert store.current("popularity") == before
    loaded = store.load("popularity")
    assert loaded is not None and loaded[0] == before
    # A killed process's temporary file is removed by the next save.
    (tmp_path / ".popularity.abc.model.99999.tmp").write_bytes(b"half")
    store.save("popularity", fitted, trained_at=service.utcnow())
    assert not list(tmp_path.glob("*.tmp")) and len(list(tmp_path.glob("*.model"))) == 1
