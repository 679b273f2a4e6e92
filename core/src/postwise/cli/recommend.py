"""``postwise recommend``: train recommendation models, preview them, evaluate them offline."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from postwise.cli.common import emit_json, get_runtime
from postwise.content.recommendations import MAX_RECOMMENDATIONS
from postwise.errors import ValidationError
from postwise.plugins import RECOMMENDERS
from postwise.recommend.catalogue import (
    DEFAULT_EVENT_WEIGHTS,
    InteractionSource,
    iter_interactions,
    load_items,
    parse_weights,
)

F = TypeVar("F", bound=Callable[..., Any])

_DEFAULT_WEIGHTS_HELP = ", ".join(f"{k}={v:g}" for k, v in DEFAULT_EVENT_WEIGHTS.items())


@click.group()
def recommend() -> None:
    """Recommendation blocks: train models, preview and evaluate them (docs/recommendations.md)."""


def _source_options(command: F) -> F:
    for option in reversed(
        [
            click.option(
                "--weight",
                "weights",
                multiple=True,
                metavar="TYPE=WEIGHT",
                help="An event type that counts as an interaction and its weight (repeat; "
                f"replaces the default {_DEFAULT_WEIGHTS_HELP}).",
            ),
            click.option(
                "--lookback-days",
                type=click.IntRange(min=1),
                default=365,
                show_default=True,
                help="Only events this recent count.",
            ),
            click.option(
                "--max-pairs",
                type=click.IntRange(min=1),
                default=2_000_000,
                show_default=True,
                help="At most this many (contact, item) pairs, the most recent first.",
            ),
        ]
    ):
        command = option(command)
    return command


def _source(weights: tuple[str, ...], lookback_days: int, max_pairs: int) -> InteractionSource:
    return InteractionSource(
        weights=parse_weights(weights) if weights else dict(DEFAULT_EVENT_WEIGHTS),
        lookback_days=lookback_days,
        max_pairs=max_pairs,
    )


@recommend.command()
@click.option("--recommender", "name", help="Default: the `recommender` setting.")
@_source_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def train(
    ctx: click.Context,
    *,
    name: str | None,
    weights: tuple[str, ...],
    lookback_days: int,
    max_pairs: int,
    as_json: bool,
) -> None:
    """Fit the recommender on the catalogue and stored events, and store it for every worker.

    Run it after deploying and on a schedule (hourly or daily): workers load the newest model
    within a minute and never train on the send path while a model exists.
    """
    from postwise.recommend.service import train as train_model

    runtime = get_runtime(ctx)
    report = train_model(runtime, name, source=_source(weights, lookback_days, max_pairs))
    if as_json:
        emit_json(report.to_dict())
        return
    backend = report.model.info.get("backend")
    click.echo(
        f"trained {report.model.name}{f' ({backend})' if backend else ''}: {report.items} items, "
        f"{report.pairs} contact-item pairs in {report.seconds:.1f}s; "
        f"model {report.model.version}, {report.model.size / 1e6:.1f} MB"
    )
    if report.items == 0:
        click.echo(
            "the catalogue has no active items: recommendation blocks will be empty until items "
            "are sent to POST /v1/items and the model is trained again"
        )
    elif report.pairs == 0:
        click.echo(
            "no interactions (product events with properties.item_id) in the lookback window: "
            "blocks show the catalogue in its own order until events arrive and the model is "
            "trained again"
        )
    tuned = report.model.info.get("tuned")
    if isinstance(tuned, dict) and tuned.get("validated") is False:
        click.echo("too few contacts with two or more items to tune on: default settings used")


@recommend.command()
@click.argument("contact_id", type=int)
@click.option(
    "-n", "count", type=click.IntRange(1, MAX_RECOMMENDATIONS), default=5, show_default=True
)
@click.option("--recommender", "name", help="Default: the `recommender` setting.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def preview(
    ctx: click.Context, *, contact_id: int, count: int, name: str | None, as_json: bool
) -> None:
    """The items a recommendation block would show CONTACT_ID, from the stored model."""
    from postwise.recommend.service import recommend_block

    runtime = get_runtime(ctx)
    name = name or runtime.settings.recommender
    items = recommend_block(runtime, contact_id, count, name)
    if as_json:
        emit_json(
            {
                "contact_id": contact_id,
                "recommender": name,
                "items": [item.to_dict() for item in items],
            }
        )
        return
    if not items:
        click.echo(f"{name}: no items to recommend (is the catalogue empty?)")
    for rank, item in enumerate(items, 1):
        click.echo(f"{rank:>2}. {item.id}  {item.title}  {item.url}")


@recommend.command()
@click.option(
    "--recommender",
    "names",
    multiple=True,
    help="Evaluate this recommender (repeat). Default: every installed one.",
)
@click.option("-k", type=click.IntRange(1, MAX_RECOMMENDATIONS), default=10, show_default=True)
@click.option(
    "--max-contacts",
    type=click.IntRange(min=1),
    default=5000,
    show_default=True,
    help="Score a deterministic sample of this many contacts.",
)
@click.option(
    "--dataset",
    type=click.Path(path_type=Path),
    help="Evaluate on interaction files (CSV or RecBole atomic files, see "
    "docs/recommendations.md) instead of the database; nothing is loaded into it.",
)
@click.option(
    "--cold-share",
    type=click.FloatRange(0.0, 1.0),
    default=0.0,
    show_default=True,
    help="Replay this share of the warm contacts as new ones (history cut to their latest "
    "1-3 items) to measure cold start.",
)
@click.option(
    "--synthetic",
    type=click.IntRange(min=10),
    metavar="CONTACTS",
    help="Evaluate on generated data with known taste clusters instead of the database.",
)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of --synthetic data.")
@_source_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
@click.pass_context
def evaluate(
    ctx: click.Context,
    *,
    names: tuple[str, ...],
    k: int,
    max_contacts: int,
    dataset: Path | None,
    cold_share: float,
    synthetic: int | None,
    seed: int,
    weights: tuple[str, ...],
    lookback_days: int,
    max_pairs: int,
    as_json: bool,
) -> None:
    """Hold out each contact's last interaction; report hit rate@k, NDCG@k, coverage and 95%
    intervals per recommender, for cold (1-3 items) and warm contacts, and paired tests.

    Recommenders tune their settings on a split of the training part only. Training data and
    models in the store are not touched.
    """
    import numpy as np

    from postwise.recommend.datasets import load_dataset
    from postwise.recommend.evaluation import evaluate as run_evaluation
    from postwise.recommend.evaluation import leave_last_out, paired_tests
    from postwise.recommend.synthetic import clustered

    runtime = get_runtime(ctx)
    registry = runtime.plugins.registry(RECOMMENDERS)
    chosen = list(names) or registry.names()
    factories = {name: runtime.component(RECOMMENDERS, name) for name in chosen}
    if synthetic is not None and dataset is not None:
        raise click.UsageError("give --synthetic or --dataset, not both")
    if synthetic is not None:
        data = clustered(contacts=synthetic, seed=seed)
        items, interactions = data.items, data.interactions
        source_name = f"synthetic ({synthetic} contacts, seed {seed})"
    elif dataset is not None:
        try:
            loaded = load_dataset(
                dataset, parse_weights(weights) if weights else dict(DEFAULT_EVENT_WEIGHTS)
            )
        except ValidationError as exc:
            raise click.ClickException(str(exc)) from None
        items, interactions = loaded.items, loaded.interactions
        source_name = f"dataset {loaded.name} ({dataset})"
    else:
        items = load_items(runtime.engine)
        interactions = list(
            iter_interactions(runtime.engine, _source(weights, lookback_days, max_pairs))
        )
        source_name = "database"
    split = leave_last_out(interactions, items, max_contacts=max_contacts, cold_share=cold_share)
    results = run_evaluation(factories, split, items, k=k) if split.held_out else []
    segments = [split.segment(c) for c in sorted(split.held_out)]
    comparisons: dict[str, list[dict[str, Any]]] = {
        "all": paired_tests(results),
        **{
            segment: paired_tests(results, np.array([s == segment for s in segments]))
            for segment in ("cold", "warm")
            if segment in segments
        },
    }
    if as_json:
        emit_json(
            {
                "data": source_name,
                "items": len(items),
                "interactions": len(interactions),
                "held_out": len(split.held_out),
                "cold_share": cold_share,
                "results": [result.to_dict() for result in results],
                "paired_tests": comparisons,
            }
        )
        return
    click.echo(
        f"{source_name}: {len(items)} items, {len(interactions)} interactions, "
        f"{len(split.held_out)} contacts held out "
        f"({segments.count('cold')} cold, {segments.count('warm')} warm)"
    )
    if not split.held_out:
        click.echo("nothing to evaluate: no contact has two or more interactions")
        return
    header = (
        f"{'recommender':<14}{'group':<6}{'contacts':>9}{f'hit@{k}':>8}{'95% CI':>16}"
        f"{f'NDCG@{k}':>9}{'95% CI':>16}{'coverage':>9}"
    )
    click.echo(header)
    for result in results:
        if result.error is not None:
            click.echo(f"{result.recommender:<14}skipped: {result.error}")
            continue
        for group, metrics in (("all", result.overall), *result.segments.items()):
            if not metrics.contacts:
                continue
            click.echo(
                f"{result.recommender:<14}{group:<6}{metrics.contacts:>9}{metrics.hit_rate:>8.3f}"
                f"{_interval(metrics.hit_rate_ci):>16}{metrics.ndcg:>9.3f}"
                f"{_interval(metrics.ndcg_ci):>16}{metrics.coverage:>9.3f}"
            )
    click.echo(
        "fit seconds / ms per contact: "
        + ", ".join(
            f"{r.recommender} {r.fit_seconds:.1f}/{r.recommend_ms:.2f}"
            for r in results
            if not r.error
        )
    )
    if comparisons["all"]:
        click.echo("paired tests (all contacts): McNemar p on hits, paired t p on NDCG")
        for row in comparisons["all"]:
            click.echo(
                f"  {row['a']} vs {row['b']}: hits {row['hits_only_a']}/{row['hits_only_b']} "
                f"p={row['mcnemar_p']:.4f}; NDCG {row['ndcg_difference']:+.4f} "
                f"p={row['ndcg_paired_t_p']:.4f}"
            )


def _interval(bounds: tuple[float, float]) -> str:
    return f"[{bounds[0]:.3f}, {bounds[1]:.3f}]"


@recommend.command("prepare-dataset")
@click.argument("name", type=click.Choice(["movielens", "supermarket"]))
@click.option(
    "--from",
    "source",
    required=True,
    type=click.Path(exists=True, path_type=Path),
    help="movielens: the recbole 1.2.1 wheel or its directory; supermarket: Debian's weka "
    ".deb or supermarket.arff.",
)
@click.option("--out", required=True, type=click.Path(path_type=Path), help="Directory to write.")
def prepare_dataset(*, name: str, source: Path, out: Path) -> None:
    """Turn a public dataset you downloaded into files `evaluate --dataset` reads.

    Nothing is downloaded: `pip download --no-deps recbole==1.2.1 -d DIR` (MovieLens 100k) or
    `apt-get download weka` (supermarket baskets) first; see docs/recommendations.md.
    """
    from postwise.recommend.public_data import prepare

    try:
        written = prepare(name, source, out)
    except ValidationError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"wrote {name} to {written}; evaluate with: postwise recommend evaluate --dataset {written}"
    )
