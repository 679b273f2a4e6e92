"""The ``mailchimp`` provider's options: ``POSTWISE_PROVIDER_OPTIONS__MAILCHIMP__<KEY>`` or the
``[provider_options.mailchimp]`` table of the config file.

The provider and the webhook read the same table, so one place configures both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator

from postwise.delivery.http import HttpProviderOptions
from postwise.options import AbsoluteUrl
from postwise.options import parse_options as validate_options

__all__ = ["DEFAULT_BASE_URL", "WEBHOOK_PATH", "MailchimpOptions", "parse_options"]

#: The host and API version the vendor's own client (mailchimp-transactional 1.4) uses.
DEFAULT_BASE_URL = "https://mandrillapp.com/api/1.3"
WEBHOOK_PATH = "/hooks/mailchimp/events"


class MailchimpOptions(HttpProviderOptions):
    """Everything the Mailchimp Transactional plugin can be told (docs/providers.md)."""

    base_url: AbsoluteUrl = Field(
        default=DEFAULT_BASE_URL, description="API base URL, with version."
    )
    async_send: bool = Field(
        default=False,
        description="Mailchimp's background mode: every message comes back 'queued' and "
        "rejections arrive only as 'reject' webhook events.",
    )
    ip_pool: str = Field(default="", max_length=100)
    return_path_domain: str = Field(default="", max_length=255)
    tags: list[Annotated[str, Field(min_length=1, max_length=50, pattern=r"^[^_,][^,]*$")]] = Field(
        default=[],
        max_length=20,
        description="Tags of every message, besides its stream: at most 50 characters, no "
        "comma, not starting with an underscore.",
    )
    webhook_key: SecretStr = Field(
        default=SecretStr(""),
        description="The webhook's authentication key (Settings > Webhooks). Events are "
        "refused until it is set.",
    )
    webhook_url: str = Field(
        default="",
        description="The webhook URL exactly as entered at Mailchimp (it is part of the "
        "signature); empty means base_url of the server + " + WEBHOOK_PATH,
    )

    @field_validator("webhook_url")
    @classmethod
    def _check_webhook_url(cls, value: str) -> str:
        if value and not value.startswith(("https://", "http://")):
            raise ValueError("must be the absolute URL entered at Mailchimp")
        return value


def parse_options(options: Mapping[str, Any]) -> MailchimpOptions:
    """Validate ``options``; raises ConfigurationError naming the option and what is allowed."""
    return validate_options(MailchimpOptions, options, prefix="provider_options.mailchimp")
