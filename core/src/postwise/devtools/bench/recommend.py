"""Recommendation at scale: fit time and memory, model size, load time and time per block.

``recommend_benchmark`` generates ``interactions`` interactions of ``contacts`` contacts on
``items`` items (8 taste clusters, Zipf popularity inside each), fits each recommender, signs and
pickles it as the model store does, loads it back, and times ``blocks`` recommendation blocks of
six items from the loaded model through the business-rules layer serving uses. Each fit runs
in a forked process whose peak resident set, less the data it inherited, is the fit's memory.
``postwise bench recommend`` prints it.
"""

from __future__ import annotations

import json
import multiprocessing
import random
import resource
import statistics
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import click

# Imported here, before any baseline is measured, so the fits' memory does not count them.
import scipy.linalg
import scipy.sparse.linalg  # noqa: F401

from postwise.plugins import create_plugin_host
from postwise.recommend.base import Interaction, Item
from postwise.recommend.rules import BusinessRules, RuledModel, recommend_with_rules
from postwise.recommend.store import pack_model, unpack_model
from postwise.recommend.synthetic import THEMES

__all__ = ["ScaleData", "bench_recommend", "recommend_benchmark", "scale_data"]

_KEY = b"benchmark-signing-key-0123456789"


@dataclass(frozen=True)
class ScaleData:
    items: list[Item]
    interactions: list[Interaction]


def scale_data(
    *, contacts: int = 100_000, items: int = 10_000, interactions: int = 1_000_000, seed: int = 0
) -> ScaleData:
    """Contacts in 8 taste clusters of ``items / 8`` items; ~``interactions`` in all."""
    rng = random.Random(seed)
    clusters = len(THEMES)
    per_cluster = max(1, items // clusters)
    catalogue: list[Item] = []
    for cluster in range(clusters):
        category, words = THEMES[cluster]
        for number in range(per_cluster):
            first, second = rng.sample(words, 2)
            catalogue.append(
                Item(
                    f"c{cluster}-{number}",
                    f"{first.title()} {second} {number}",
                    f"https://shop.example.com/{category}/{number}",
                    None,
                    {"category": category, "tags": rng.sample(words, 2)},
                )
            )
    weights = [1.0 / (rank + 1) ** 0.8 for rank in range(per_cluster)]
    mean = max(1, interactions // max(contacts, 1))
    start = datetime(2026, 1, 1, tzinfo=UTC)
    history: list[Interaction] = []
    for contact_id in range(1, contacts + 1):
        cluster = rng.randrange(clusters)
        count = max(1, min(per_cluster, int(rng.expovariate(1 / mean)) + 1))
        picks = rng.choices(range(per_cluster), weights=weights, k=count)
        for day, number in enumerate(dict.fromkeys(picks)):
            home = cluster if rng.random() > 0.1 else rng.randrange(clusters)
            history.append(
                Interaction(
                    contact_id,
                    f"c{home}-{number}",
                    5.0 if rng.random() < 0.2 else 1.0,
                    start + timedelta(days=day),
                )
            )
    return ScaleData(catalogue, history)


def _resident_mb() -> float:
    with open("/proc/self/statm") as handle:
        pages = int(handle.read().split()[1])
    return pages * resource.getpagesize() / 1e6


def _fit_in_child(factory: Any, data: ScaleData, connection: Any) -> None:
    """Fit in a forked process, so its peak memory is the fit's alone (plus the data)."""
    started = time.perf_counter()
    recommender = factory()
    recommender.fit(iter(data.interactions), data.items)
    fit_seconds = time.perf_counter() - started
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3
    tuned = getattr(recommender, "tuned", None)
    blob = pack_model(RuledModel(recommender), _KEY)
    connection.send((fit_seconds, peak_mb, tuned if isinstance(tuned, dict) else None))
    connection.send_bytes(blob)
    connection.close()


def recommend_benchmark(
    names: list[str], data: ScaleData, *, blocks: int = 2000, n: int = 6
) -> list[dict[str, Any]]:
    """Per recommender: fit seconds and memory, model bytes, load seconds, ms per block.

    Each fit runs in a forked child: "fit memory" is the child's peak resident set less what
    the process held before forking (the generated data), so it counts NumPy, SciPy and LAPACK
    alike.
    """
    results = []
    contact_ids = sorted({i.contact_id for i in data.interactions})
    sample = random.Random(1).sample(contact_ids, min(blocks, len(contact_ids)))
    rules = BusinessRules()
    context = multiprocessing.get_context("fork")
    registry = create_plugin_host().registry("recommenders")
    factories = {name: registry.get(name) for name in names}
    for name in names:
        baseline = _resident_mb()
        receiver, sender = context.Pipe(duplex=False)
        child = context.Process(target=_fit_in_child, args=(factories[name], data, sender))
        child.start()
        sender.close()
        fit_seconds, peak_mb, tuned = receiver.recv()
        blob = receiver.recv_bytes()
        child.join()
        started = time.perf_counter()
        model = unpack_model(blob, [_KEY])
        load_seconds = time.perf_counter() - started
        timings = []
        for contact_id in sample:
            began = time.perf_counter()
            block = recommend_with_rules(model, contact_id, n, rules)
            timings.append(time.perf_counter() - began)
            assert len(block) == n
        timings.sort()
        results.append(
            {
                "recommender": name,
                "fit_seconds": round(fit_seconds, 1),
                "fit_memory_mb": round(peak_mb - baseline),
                "fit_process_peak_mb": round(peak_mb),
                "model_mb": round(len(blob) / 1e6, 1),
                "load_seconds": round(load_seconds, 2),
                "block_ms_median": round(1000 * statistics.median(timings), 3),
                "block_ms_p99": round(1000 * timings[int(0.99 * (len(timings) - 1))], 3),
                "tuned": tuned,
            }
        )
        del model
    return results


@click.command("recommend")
@click.option("--recommender", "names", multiple=True, help="Repeat; default: ease.")
@click.option("--contacts", type=click.IntRange(min=10), default=100_000, show_default=True)
@click.option("--items", type=click.IntRange(min=16), default=10_000, show_default=True)
@click.option("--interactions", type=click.IntRange(min=10), default=1_000_000, show_default=True)
@click.option("--blocks", type=click.IntRange(min=1), default=2000, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def bench_recommend(
    *,
    names: tuple[str, ...],
    contacts: int,
    items: int,
    interactions: int,
    blocks: int,
    as_json: bool,
) -> None:
    """Fit time and memory, model size and time per block at scale (docs/benchmarks.md)."""
    data = scale_data(contacts=contacts, items=items, interactions=interactions)
    results = recommend_benchmark(list(names) or ["ease"], data, blocks=blocks)
    summary = {
        "contacts": contacts,
        "items": len(data.items),
        "interactions": len(data.interactions),
        "results": results,
    }
    if as_json:
        click.echo(json.dumps(summary, default=str))
        return
    click.echo(
        f"{len(data.interactions)} interactions of {contacts} contacts on {len(data.items)} "
        f"items; {blocks} blocks of 6"
    )
    for row in results:
        click.echo(
            f"{row['recommender']:<14} fit {row['fit_seconds']:>6.1f} s  memory "
            f"{row['fit_memory_mb']:>5} MB (process {row['fit_process_peak_mb']} MB)  model "
            f"{row['model_mb']:>5.1f} MB  load {row['load_seconds']:.2f} s  block "
            f"{row['block_ms_median']:.3f} ms (p99 {row['block_ms_p99']:.3f})"
        )
