"""The CRM integration as a plugin: the webhook route and the ``/v1/crm`` API.

Connectors come from their own distributions (``postwise-hubspot``, ``postwise-salesforce``)
through ``postwise_register_crm_connectors``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from postwise import hookimpl

if TYPE_CHECKING:
    from postwise.hookspecs import RouteHandler
    from postwise.registry import Register


@hookimpl
def postwise_register_routes(register: Register[RouteHandler]) -> None:
    from postwise.crm.api import CrmController
    from postwise.crm.webhooks import CrmWebhookController

    register("crm-api", CrmController)
    register("crm-webhooks", CrmWebhookController)
