"""The ``sendgrid`` plugin: the provider and the Event Webhook route.

Imports stay inside the hooks so that loading plugins costs nothing until SendGrid is used.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from postwise import hookimpl

if TYPE_CHECKING:
    from postwise.settings import Settings
    from postwise_sendgrid.provider import SendGridProvider


def sendgrid_provider(settings: Settings, options: Mapping[str, Any]) -> SendGridProvider:
    """The registered factory: the provider built from ``provider_options.sendgrid``."""
    from postwise_sendgrid.options import parse_options
    from postwise_sendgrid.provider import SendGridProvider

    return SendGridProvider(parse_options(options))


@hookimpl
def postwise_register_providers(register: Any) -> None:
    register("sendgrid", sendgrid_provider)


@hookimpl
def postwise_register_routes(register: Any) -> None:
    from postwise_sendgrid.webhook import SendGridWebhookController

    register("sendgrid-webhooks", SendGridWebhookController)
