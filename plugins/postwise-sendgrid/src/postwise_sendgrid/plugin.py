"""The ``sendgrid`` plugin: the provider and the Event Webhook route."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from postwise import hookimpl
from postwise.settings import Settings
from postwise_sendgrid.options import parse_options
from postwise_sendgrid.provider import SendGridProvider
from postwise_sendgrid.webhook import SendGridWebhookController

if TYPE_CHECKING:
    from postwise.hookspecs import ProviderFactory, RouteHandler
    from postwise.registry import Register


def sendgrid_provider(settings: Settings, options: Mapping[str, Any]) -> SendGridProvider:
    """The registered factory: the provider built from ``provider_options.sendgrid``."""
    return SendGridProvider(parse_options(options))


@hookimpl
def postwise_register_providers(register: Register[ProviderFactory]) -> None:
    register("sendgrid", sendgrid_provider)


@hookimpl
def postwise_register_routes(register: Register[RouteHandler]) -> None:
    register("sendgrid-webhooks", SendGridWebhookController)
