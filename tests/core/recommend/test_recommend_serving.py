"""Serving: models are trained once, stored, and loaded by every process that renders."""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import pytest
import redis
import sqlalchemy as sa
from recommend_helpers import store_events, store_items

from postwise.content import TemplateCache, TemplateSource
from postwise.db.models import Event
from postwise.errors import ConfigurationError, UnknownComponentError
from postwise.recommend import service, store
from postwise.recommend.base import Item
from postwise.recommend.content import ContentRecommender
from postwise.recommend.popularity import PopularityRecommender
from postwise.recommend.service import recommender_for, serving_recommender, train
from postwise.recommend.store import (
    FileModelStore,
    RedisModelStore,
    model_store,
    pack_model,
    unpack_model,
)
from postwise.recommend.synthetic import SyntheticData
from postwise.runtime import Runtime
from postwise.settings import Settings


@pytest.fixture
def seeded(runtime: Runtime, recent_clusters: SyntheticData) -> SyntheticData:
    store_items(runtime, recent_clusters.items)
    store_events(runtime, recent_clusters.interactions)
    return recent_clusters


def _ids(items: Sequence[Mapping[str, Any]]) -> list[str]:
    return [item["id"] for item in items]


def _own_cluster_share(data: SyntheticData, recommend: Any, contacts: range) -> float:
    inside = total = 0
    for contact_id in contacts:
        for item in recommend(contact_id, 5):
            total += 1
            inside += data.item_cluster[item["id"]] == data.contact_cluster[contact_id]
    return inside / total


def _delete_events(runtime: Runtime) -> None:
    with runtime.engine.begin() as connection:
        connection.execute(sa.delete(Event))


def test_a_worker_loads_the_trained_model_instead_of_training(
    settings: Settings, runtime: Runtime, seeded: SyntheticData
) -> None:
    settings = settings.model_copy(update={"recommender": "hybrid"})
    trainer = Runtime(settings)
    report = train(trainer, source=None)
    assert report.model.name == "hybrid" and report.pairs == len(seeded.interactions)
    # With the history gone, a worker that trained now would know no taste at all.
    _delete_events(runtime)

    worker = Runtime(settings)
    recommend = recommender_for(worker)

    assert _own_cluster_share(seeded, recommend, range(1, 81)) > 0.8
    assert model_store(worker).current("hybrid") == report.model
    trainer.close()
    worker.close()


def test_the_first_process_without_a_model_trains_and_stores_one(
    settings: Settings, seeded: SyntheticData
) -> None:
    settings = settings.model_copy(update={"recommender": "collaborative"})
    first = Runtime(settings)
    assert model_store(first).current("collaborative") is None

    items = recommender_for(first)(1, 4)

    assert len(items) == 4 and set(items[0]) >= {"id", "title", "url", "image_url"}
    stored = model_store(first).current("collaborative")
    assert stored is not None and stored.info["pairs"] == len(seeded.interactions)
    first.close()


def test_workers_pick_up_a_newer_model_after_the_refresh_interval(
    settings: Settings, runtime: Runtime, seeded: SyntheticData, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = settings.model_copy(update={"recommender": "popularity"})
    trainer, worker = Runtime(settings), Runtime(settings)
    train(trainer)
    recommend = recommender_for(worker)
    before = _ids(recommend(999_999, 3))

    # The catalogue changes: a new item everybody buys, then a new model.
    store_items(runtime, [Item("hit", "The hit", "https://x.test/hit")])
    with runtime.session() as session:
        session.add_all(
            [
                Event(
                    event_id=f"hit-{n}",
                    type="purchase",
                    occurred_at=max(i.at for i in seeded.interactions if i.at),
                    contact_id=n,
                    properties={"item_id": "hit"},
                )
                for n in range(1, 200)
            ]
        )
    train(trainer)
    assert _ids(recommend(999_999, 3)) == before  # within the refresh interval: no store read
    monkeypatch.setattr(service, "REFRESH_SECONDS", 0.0)
    assert _ids(recommend(999_999, 3))[0] == "hit"
    trainer.close()
    worker.close()


def test_a_model_not_signed_with_the_deployment_key_is_refused_and_replaced(
    make_settings: Any, seeded: SyntheticData
) -> None:
    settings = make_settings(recommender="content")
    trainer = Runtime(settings)
    good = train(trainer).model
    forged = Runtime(make_settings(recommender="content", secret_key="someone-elses-key"))
    bad = model_store(forged).save("content", PopularityRecommender(), trained_at=good.trained_at)

    worker = Runtime(settings)
    recommend = recommender_for(worker)

    assert len(recommend(1, 5)) == 5
    retrained = model_store(worker).current("content")
    # Retrained from the same data, the model is byte for byte the one the forgery replaced.
    assert retrained is not None and retrained.version == good.version != bad.version
    assert isinstance(serving_recommender(worker), ContentRecommender)
    for rt in (trainer, forged, worker):
        rt.close()


def test_unpack_refuses_tampered_or_foreign_bytes() -> None:
    blob = pack_model(PopularityRecommender(), b"key-1")
    assert isinstance(unpack_model(blob, [b"key-2", b"key-1"]), PopularityRecommender)
    tampered = blob[:-1] + bytes([blob[-1] ^ 1])
    with pytest.raises(ConfigurationError, match="not signed"):
        unpack_model(tampered, [b"key-1"])
    with pytest.raises(ConfigurationError, match="not one postwise wrote"):
        unpack_model(b"\x80\x04 a pickle", [b"key-1"])


def test_an_unknown_recommender_setting_fails_naming_the_installed_ones(
    settings: Settings,
) -> None:
    rt = Runtime(settings.model_copy(update={"recommender": "magic"}))
    with pytest.raises(UnknownComponentError, match="hybrid"):
        recommender_for(rt)
    rt.close()


def test_recommendation_blocks_render_from_the_served_model(
    settings: Settings, seeded: SyntheticData
) -> None:
    rt = Runtime(settings.model_copy(update={"recommender": "hybrid"}))
    train(rt)
    source = TemplateSource(
        id="rec-test",
        version=1,
        subject="For you",
        html='{% for item in recommendations(3) %}<a href="{{ item.url }}">{{ item.title }}</a>'
        "{% endfor %}",
        kind="transactional",
    )
    contact_id = 1
    content = (
        TemplateCache()
        .get(source)
        .render(
            {"id": contact_id, "email": "c1@example.com"},
            message_id="m-1",
            recommender=recommender_for(rt),
        )
    )
    expected = serving_recommender(rt).recommend(contact_id, 3)
    assert [item.title in content.html for item in expected] == [True, True, True]
    assert all(seeded.item_cluster[i.id] == seeded.contact_cluster[1] for i in expected)
    rt.close()


def test_the_file_store_keeps_one_version_per_name(settings: Settings, tmp_path: Any) -> None:
    files = FileModelStore(tmp_path / "models", settings.signing_keys())
    first = PopularityRecommender()
    first.fit([], [Item("a", "A", "https://x.test/a")])
    one = files.save("popularity", first, trained_at=service.utcnow())
    two = files.save("popularity", PopularityRecommender(), trained_at=service.utcnow())
    assert one.version != two.version
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [
        f"popularity.{two.version}.model",
        "popularity.json",
    ]
    loaded = files.load("popularity")
    assert loaded is not None and loaded[0] == two
    assert (tmp_path / "models" / f"popularity.{two.version}.model").stat().st_mode & 0o077 == 0
    files.delete("popularity")
    assert files.current("popularity") is None and files.load("popularity") is None


def test_the_redis_store_chunks_large_models_and_expires_replaced_ones(
    real_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(store, "_CHUNK", 100)
    redis_store = RedisModelStore(real_redis, [b"k"], prefix="postwise-test:recommend")
    fitted = PopularityRecommender()
    fitted.fit([], [Item(f"i{n}", f"Item {n}", f"https://x.test/{n}") for n in range(20)])

    one = redis_store.save("popularity", fitted, trained_at=service.utcnow())
    chunks = real_redis.keys(f"postwise-test:recommend:popularity:{one.version}:*")
    assert len(chunks) == -(-one.size // 100) > 1
    loaded = redis_store.load("popularity")
    assert loaded is not None and [i.id for i in loaded[1].recommend(1, 3)] == ["i0", "i1", "i2"]

    two = redis_store.save("popularity", PopularityRecommender(), trained_at=service.utcnow())
    assert redis_store.current("popularity") == two
    assert all(0 < real_redis.ttl(key) <= 300 for key in chunks)  # readers get a grace period
    redis_store.delete("popularity")
    assert redis_store.current("popularity") is None
    left = real_redis.keys("postwise-test:recommend:*")
    assert left and all(0 < real_redis.ttl(key) <= 300 for key in left)  # only the old, expiring


def test_with_a_redis_server_models_are_shared_through_redis(
    make_settings: Any, real_redis_url: str, real_redis: redis.Redis, seeded: SyntheticData
) -> None:
    settings = make_settings(redis_url=real_redis_url, recommender="popularity")
    trainer = Runtime(settings)
    assert isinstance(model_store(trainer), RedisModelStore)
    report = train(trainer)
    assert real_redis.get(f"{store.DEFAULT_PREFIX}:popularity") is not None
    worker = Runtime(settings)
    assert model_store(worker).current("popularity") == report.model
    assert len(recommender_for(worker)(1, 3)) == 3
    trainer.close()
    worker.close()


def test_while_one_process_trains_the_others_wait_for_its_model(
    settings: Settings, runtime: Runtime, seeded: SyntheticData, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service, "_WAIT_POLL_SECONDS", 0.05)
    settings = settings.model_copy(update={"recommender": "collaborative"})
    trainer, waiter = Runtime(settings), Runtime(settings)
    # Another process holds the training lock.
    runtime.redis.set("postwise:recommend:training:collaborative", "other", ex=60)
    result: dict[str, Any] = {}
    thread = threading.Thread(target=lambda: result.update(items=recommender_for(waiter)(1, 3)))
    thread.start()
    thread.join(0.5)
    assert thread.is_alive()  # waiting, not training on its own

    report = train(trainer)
    _delete_events(runtime)  # whatever the waiter does now, it cannot have trained on this
    thread.join(10)

    assert not thread.is_alive() and len(result["items"]) == 3
    assert model_store(waiter).current("collaborative") == report.model
    assert _ids(result["items"]) == _ids(recommender_for(trainer)(1, 3))
    trainer.close()
    waiter.close()


def test_a_damaged_pointer_counts_as_no_model(
    settings: Settings, tmp_path: Any, real_redis: redis.Redis
) -> None:
    files = FileModelStore(tmp_path / "models", settings.signing_keys())
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "hybrid.json").write_text('{"name": "hybrid", "vers')
    assert files.current("hybrid") is None and files.load("hybrid") is None

    redis_store = RedisModelStore(real_redis, [b"k"], prefix="postwise-test:recommend")
    real_redis.set("postwise-test:recommend:hybrid", b"\x00not json")
    assert redis_store.current("hybrid") is None
    saved = redis_store.save("hybrid", PopularityRecommender(), trained_at=service.utcnow())
    assert redis_store.current("hybrid") == saved
