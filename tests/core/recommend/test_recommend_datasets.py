"""Dataset files for ``evaluate --dataset``, public-data preparation, replay and the bench."""

from __future__ import annotations

import zipfile
from datetime import UTC, datetime
from pathlib import Path

import pytest

from postwise.devtools.bench.recommend import recommend_benchmark, scale_data
from postwise.devtools.replay import event_batches, item_batches
from postwise.errors import ValidationError
from postwise.recommend.datasets import load_dataset
from postwise.recommend.public_data import prepare

_INTER = (
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "1\t10\t4\t100\n1\t11\t3\t200\n2\t10\t5\t150\n"
)
_ITEM = (
    "item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq\n"
    "10\tToy Story\t1995\tAnimation Comedy\n11\tHeat\t1995\tAction\n"
)


def test_recbole_atomic_files_are_read_with_titles_attributes_and_times(tmp_path: Path) -> None:
    (tmp_path / "tiny.inter").write_text(_INTER)
    (tmp_path / "tiny.item").write_text(_ITEM)
    data = load_dataset(tmp_path)
    assert data.name == "tiny" and len(data.interactions) == 3
    first = data.interactions[0]
    assert (first.contact_id, first.item_id, first.weight) == (1, "10", 1.0)
    assert first.at == datetime.fromtimestamp(100, UTC)
    toy = next(item for item in data.items if item.id == "10")
    assert toy.title == "Toy Story"
    assert toy.attributes == {"release_year": "1995", "class": ["Animation", "Comedy"]}


def test_csv_with_types_weights_and_bad_rows(tmp_path: Path) -> None:
    (tmp_path / "interactions.csv").write_text(
        "contact_id,item_id,type,timestamp\n1,a,purchase,2026-01-01T00:00:00+00:00\n"
        "1,b,wishlist,\n2,a,view,1700000000\n"
    )
    (tmp_path / "items.csv").write_text("id,title,category,tags\na,Alpha,x,t1|t2\nb,Beta,y,\n")
    data = load_dataset(tmp_path, {"view": 1.0, "purchase": 5.0})
    assert [(i.contact_id, i.item_id, i.weight) for i in data.interactions] == [
        (1, "a", 5.0),
        (2, "a", 1.0),
    ]
    assert data.items[0].attributes == {"category": "x", "tags": ["t1", "t2"]}
    (tmp_path / "interactions.csv").write_text("contact_id,item_id,weight\n1,a,-2\n")
    with pytest.raises(ValidationError, match=r"interactions.csv:2: weight"):
        load_dataset(tmp_path)
    with pytest.raises(ValidationError, match="must name contact_id and item_id"):
        load_dataset(tmp_path / "items.csv")
    with pytest.raises(ValidationError, match="neither"):
        load_dataset(_empty(tmp_path))


def _empty(tmp_path: Path) -> Path:
    empty = tmp_path / "empty"
    empty.mkdir()
    return empty


def test_movielens_comes_out_of_the_recbole_wheel(tmp_path: Path) -> None:
    wheel = tmp_path / "recbole-1.2.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("recbole/dataset_example/ml-100k/ml-100k.inter", _INTER)
        archive.writestr("recbole/dataset_example/ml-100k/ml-100k.item", _ITEM)
    out = prepare("movielens", tmp_path, tmp_path / "ml")
    assert len(load_dataset(out).interactions) == 3
    with pytest.raises(ValidationError, match="no recbole"):
        prepare("movielens", tmp_path / "ml", tmp_path / "again")


def test_supermarket_baskets_come_out_of_weka_arff(tmp_path: Path) -> None:
    arff = tmp_path / "supermarket.arff"
    arff.write_text(
        "@relation supermarket\n@attribute 'bread and cake' { t}\n@attribute 'tea' { t}\n"
        "@attribute 'total' { low, high}\n@data\nt,?,high\nt,t,low\n?,t,low\n"
    )
    data = load_dataset(prepare("supermarket", arff, tmp_path / "s"))
    assert [(i.contact_id, i.item_id) for i in data.interactions] == [
        (1, "d0"),
        (2, "d0"),
        (2, "d1"),
        (3, "d1"),
    ]
    assert [item.title for item in data.items] == ["bread and cake", "tea"]


def test_replay_batches_shift_times_to_now_and_keep_their_order(tmp_path: Path) -> None:
    (tmp_path / "tiny.inter").write_text(_INTER)
    (tmp_path / "tiny.item").write_text(_ITEM)
    data = load_dataset(tmp_path)
    now = datetime(2026, 6, 1, tzinfo=UTC)
    (events,) = list(event_batches(data, now=now))
    assert events[1]["occurred_at"] == now.isoformat()
    assert events[0]["occurred_at"] < events[2]["occurred_at"] < events[1]["occurred_at"]
    assert events[0]["email"] == "tiny-1@example.com" and events[0]["type"] == "view"
    (items,) = list(item_batches(data))
    assert items[0]["attributes"] == {"year": "1995", "genres": ["Animation", "Comedy"]}


def test_the_scale_benchmark_runs_on_small_data() -> None:
    data = scale_data(contacts=300, items=160, interactions=3000)
    (row,) = recommend_benchmark(["ease"], data, blocks=20)
    assert row["fit_seconds"] > 0 and row["model_mb"] > 0 and row["block_ms_median"] > 0
