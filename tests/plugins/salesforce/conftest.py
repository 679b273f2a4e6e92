"""Fixtures for the Salesforce connector: a local Salesforce and the plugin registered."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from fake_salesforce import FakeSalesforce
from salesforce_helpers import options

import postwise.crm.plugin
import postwise_salesforce.plugin
from postwise.settings import Settings


@pytest.fixture(scope="session")
def jwt_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def salesforce_server(jwt_key: rsa.RSAPrivateKey) -> Iterator[FakeSalesforce]:
    server = FakeSalesforce(jwt_key.public_key()).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def settings(make_settings: Any, salesforce_server: FakeSalesforce) -> Settings:
    result: Settings = make_settings(crm_options={"salesforce": options(salesforce_server)})
    return result


@pytest.fixture(autouse=True)
def salesforce_plugins(use_plugin: Callable[[object, str], None]) -> None:
    """The crm core plugin and the salesforce plugin, unless their entry points loaded them."""
    use_plugin(postwise.crm.plugin, "crm")
    use_plugin(postwise_salesforce.plugin, "salesforce")
