"""Constants and option sets shared by the Salesforce tests."""

from __future__ import annotations

from typing import Any

from fake_salesforce import CLIENT_ID, CLIENT_SECRET, FakeSalesforce

WEBHOOK_SECRET = "flow-shared-secret"


def options(server: FakeSalesforce, **extra: Any) -> dict[str, Any]:
    return {
        "login_url": server.url,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "webhook_secret": WEBHOOK_SECRET,
        "page_size": 200,
        "max_retry_wait": 2,
        **extra,
    }
