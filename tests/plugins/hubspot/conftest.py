"""Fixtures for the HubSpot connector: a local HubSpot and the plugin registered in-process."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fake_hubspot import FakeHubSpot
from hubspot_helpers import BASE_URL, options

import postwise.crm.plugin
import postwise_hubspot.plugin
from postwise.runtime import Runtime
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
def hubspot_plugins(runtime: Runtime) -> Iterator[None]:
    """The crm core plugin and the hubspot plugin, unless their entry points loaded them."""
    added = []
    for name, module in (("crm", postwise.crm.plugin), ("hubspot", postwise_hubspot.plugin)):
        if runtime.plugins.pm.get_plugin(name) is None:
            assert runtime.plugins.register(module, name)
            added.append(name)
    try:
        yield
    finally:
        for name in added:
            runtime.plugins.unregister(name)
