"""The ``hubspot`` plugin: registers the HubSpot CRM connector.

Imports stay inside the factory so that loading plugins costs nothing until HubSpot is used.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from postwise import hookimpl

if TYPE_CHECKING:
    from postwise.hookspecs import CrmConnectorFactory
    from postwise.registry import Register
    from postwise.settings import Settings
    from postwise_hubspot.connector import HubSpotConnector


def hubspot_connector(settings: Settings, options: Mapping[str, Any]) -> HubSpotConnector:
    """The registered factory: the connector built from ``crm_options.hubspot``."""
    from postwise_hubspot.connector import HubSpotConnector
    from postwise_hubspot.options import parse_options

    return HubSpotConnector(parse_options(options))


@hookimpl
def postwise_register_crm_connectors(register: Register[CrmConnectorFactory]) -> None:
    register("hubspot", hubspot_connector)
