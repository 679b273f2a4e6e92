"""The ``mailchimp`` plugin: the provider and the message-event webhook route.

Imports stay inside the hooks so that loading plugins costs nothing until Mailchimp is used.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from postwise import hookimpl

if TYPE_CHECKING:
    from postwise.hookspecs import ProviderFactory, RouteHandler
    from postwise.registry import Register
    from postwise.settings import Settings
    from postwise_mailchimp.provider import MailchimpProvider


def mailchimp_provider(settings: Settings, options: Mapping[str, Any]) -> MailchimpProvider:
    """The registered factory: the provider built from ``provider_options.mailchimp``."""
    from postwise_mailchimp.options import parse_options
    from postwise_mailchimp.provider import MailchimpProvider

    return MailchimpProvider(parse_options(options))


@hookimpl
def postwise_register_providers(register: Register[ProviderFactory]) -> None:
    register("mailchimp", mailchimp_provider)


@hookimpl
def postwise_register_routes(register: Register[RouteHandler]) -> None:
    from postwise_mailchimp.webhook import MailchimpWebhookController

    register("mailchimp-webhooks", MailchimpWebhookController)
