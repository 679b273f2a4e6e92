"""``postwise recommend``: train, preview and evaluate from the command line."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from click.testing import CliRunner, Result
from recommend_helpers import store_events, store_items

from postwise.cli.recommend import recommend
from postwise.errors import UnknownComponentError, ValidationError
from postwise.recommend.store import model_store
from postwise.recommend.synthetic import SyntheticData, clustered
from postwise.runtime import Runtime


def _invoke(runtime: Runtime, *args: str) -> Result:
    return CliRunner().invoke(recommend, list(args), obj={"runtime": runtime})


def _json(result: Result) -> Any:
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_train_stores_the_model_and_preview_reads_it(
    runtime: Runtime, recent_clusters: SyntheticData
) -> None:
    store_items(runtime, recent_clusters.items)
    store_events(runtime, recent_clusters.interactions)

    report = _json(_invoke(runtime, "train", "--recommender", "hybrid", "--json"))

    assert report["name"] == "hybrid" and report["pairs"] == len(recent_clusters.interactions)
    assert (
        report["items"] == len(recent_clusters.items)
        and report["info"]["backend"] == "popularity+ease+content"
    )
    stored = model_store(runtime).current("hybrid")
    assert stored is not None and stored.version == report["version"]

    preview = _json(
        _invoke(runtime, "preview", "7", "-n", "3", "--recommender", "hybrid", "--json")
    )
    assert len(preview["items"]) == 3
    cluster = recent_clusters.contact_cluster[7]
    assert all(recent_clusters.item_cluster[i["id"]] == cluster for i in preview["items"])

    text = _invoke(runtime, "preview", "7", "-n", "3", "--recommender", "hybrid")
    assert text.exit_code == 0 and text.output.startswith(" 1. ")
    assert preview["items"][0]["id"] in text.output.splitlines()[0]


def test_train_says_what_it_did(runtime: Runtime, recent_clusters: SyntheticData) -> None:
    store_items(runtime, recent_clusters.items)
    store_events(runtime, recent_clusters.interactions)
    result = _invoke(runtime, "train", "--recommender", "collaborative", "--weight", "purchase=5")
    assert result.exit_code == 0, result.output
    # Only purchases count now: fewer pairs than events.
    assert result.output.startswith("trained collaborative (surprise): 100 items, ")
    pairs = int(result.output.split("items, ")[1].split(" ")[0])
    purchases = sum(1 for i in recent_clusters.interactions if i.weight == 5.0)
    assert pairs == purchases


def test_evaluate_on_the_database_reports_every_recommender(
    runtime: Runtime, recent_clusters: SyntheticData
) -> None:
    store_items(runtime, recent_clusters.items)
    store_events(runtime, recent_clusters.interactions)

    report = _json(
        _invoke(
            runtime, "evaluate", "--recommender", "popularity", "--recommender", "hybrid", "--json"
        )
    )

    assert report["data"] == "database"
    assert report["interactions"] == len(recent_clusters.interactions)
    results = {r["recommender"]: r for r in report["results"]}
    assert set(results) == {"popularity", "hybrid"}
    assert results["hybrid"]["contacts"] == len(recent_clusters.contact_cluster)
    assert results["hybrid"]["hit_rate"] > 1.5 * results["popularity"]["hit_rate"]
    assert model_store(runtime).current("hybrid") is None  # evaluation stores nothing


def test_evaluate_on_synthetic_data_prints_a_table(runtime: Runtime) -> None:
    result = _invoke(runtime, "evaluate", "--synthetic", "300", "-k", "5")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].startswith("synthetic (300 contacts, seed 0): 100 items")
    assert lines[1].split() == [
        "recommender",
        "group",
        "contacts",
        "hit@5",
        "95%",
        "CI",
        "NDCG@5",
        "95%",
        "CI",
        "coverage",
    ]
    rows = {tuple(line.split()[:2]) for line in lines[2:]}
    for name in ("popularity", "collaborative", "content", "ease", "hybrid"):
        assert (name, "all") in rows
    assert any(line.startswith("  hybrid vs ") or " vs hybrid" in line for line in lines)


def test_evaluate_on_a_dataset_reports_segments_intervals_and_paired_tests(
    runtime: Runtime, tmp_path: Path
) -> None:
    data = clustered(contacts=400, seed=3, per_contact=(2, 8))
    with (tmp_path / "interactions.csv").open("w") as handle:
        handle.write("contact_id,item_id,weight,timestamp\n")
        for i in data.interactions:
            assert i.at is not None
            handle.write(f"{i.contact_id},{i.item_id},{i.weight},{i.at.isoformat()}\n")
    with (tmp_path / "items.jsonl").open("w") as handle:
        for item in data.items:
            handle.write(
                json.dumps(
                    {"id": item.id, "title": item.title, "attributes": dict(item.attributes)}
                )
                + "\n"
            )
    report = _json(
        _invoke(
            runtime,
            "evaluate",
            "--dataset",
            str(tmp_path),
            "--recommender",
            "popularity",
            "--recommender",
            "hybrid",
            "--cold-share",
            "0.3",
            "--json",
        )
    )
    assert report["items"] == len(data.items) and report["interactions"] == len(data.interactions)
    results = {r["recommender"]: r for r in report["results"]}
    hybrid = results["hybrid"]
    assert hybrid["segments"]["cold"]["contacts"] > 0 and hybrid["segments"]["warm"]["contacts"] > 0
    low, high = hybrid["hit_rate_ci95"]
    assert low <= hybrid["hit_rate"] <= high and 0 <= hybrid["ndcg"] <= hybrid["hit_rate"]
    (test,) = report["paired_tests"]["all"]
    assert {test["a"], test["b"]} == {"popularity", "hybrid"} and 0 <= test["mcnemar_p"] <= 1
    # Cold contacts are served at least as well as by popularity.
    cold = {name: r["segments"]["cold"]["hit_rate"] for name, r in results.items()}
    assert cold["hybrid"] >= cold["popularity"]
    assert model_store(runtime).current("hybrid") is None


def test_evaluate_on_a_missing_or_malformed_dataset_says_what_is_wrong(
    runtime: Runtime, tmp_path: Path
) -> None:
    result = _invoke(runtime, "evaluate", "--dataset", str(tmp_path / "nope"))
    assert result.exit_code != 0 and "does not exist" in result.output
    (tmp_path / "interactions.csv").write_text("contact,item\n1,a\n")
    result = _invoke(runtime, "evaluate", "--dataset", str(tmp_path))
    assert result.exit_code != 0 and "contact_id and item_id" in result.output
    (tmp_path / "interactions.csv").write_text("contact_id,item_id\nseven,a\n")
    result = _invoke(runtime, "evaluate", "--dataset", str(tmp_path))
    assert result.exit_code != 0 and "interactions.csv:2" in result.output


def test_evaluate_with_nothing_to_hold_out_says_so(runtime: Runtime) -> None:
    result = _invoke(runtime, "evaluate", "--recommender", "popularity")
    assert result.exit_code == 0
    assert "nothing to evaluate" in result.output


def test_bad_weights_and_unknown_recommenders_are_user_errors(runtime: Runtime) -> None:
    assert isinstance(_invoke(runtime, "train", "--weight", "view").exception, ValidationError)
    result = _invoke(runtime, "train", "--recommender", "magic")
    assert isinstance(result.exception, UnknownComponentError)
    assert "collaborative" in str(result.exception)


def test_train_on_an_empty_catalogue_or_without_events_says_what_blocks_will_show(
    runtime: Runtime, recent_clusters: SyntheticData
) -> None:
    result = _invoke(runtime, "train", "--recommender", "ease")
    assert result.exit_code == 0, result.output
    assert "0 items" in result.output and "blocks will be empty" in result.output
    store_items(runtime, recent_clusters.items)
    result = _invoke(runtime, "train", "--recommender", "ease")
    assert result.exit_code == 0, result.output
    assert "no interactions" in result.output


def test_prepare_dataset_says_what_is_missing(runtime: Runtime, tmp_path: Path) -> None:
    result = _invoke(
        runtime, "prepare-dataset", "movielens", "--from", str(tmp_path), "--out", str(tmp_path)
    )
    assert result.exit_code != 0 and "no recbole" in result.output
