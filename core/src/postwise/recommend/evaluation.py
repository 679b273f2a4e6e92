"""Offline evaluation: hold out each contact's last interaction and see who predicts it.

For every contact with at least two interacted items, the item interacted with last is held
out (contacts whose interactions carry no time: an item picked by a hash of the contact and
item ids, the same on every run); each recommender is fitted on everything else and asked for
its top ``k`` for the contact (items the contact already had are never recommended, so the
held-out item competes with the whole rest of the catalogue). Figures per recommender, for all
contacts and separately for *cold* (1 to 3 training items) and *warm* ones:

* **hit rate@k**: the share of contacts whose held-out item is in their top ``k``, with a 95%
  Wilson interval;
* **NDCG@k**: ``1 / log2(rank + 1)`` of the held-out item when in the top ``k`` (rank 1 is
  best), else 0, averaged, with a 95% normal interval;
* **coverage**: the share of the catalogue that appears in at least one top ``k``.

Recommenders are compared pairwise on the same contacts: McNemar's exact test on hits and a
paired t-test on NDCG (:func:`paired_tests`).

``cold_share`` replays a share of the warm contacts as new ones: their training history is cut
to their latest 1-3 items (chosen by a hash), which measures cold-start on data where every
contact has a long history. Held-out items outside the catalogue (inactive products) are dropped
from the test: no recommender may show them. Recommenders tune themselves on a split of what
``fit`` receives (:mod:`postwise.recommend.tuning`), so they never see the held-out items.
"""

from __future__ import annotations

import math
import time
import zlib
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np
from scipy import stats

from postwise.errors import PostwiseError
from postwise.recommend.base import Interaction, Item, Recommender
from postwise.recommend.tuning import COLD_MAX_ITEMS, segment_of

__all__ = [
    "EvaluationResult",
    "Metrics",
    "Split",
    "evaluate",
    "leave_last_out",
    "paired_tests",
]

_EPOCH = datetime.min.replace(tzinfo=UTC)
_Z95 = 1.959963984540054


@dataclass(frozen=True)
class Split:
    """Training interactions and the held-out item of each evaluated contact."""

    train: list[Interaction]
    held_out: dict[int, str]
    #: Distinct training items of each evaluated contact (decides cold or warm).
    history: dict[int, int] = field(default_factory=dict)

    def segment(self, contact_id: int) -> str:
        return segment_of(self.history.get(contact_id, COLD_MAX_ITEMS + 1))


def _hash(*parts: object) -> int:
    return zlib.crc32("\x1f".join(str(part) for part in parts).encode())


def leave_last_out(
    interactions: Iterable[Interaction],
    items: Sequence[Item],
    *,
    max_contacts: int | None = None,
    cold_share: float = 0.0,
) -> Split:
    """Hold out the last interacted item of every contact with at least two items.

    An interaction's time is ``at`` (missing times count as oldest); ties go to the greater
    item id so the split is deterministic; a contact none of whose interactions has a time
    gets a hashed choice. Interactions with the same item add up, so "the last item" is the one
    with the latest interaction. ``max_contacts`` evaluates a deterministic sample of contacts
    (by a hash of the id); the others keep all their interactions for training.
    ``cold_share`` (0..1) of the warm evaluated contacts keep only their latest 1-3 training
    items.
    """
    catalogue = {item.id for item in items}
    by_contact: dict[int, dict[str, datetime]] = {}
    timed: set[int] = set()
    kept = list(interactions)
    for interaction in kept:
        latest = by_contact.setdefault(interaction.contact_id, {})
        if interaction.at is not None:
            timed.add(interaction.contact_id)
        at = interaction.at or _EPOCH
        if interaction.item_id not in latest or at > latest[interaction.item_id]:
            latest[interaction.item_id] = at
    held_out: dict[int, str] = {}
    for contact_id, latest in by_contact.items():
        if len(latest) < 2:
            continue
        if contact_id in timed:
            item_id = max(latest, key=lambda i: (latest[i], i))
        else:
            item_id = max(latest, key=lambda i: (_hash(contact_id, i), i))
        if item_id in catalogue:
            held_out[contact_id] = item_id
    if max_contacts is not None and len(held_out) > max_contacts:
        chosen = sorted(held_out, key=lambda c: (zlib.crc32(str(c).encode()), c))[:max_contacts]
        held_out = {c: held_out[c] for c in chosen}
    # Which training items each evaluated contact keeps (all but the held-out one, or, when
    # replayed as a new contact, its latest few).
    keep: dict[int, set[str]] = {}
    if cold_share > 0:
        for contact_id, item_id in held_out.items():
            latest = by_contact[contact_id]
            rest = [i for i in latest if i != item_id]
            if (
                len(rest) <= COLD_MAX_ITEMS
                or _hash("cold", contact_id) % 10_000 >= cold_share * 1e4
            ):
                continue
            count = 1 + _hash("count", contact_id) % COLD_MAX_ITEMS
            rest.sort(
                key=lambda i: (latest[i], i) if contact_id in timed else (_hash(contact_id, i), i)
            )
            keep[contact_id] = set(rest[-count:])
    train = [
        i
        for i in kept
        if held_out.get(i.contact_id) != i.item_id
        and (i.contact_id not in keep or i.item_id in keep[i.contact_id])
    ]
    history: dict[int, set[str]] = defaultdict(set)
    for interaction in train:
        if interaction.contact_id in held_out:
            history[interaction.contact_id].add(interaction.item_id)
    return Split(train, held_out, {c: len(history[c]) for c in held_out})


@dataclass(frozen=True)
class Metrics:
    """Hit rate, NDCG and coverage of one recommender on one group of contacts."""

    contacts: int
    hits: int
    hit_rate: float
    hit_rate_ci: tuple[float, float]
    ndcg: float
    ndcg_ci: tuple[float, float]
    coverage: float

    @classmethod
    def of(cls, hits: np.ndarray, gains: np.ndarray, shown: int, catalogue: int) -> Metrics:
        n = len(hits)
        hit_count = int(hits.sum())
        mean = float(gains.mean()) if n else 0.0
        half = _Z95 * float(gains.std(ddof=1)) / math.sqrt(n) if n > 1 else 0.0
        return cls(
            contacts=n,
            hits=hit_count,
            hit_rate=hit_count / n if n else 0.0,
            hit_rate_ci=_wilson(hit_count, n),
            ndcg=mean,
            ndcg_ci=(max(0.0, mean - half), min(1.0, mean + half)),
            coverage=shown / catalogue if catalogue else 0.0,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "contacts": self.contacts,
            "hits": self.hits,
            "hit_rate": round(self.hit_rate, 4),
            "hit_rate_ci95": [round(v, 4) for v in self.hit_rate_ci],
            "ndcg": round(self.ndcg, 4),
            "ndcg_ci95": [round(v, 4) for v in self.ndcg_ci],
            "coverage": round(self.coverage, 4),
        }


def _wilson(successes: int, n: int) -> tuple[float, float]:
    if n == 0:
        return (0.0, 0.0)
    p = successes / n
    denominator = 1 + _Z95**2 / n
    centre = (p + _Z95**2 / (2 * n)) / denominator
    half = _Z95 * math.sqrt(p * (1 - p) / n + _Z95**2 / (4 * n * n)) / denominator
    return (max(0.0, centre - half), min(1.0, centre + half))


@dataclass(frozen=True)
class EvaluationResult:
    """The figures of one recommender: all contacts, and per segment (cold, warm)."""

    recommender: str
    k: int
    overall: Metrics
    segments: dict[str, Metrics]
    fit_seconds: float
    recommend_ms: float
    #: Per evaluated contact (in ``contact_ids`` order): hit (0/1) and NDCG.
    contact_ids: tuple[int, ...] = ()
    contact_hits: np.ndarray = field(default_factory=lambda: np.zeros(0))
    contact_gains: np.ndarray = field(default_factory=lambda: np.zeros(0))
    tuned: dict[str, Any] = field(default_factory=dict)
    error: str | None = None

    # The figures of all contacts, as before segments existed.
    @property
    def contacts(self) -> int:
        return self.overall.contacts

    @property
    def hits(self) -> int:
        return self.overall.hits

    @property
    def hit_rate(self) -> float:
        return self.overall.hit_rate

    @property
    def ndcg(self) -> float:
        return self.overall.ndcg

    @property
    def coverage(self) -> float:
        return self.overall.coverage

    def to_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {"recommender": self.recommender, "k": self.k}
        if self.error is not None:
            result["error"] = self.error
            return result
        result.update(self.overall.to_dict())
        result["segments"] = {name: m.to_dict() for name, m in self.segments.items()}
        result["fit_seconds"] = round(self.fit_seconds, 3)
        result["recommend_ms"] = round(self.recommend_ms, 3)
        if self.tuned:
            result["tuned"] = self.tuned
        return result


def evaluate(
    factories: dict[str, Callable[[], Recommender]],
    split: Split,
    items: Sequence[Item],
    *,
    k: int = 10,
) -> list[EvaluationResult]:
    """Fit each recommender on ``split.train`` and score its top ``k`` on the held-out items.

    A recommender that cannot be built or fitted (a missing optional library) gets a result
    with ``error`` set instead of stopping the others.
    """
    results = []
    catalogue_size = len({item.id for item in items})
    contacts = tuple(sorted(split.held_out))
    segment_of_contact = [split.segment(c) for c in contacts]
    for name, factory in factories.items():
        started = time.perf_counter()
        try:
            recommender = factory()
            recommender.fit(split.train, items)
        except PostwiseError as exc:
            empty = Metrics.of(np.zeros(0), np.zeros(0), 0, catalogue_size)
            results.append(EvaluationResult(name, k, empty, {}, 0.0, 0.0, error=str(exc)))
            continue
        fit_seconds = time.perf_counter() - started
        hits = np.zeros(len(contacts))
        gains = np.zeros(len(contacts))
        shown: dict[str, set[str]] = defaultdict(set)
        started = time.perf_counter()
        for index, contact_id in enumerate(contacts):
            top = [item.id for item in recommender.recommend(contact_id, k)]
            item_id = split.held_out[contact_id]
            if item_id in top:
                hits[index] = 1.0
                gains[index] = 1.0 / math.log2(top.index(item_id) + 2)
            shown["all"].update(top)
            shown[segment_of_contact[index]].update(top)
        elapsed = time.perf_counter() - started
        segments = {}
        labels = np.array(segment_of_contact)
        for segment in ("cold", "warm"):
            mask = labels == segment
            segments[segment] = Metrics.of(
                hits[mask], gains[mask], len(shown[segment]), catalogue_size
            )
        tuned = getattr(recommender, "tuned", None)
        results.append(
            EvaluationResult(
                recommender=name,
                k=k,
                overall=Metrics.of(hits, gains, len(shown["all"]), catalogue_size),
                segments=segments,
                fit_seconds=fit_seconds,
                recommend_ms=1000 * elapsed / len(contacts) if contacts else 0.0,
                contact_ids=contacts,
                contact_hits=hits,
                contact_gains=gains,
                tuned=_jsonable(tuned) if isinstance(tuned, dict) else {},
            )
        )
    return results


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    return value


def paired_tests(
    results: Sequence[EvaluationResult], mask: np.ndarray | None = None
) -> list[dict[str, Any]]:
    """Every pair of recommenders on the same contacts (``mask``: a subset of them).

    McNemar's exact test on hits (two-sided binomial test of the discordant contacts) and a
    paired t-test on NDCG; small p-values mean the difference is unlikely to be chance.
    """
    usable = [r for r in results if r.error is None and len(r.contact_hits)]
    comparisons = []
    if usable and mask is None:
        mask = np.ones(len(usable[0].contact_hits), dtype=bool)
    for i, first in enumerate(usable):
        for second in usable[i + 1 :]:
            assert mask is not None
            a_hits, b_hits = first.contact_hits[mask], second.contact_hits[mask]
            only_a = int(((a_hits == 1) & (b_hits == 0)).sum())
            only_b = int(((a_hits == 0) & (b_hits == 1)).sum())
            discordant = only_a + only_b
            mcnemar = float(stats.binomtest(only_a, discordant, 0.5).pvalue) if discordant else 1.0
            a_gain, b_gain = first.contact_gains[mask], second.contact_gains[mask]
            difference = a_gain - b_gain
            if len(difference) > 1 and float(difference.std()) > 0:
                t_p = float(stats.ttest_rel(a_gain, b_gain).pvalue)
            else:
                t_p = 1.0
            comparisons.append(
                {
                    "a": first.recommender,
                    "b": second.recommender,
                    "hits_only_a": only_a,
                    "hits_only_b": only_b,
                    "mcnemar_p": round(mcnemar, 5),
                    "ndcg_difference": round(float(difference.mean()), 4),
                    "ndcg_paired_t_p": round(t_p, 5),
                }
            )
    return comparisons
