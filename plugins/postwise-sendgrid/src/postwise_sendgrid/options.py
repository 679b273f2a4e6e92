"""The ``sendgrid`` provider's options: ``POSTWISE_PROVIDER_OPTIONS__SENDGRID__<KEY>`` or the
``[provider_options.sendgrid]`` table of the config file; the provider and the Event Webhook
read the same table. The kit's :class:`~postwise.delivery.http.HttpProviderOptions` gives
``api_key``, ``timeout``, ``concurrency``, ``vendor_tracking`` and ``webhook_max_age_seconds``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import Field

from postwise.delivery.http import HttpProviderOptions
from postwise.options import AbsoluteUrl
from postwise.options import parse_options as validate_options

__all__ = ["DEFAULT_BASE_URL", "SendGridOptions", "parse_options"]

DEFAULT_BASE_URL = "https://api.sendgrid.com"


class SendGridOptions(HttpProviderOptions):
    """Everything the SendGrid plugin can be told (docs/providers.md, "SendGrid")."""

    base_url: AbsoluteUrl = Field(
        default=DEFAULT_BASE_URL,
        description="API host; https://api.eu.sendgrid.com for EU data residency.",
    )
    sandbox_mode: bool = Field(
        default=False, description="SendGrid validates each request and delivers nothing."
    )
    ip_pool_name: str = Field(default="", max_length=64)
    categories: list[Annotated[str, Field(min_length=1, max_length=255)]] = Field(
        default=[],
        max_length=9,
        description="Categories of every message; the message's stream (marketing or "
        "transactional) is added, within SendGrid's 10.",
    )
    asm_group_id: int | None = Field(
        default=None, ge=1, description="The unsubscribe group of marketing messages."
    )
    asm_groups_to_display: list[Annotated[int, Field(ge=1)]] = Field(
        default=[], max_length=25, description="Groups on SendGrid's preferences page."
    )
    transactional_bypass_list_management: bool = Field(
        default=True,
        description="Transactional messages bypass SendGrid's unsubscribe, bounce and spam "
        "lists (postwise's own suppression still applies), so receipts always arrive.",
    )
    webhook_public_key: str = Field(
        default="",
        description="The Signed Event Webhook's verification key (base64 DER as SendGrid shows "
        "it, or PEM). Events are refused until it is set.",
    )


def parse_options(options: Mapping[str, Any]) -> SendGridOptions:
    """Validate ``options``; raises ConfigurationError naming the option and what is allowed."""
    return validate_options(SendGridOptions, options, prefix="provider_options.sendgrid")
