"""``/v1/items`` (the catalogue) and ``/v1/recommendations/{contact_id}`` (previews).

``POST /v1/items`` upserts up to 1,000 items by id: ``{"items": [{"id": "sku-1", "title":
..., "url": ..., "image_url": ..., "attributes": {...}, "active": true}]}``. Errors name the
item and field (``{"detail": "must be an absolute http:// or https:// URL", "field":
"items[3].url"}``, status 422) and nothing is written. A new or changed catalogue reaches
recommendations at the next training (``postwise recommend train``).

``GET /v1/recommendations/{contact_id}?n=5`` shows what a recommendation block would show the
contact now, from the model rendering uses.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar import Controller, get, post
from litestar.params import Parameter
from sqlmodel import Session

from postwise.content.recommendations import MAX_RECOMMENDATIONS
from postwise.db.models import Contact
from postwise.errors import NotFoundError
from postwise.recommend.catalogue import item_dict, list_items, parse_items, upsert_items
from postwise.recommend.service import recommend_block
from postwise.runtime import Runtime

__all__ = ["ItemsController", "RecommendationsController"]


@dataclass
class UpsertOut:
    created: int
    updated: int


@dataclass
class ItemsPage:
    items: list[dict[str, Any]]
    next_after: str | None


@dataclass
class RecommendationsOut:
    contact_id: int
    recommender: str
    items: list[dict[str, Any]]


class ItemsController(Controller):
    path = "/v1/items"
    tags = ["recommendations"]

    @post("/", sync_to_thread=True, status_code=200)
    def upsert(self, session: Session, data: dict[str, Any]) -> UpsertOut:
        """Create or replace items by id (up to 1,000 per request); all or nothing."""
        result = upsert_items(session, parse_items(data))
        return UpsertOut(created=result.created, updated=result.updated)

    @get("/", sync_to_thread=True)
    def list_all(
        self,
        session: Session,
        after: str = Parameter(default="", description="Return ids sorting after this."),
        limit: int = Parameter(default=100, ge=1, le=1000),
        active: bool | None = Parameter(default=None, description="Only (in)active items."),
    ) -> ItemsPage:
        """Items in id order, paged by ``after`` (keyset pagination)."""
        rows = list_items(session, after=after, limit=limit, active=active)
        return ItemsPage(
            items=[item_dict(row) for row in rows],
            next_after=rows[-1].id if len(rows) == limit else None,
        )


class RecommendationsController(Controller):
    path = "/v1/recommendations"
    tags = ["recommendations"]

    @get("/{contact_id:int}", sync_to_thread=True)
    def preview(
        self,
        session: Session,
        runtime: Runtime,
        contact_id: int,
        n: int = Parameter(default=5, ge=1, le=MAX_RECOMMENDATIONS),
    ) -> RecommendationsOut:
        """The items a recommendation block would show the contact, best first."""
        if session.get(Contact, contact_id) is None:
            raise NotFoundError(f"no contact with id {contact_id}")
        return RecommendationsOut(
            contact_id=contact_id,
            recommender=runtime.settings.recommender,
            items=[item.to_dict() for item in recommend_block(runtime, contact_id, n)],
        )
