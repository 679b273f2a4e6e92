"""``postwise recommend``: train, preview and evaluate from the command line."""

from __future__ import annotations

import json
from typing import Any

from click.testing import CliRunner, Result
from recommend_helpers import store_events, store_items

from postwise.cli.recommend import recommend
from postwise.errors import UnknownComponentError, ValidationError
from postwise.recommend.store import model_store
from postwise.recommend.synthetic import SyntheticData
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
    assert report["items"] == len(recent_clusters.items) and report["info"]["backend"] == "surprise"
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
    assert lines[1].split() == ["recommender", "hit@5", "coverage", "fit", "s", "ms/contact"]
    assert {line.split()[0] for line in lines[2:]} >= {
        "popularity",
        "collaborative",
        "content",
        "hybrid",
    }


def test_evaluate_with_nothing_to_hold_out_says_so(runtime: Runtime) -> None:
    result = _invoke(runtime, "evaluate", "--recommender", "popularity")
    assert result.exit_code == 0
    assert "nothing to evaluate" in result.output


def test_bad_weights_and_unknown_recommenders_are_user_errors(runtime: Runtime) -> None:
    assert isinstance(_invoke(runtime, "train", "--weight", "view").exception, ValidationError)
    result = _invoke(runtime, "train", "--recommender", "magic")
    assert isinstance(result.exception, UnknownComponentError)
    assert "collaborative" in str(result.exception)
