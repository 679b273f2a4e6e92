"""Writing generated catalogues and histories into the database, as the product would."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import sqlalchemy as sa

from postwise.db.models import CatalogueItem, Contact, Event
from postwise.recommend.base import Interaction, Item
from postwise.runtime import Runtime


def store_items(runtime: Runtime, items: Sequence[Item], *, active: bool = True) -> None:
    with runtime.session() as session:
        for item in items:
            session.add(
                CatalogueItem(
                    id=item.id,
                    title=item.title,
                    url=item.url,
                    image_url=item.image_url,
                    attributes=dict(item.attributes),
                    active=active,
                )
            )


def store_events(runtime: Runtime, interactions: Iterable[Interaction]) -> int:
    """One product event per interaction: weight 5 is a purchase, anything else a view."""
    rows = [
        {
            "event_id": f"rec-{n}",
            "type": "purchase" if interaction.weight == 5.0 else "view",
            "occurred_at": interaction.at,
            "received_at": interaction.at,
            "contact_id": interaction.contact_id,
            "properties": {"item_id": interaction.item_id},
            "automated": False,
        }
        for n, interaction in enumerate(interactions)
    ]
    with runtime.engine.begin() as connection:
        connection.execute(sa.insert(Event), rows)
    return len(rows)


def store_contacts(runtime: Runtime, contact_ids: Iterable[int]) -> None:
    with runtime.session() as session:
        for contact_id in contact_ids:
            session.add(Contact(id=contact_id, email=f"c{contact_id}@example.com"))
