"""The ``salesforce`` plugin: registers the Salesforce CRM connector.

Imports stay inside the factory so that loading plugins costs nothing until Salesforce is used.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from postwise import hookimpl

if TYPE_CHECKING:
    from postwise.hookspecs import CrmConnectorFactory
    from postwise.registry import Register
    from postwise.settings import Settings
    from postwise_salesforce.connector import SalesforceConnector


def salesforce_connector(settings: Settings, options: Mapping[str, Any]) -> SalesforceConnector:
    """The registered factory: the connector built from ``crm_options.salesforce``."""
    from postwise_salesforce.connector import SalesforceConnector
    from postwise_salesforce.options import parse_options

    return SalesforceConnector(parse_options(options))


@hookimpl
def postwise_register_crm_connectors(register: Register[CrmConnectorFactory]) -> None:
    register("salesforce", salesforce_connector)
