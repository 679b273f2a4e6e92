"""Constants and option sets shared by the HubSpot tests."""

from __future__ import annotations

from typing import Any

from fake_hubspot import TOKEN, FakeHubSpot

CLIENT_SECRET = "hubspot-client-secret"
BASE_URL = "https://postwise.example.com"


def options(server: FakeHubSpot, **extra: Any) -> dict[str, Any]:
    return {
        "access_token": TOKEN,
        "client_secret": CLIENT_SECRET,
        "base_url": server.url,
        "attribute_properties": ["plan"],
        "properties": {"first_name": "firstname", "last_name": "lastname", "country": "country"},
        "max_retry_wait": 2,
        **extra,
    }
