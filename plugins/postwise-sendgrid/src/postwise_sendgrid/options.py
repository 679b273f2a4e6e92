"""The ``sendgrid`` provider's options: ``POSTWISE_PROVIDER_OPTIONS__SENDGRID__<KEY>`` or the
``[provider_options.sendgrid]`` table of the config file.

The provider and the Event Webhook read the same table, so one place configures both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, SecretStr

from postwise.options import AbsoluteUrl
from postwise.options import parse_options as validate_options

__all__ = ["DEFAULT_BASE_URL", "SendGridOptions", "parse_options"]

DEFAULT_BASE_URL = "https://api.sendgrid.com"


class SendGridOptions(BaseModel):
    """Everything the SendGrid plugin can be told."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    api_key: SecretStr = Field(
        default=SecretStr(""), description="A SendGrid API key with the Mail Send permission."
    )
    base_url: AbsoluteUrl = Field(
        default=DEFAULT_BASE_URL,
        description="API host; https://api.eu.sendgrid.com for EU data residency.",
    )
    timeout: float = Field(default=30.0, gt=0, le=600, description="Seconds per request.")
    concurrency: int = Field(
        default=8,
        ge=1,
        le=64,
        description="Requests in flight at once per send_batch call (and pooled connections).",
    )
    vendor_tracking: bool = Field(
        default=False,
        description="Leave SendGrid's open/click tracking to the account settings instead of "
        "switching it off per message (postwise tracks opens and clicks itself).",
    )
    sandbox_mode: bool = Field(
        default=False, description="SendGrid validates each request and delivers nothing."
    )
    ip_pool_name: str = Field(default="", max_length=64)
    categories: list[Annotated[str, Field(min_length=1, max_length=255)]] = Field(
        default=[],
        max_length=9,
        description="Categories of every message (SendGrid's stats); the message's stream "
        "(marketing or transactional) is added, within SendGrid's 10.",
    )
    asm_group_id: int | None = Field(
        default=None,
        ge=1,
        description="The unsubscribe group (suppression group) of marketing messages.",
    )
    asm_groups_to_display: list[Annotated[int, Field(ge=1)]] = Field(
        default=[],
        max_length=25,
        description="Unsubscribe groups shown on SendGrid's preferences page (at most 25).",
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
    webhook_max_age_seconds: int = Field(
        default=86_400,
        ge=60,
        le=7 * 86_400,
        description="Oldest signed timestamp accepted; event ids are remembered this long, so "
        "a replayed request is either recognised or refused.",
    )


def parse_options(options: Mapping[str, Any]) -> SendGridOptions:
    """Validate ``options``; raises ConfigurationError naming the option and what is allowed."""
    return validate_options(SendGridOptions, options, prefix="provider_options.sendgrid")
