"""Fixtures for the Mailchimp Transactional plugin: a local API, a webhook key, settings."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fake_mailchimp import API_KEY, WEBHOOK_KEY, FakeMailchimp

from postwise.settings import Settings


@pytest.fixture
def mailchimp_server() -> Iterator[FakeMailchimp]:
    server = FakeMailchimp(API_KEY).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def settings(make_settings: Any) -> Settings:
    """Settings with the Mailchimp plugin configured (the app's webhook reads them)."""
    result: Settings = make_settings(
        provider="mailchimp",
        provider_options={"mailchimp": {"api_key": API_KEY, "webhook_key": WEBHOOK_KEY}},
    )
    return result
