"""``/v1/items`` and ``/v1/recommendations/{contact_id}``."""

from __future__ import annotations

from typing import Any

import pytest
from recommend_helpers import store_contacts, store_events

from postwise.recommend.catalogue import MAX_ITEMS_PER_REQUEST
from postwise.recommend.service import train
from postwise.recommend.synthetic import SyntheticData
from postwise.runtime import Runtime


def _item(n: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"sku-{n}",
        "title": f"Product {n}",
        "url": f"https://shop.example.com/p/{n}",
        **extra,
    }


def test_items_are_created_then_updated_by_id(client: Any) -> None:
    created = client.post("/v1/items", json={"items": [_item(1), _item(2, active=False)]})
    assert created.status_code == 200 and created.json() == {"created": 2, "updated": 0}

    changed = _item(1, title="Product one", image_url="https://cdn.example.com/1.jpg")
    changed["attributes"] = {"category": "shoes", "price": 59.9}
    again = client.post("/v1/items", json={"items": [changed, _item(3)]})
    assert again.json() == {"created": 1, "updated": 1}

    listed = client.get("/v1/items").json()
    assert [i["id"] for i in listed["items"]] == ["sku-1", "sku-2", "sku-3"]
    assert listed["items"][0] == {
        "id": "sku-1",
        "title": "Product one",
        "url": "https://shop.example.com/p/1",
        "image_url": "https://cdn.example.com/1.jpg",
        "attributes": {"category": "shoes", "price": 59.9},
        "active": True,
    }
    assert listed["next_after"] is None


def test_items_are_listed_in_pages_and_filtered_by_active(client: Any) -> None:
    client.post("/v1/items", json={"items": [_item(n, active=n % 2 == 0) for n in range(1, 8)]})
    first = client.get("/v1/items", params={"limit": 3}).json()
    assert [i["id"] for i in first["items"]] == ["sku-1", "sku-2", "sku-3"]
    rest = client.get("/v1/items", params={"after": first["next_after"], "limit": 10}).json()
    assert [i["id"] for i in rest["items"]] == ["sku-4", "sku-5", "sku-6", "sku-7"]
    active = client.get("/v1/items", params={"active": "true"}).json()
    assert [i["id"] for i in active["items"]] == ["sku-2", "sku-4", "sku-6"]


@pytest.mark.parametrize(
    ("items", "field", "words"),
    [
        ([_item(1, url="ftp://x")], "items[0].url", "http"),
        ([_item(1), _item(2, url=None)], "items[1].url", "non-empty"),
        ([_item(1, image_url="javascript:alert(1)")], "items[0].image_url", "http"),
        ([_item(1), _item(1)], "items[1].id", "twice"),
        ([_item(1, title="")], "items[0].title", "non-empty"),
        ([_item(1, title="a\r\nBcc: x")], "items[0].title", "control"),
        ([_item(1, price=3)], "items[0].price", "unknown field"),
        ([_item(1, attributes={"url": "x"})], "items[0].attributes.url", "shadow"),
        ([_item(1, attributes={"_secret": 1})], "items[0].attributes", "'_'"),
        ([_item(1, attributes=[1])], "items[0].attributes", "object"),
        ([_item(1, active="yes")], "items[0].active", "true or false"),
        ([_item(1, id="x" * 201)], "items[0].id", "200"),
        ([], "items", "non-empty"),
    ],
)
def test_invalid_items_are_rejected_naming_the_field_and_nothing_is_written(
    client: Any, items: list[Any], field: str, words: str
) -> None:
    response = client.post("/v1/items", json={"items": items})
    assert response.status_code == 422
    assert response.json()["field"] == field and words in response.json()["detail"]
    assert client.get("/v1/items").json()["items"] == []


def test_an_upsert_is_bounded_in_size(client: Any) -> None:
    response = client.post(
        "/v1/items", json={"items": [_item(n) for n in range(MAX_ITEMS_PER_REQUEST + 1)]}
    )
    assert response.status_code == 422 and "at most 1000" in response.json()["detail"]


def test_a_body_without_items_is_rejected(client: Any) -> None:
    response = client.post("/v1/items", json=[_item(1)])
    assert response.status_code in (400, 422)
    response = client.post("/v1/items", json={"item": [_item(1)]})
    assert response.status_code == 422 and response.json()["field"] == "items"


def test_items_need_an_api_key(client: Any) -> None:
    del client.headers["Authorization"]
    assert client.get("/v1/items").status_code == 401
    assert client.get("/v1/recommendations/1").status_code == 401


def test_a_preview_shows_the_contacts_recommendations(
    client: Any, runtime: Runtime, recent_clusters: SyntheticData
) -> None:
    body = {
        "items": [
            {
                "id": item.id,
                "title": item.title,
                "url": item.url,
                "image_url": item.image_url,
                "attributes": dict(item.attributes),
            }
            for item in recent_clusters.items
        ]
    }
    assert client.post("/v1/items", json=body).json()["created"] == len(recent_clusters.items)
    store_events(runtime, recent_clusters.interactions)
    store_contacts(runtime, [1])
    train(runtime)  # the default recommender

    response = client.get("/v1/recommendations/1", params={"n": 4})

    assert response.status_code == 200
    data = response.json()
    assert data["contact_id"] == 1 and data["recommender"] == "ease"
    assert len(data["items"]) == 4
    assert set(data["items"][0]) >= {"id", "title", "url", "image_url", "category"}
    seen = {i.item_id for i in recent_clusters.interactions if i.contact_id == 1}
    assert not seen & {item["id"] for item in data["items"]}


def test_a_preview_of_an_unknown_contact_is_404_and_n_is_bounded(client: Any) -> None:
    assert client.get("/v1/recommendations/424242").status_code == 404
    assert client.get("/v1/recommendations/1", params={"n": 0}).status_code == 422
    assert client.get("/v1/recommendations/1", params={"n": 51}).status_code == 422
