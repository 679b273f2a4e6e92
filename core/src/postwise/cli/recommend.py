"""``postwise recommend``: train recommendation models, preview them, evaluate them offline."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from postwise.cli.common import emit_json, get_runtime
from postwise.content.recommendations import MAX_RECOMMENDATIONS
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
    from postwise.recommend.service import serving_recommender

    runtime = get_runtime(ctx)
    name = name or runtime.settings.recommender
    items = serving_recommender(runtime, name).recommend(contact_id, count)
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
    synthetic: int | None,
    seed: int,
    weights: tuple[str, ...],
    lookback_days: int,
    max_pairs: int,
    as_json: bool,
) -> None:
    """Hold out each contact's last interaction; report hit rate@k and coverage per recommender.

    Training data and models in the store are not touched.
    """
    from postwise.recommend.evaluation import evaluate as run_evaluation
    from postwise.recommend.evaluation import leave_last_out
    from postwise.recommend.synthetic import clustered

    runtime = get_runtime(ctx)
    registry = runtime.plugins.registry("recommenders")
    chosen = list(names) or registry.names()
    factories = {name: runtime.component("recommenders", name) for name in chosen}
    if synthetic is not None:
        data = clustered(contacts=synthetic, seed=seed)
        items, interactions = data.items, data.interactions
        source_name = f"synthetic ({synthetic} contacts, seed {seed})"
    else:
        items = load_items(runtime.engine)
        interactions = list(
            iter_interactions(runtime.engine, _source(weights, lookback_days, max_pairs))
        )
        source_name = "database"
    split = leave_last_out(interactions, items, max_contacts=max_contacts)
    results = run_evaluation(factories, split, items, k=k)
    if as_json:
        emit_json(
            {
                "data": source_name,
                "items": len(items),
                "interactions": len(interactions),
                "results": [result.to_dict() for result in results],
            }
        )
        return
    click.echo(
        f"{source_name}: {len(items)} items, {len(interactions)} interactions, "
        f"{len(split.held_out)} contacts held out"
    )
    if not split.held_out:
        click.echo("nothing to evaluate: no contact has two or more interactions")
        return
    click.echo(f"{'recommender':<16}{f'hit@{k}':>9}{'coverage':>10}{'fit s':>8}{'ms/contact':>12}")
    for result in results:
        click.echo(
            f"{result.recommender:<16}{result.hit_rate:>9.3f}{result.coverage:>10.3f}"
            f"{result.fit_seconds:>8.2f}{result.recommend_ms:>12.3f}"
        )
