"""Fixtures for the HubSpot connector: a local HubSpot and the plugin registered in-process."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fake_hubspot import FakeHubSpot
from hubspot_helpers import BASE_URL, options

import postwise.crm.plugin
import postwise_hubspot.plugin
from postwise.settings import Settings


@pytest.fixture
def hubspot_server() -> Iterator[FakeHubSpot]:
    server = FakeHubSpot().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def settings(make_settings: Any, hubspot_server: FakeHubSpot) -> Settings:
    result: Settings = make_settings(
        base_url=BASE_URL, crm_options={"hubspot": options(hubspot_server)}
    )
    return result


@pytest.fixture(autouse=True)
def hubspot_plugins(use_plugin: Callable[[object, str], None]) -> None:
    """The crm core plugin and the hubspot plugin, unless their entry points loaded them."""
    use_plugin(postwise.crm.plugin, "crm")
    use_plugin(postwise_hubspot.plugin, "hubspot")
