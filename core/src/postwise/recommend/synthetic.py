"""Generated catalogues and histories with a known structure: taste clusters.

Each cluster is a theme (running, coffee, ...) with its own items, whose titles and attributes
share the theme's words. Each contact belongs to one cluster and mostly interacts with its
items, the popular ones more often (a Zipf law within the cluster), with a share of interactions
on random items anywhere. A recommender that learns taste should recommend within the contact's
cluster; popularity cannot, since it ranks every cluster's head items alike.

Used by the tests and by ``postwise recommend evaluate --synthetic`` to check that the
recommenders do what they claim on data where the right answer is known. Nothing is downloaded.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from postwise.recommend.base import Interaction, Item

__all__ = ["THEMES", "SyntheticData", "clustered"]

#: (category, words) per theme; titles combine a theme's words.
THEMES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("running", ("trail", "running", "shoe", "marathon", "sprint", "stride", "runner", "race")),
    ("coffee", ("espresso", "coffee", "roast", "grinder", "arabica", "brew", "barista", "bean")),
    ("painting", ("watercolour", "brush", "canvas", "easel", "pigment", "palette", "paint", "art")),
    ("camping", ("tent", "camping", "lantern", "sleeping", "stove", "hiking", "backpack", "trek")),
    ("baking", ("sourdough", "flour", "oven", "whisk", "baking", "bread", "pastry", "dough")),
    ("cycling", ("bicycle", "cycling", "helmet", "pedal", "saddle", "gear", "wheel", "road")),
    ("gaming", ("console", "controller", "gaming", "arcade", "joystick", "quest", "pixel", "game")),
    ("garden", ("seed", "garden", "trowel", "compost", "planter", "bloom", "herb", "soil")),
)

_START = datetime(2025, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class SyntheticData:
    """A generated catalogue and history, with the cluster of every item and contact."""

    items: list[Item]
    interactions: list[Interaction]
    item_cluster: dict[str, int]
    contact_cluster: dict[int, int]


def clustered(
    *,
    contacts: int = 600,
    clusters: int = 4,
    items_per_cluster: int = 25,
    per_contact: tuple[int, int] = (3, 10),
    noise: float = 0.1,
    purchase_share: float = 0.2,
    seed: int = 0,
    start: datetime = _START,
) -> SyntheticData:
    """Contacts ``1..contacts`` in ``clusters`` taste clusters, items ``c<cluster>-<n>``.

    Each contact has ``per_contact`` (inclusive range) interactions with distinct items, a
    share ``noise`` of them on random items of any cluster; ``purchase_share`` of interactions
    weigh 5 (a purchase), the rest 1 (a view). A contact's interactions are a day apart, in
    order, from ``start``.
    """
    if not 1 <= clusters <= len(THEMES):
        raise ValueError(f"clusters must be 1 to {len(THEMES)}, got {clusters}")
    rng = random.Random(seed)
    items: list[Item] = []
    item_cluster: dict[str, int] = {}
    by_cluster: list[list[str]] = []
    for cluster in range(clusters):
        category, words = THEMES[cluster]
        ids = []
        for number in range(items_per_cluster):
            item_id = f"c{cluster}-{number}"
            first, second = rng.sample(words, 2)
            items.append(
                Item(
                    item_id,
                    f"{first.title()} {second} {number}",
                    f"https://shop.example.com/{category}/{number}",
                    f"https://cdn.example.com/{category}/{number}.jpg",
                    {"category": category, "tags": rng.sample(words, 3)},
                )
            )
            item_cluster[item_id] = cluster
            ids.append(item_id)
        by_cluster.append(ids)
    zipf = [1.0 / (rank + 1) ** 0.8 for rank in range(items_per_cluster)]
    all_ids = [item.id for item in items]
    interactions: list[Interaction] = []
    contact_cluster: dict[int, int] = {}
    for contact_id in range(1, contacts + 1):
        cluster = rng.randrange(clusters)
        contact_cluster[contact_id] = cluster
        # Never more than one cluster's worth, so the draw below always finishes.
        count = min(rng.randint(*per_contact), items_per_cluster)
        chosen: list[str] = []
        while len(chosen) < count:
            if rng.random() < noise:
                item_id = rng.choice(all_ids)
            else:
                item_id = rng.choices(by_cluster[cluster], weights=zipf)[0]
            if item_id not in chosen:
                chosen.append(item_id)
        for day, item_id in enumerate(chosen):
            weight = 5.0 if rng.random() < purchase_share else 1.0
            interactions.append(
                Interaction(contact_id, item_id, weight, start + timedelta(days=day))
            )
    return SyntheticData(items, interactions, item_cluster, contact_cluster)
