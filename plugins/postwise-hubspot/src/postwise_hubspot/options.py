"""The ``hubspot`` connector's options: ``POSTWISE_CRM_OPTIONS__HUBSPOT__<KEY>`` or the
``[crm_options.hubspot]`` table of the config file."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from postwise.crm.connector import PROFILE_FIELDS
from postwise.options import AbsoluteUrl
from postwise.options import parse_options as validate_options

__all__ = ["DEFAULT_BASE_URL", "HubSpotOptions", "parse_options"]

DEFAULT_BASE_URL = "https://api.hubapi.com"
ENGAGEMENT_KEYS = ("engagement_score", "last_open_at", "last_click_at", "unsubscribed")


class HubSpotOptions(BaseModel):
    """Everything the HubSpot connector can be told."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    access_token: SecretStr = Field(
        default=SecretStr(""),
        description="A private app's access token with crm.objects.contacts.read and .write.",
    )
    client_secret: SecretStr = Field(
        default=SecretStr(""),
        description="The app's client secret, which signs webhooks (X-HubSpot-Signature-v3). "
        "Webhooks are refused until it is set.",
    )
    base_url: AbsoluteUrl = Field(default=DEFAULT_BASE_URL, description="API host.")
    timeout: float = Field(default=30.0, gt=0, le=600, description="Seconds per request.")
    page_size: int = Field(default=100, ge=1, le=200, description="Contacts per search page.")
    properties: dict[str, str] = Field(
        default_factory=lambda: {"first_name": "firstname", "last_name": "lastname"},
        description="postwise field -> HubSpot contact property, for first_name, last_name, "
        "country (a two-letter code property) and timezone (an IANA zone property).",
    )
    attribute_properties: list[str] = Field(
        default_factory=list,
        description="HubSpot properties copied into contact attributes under the same name.",
    )
    unsubscribed_property: str = Field(
        default="hs_email_optout",
        description="The property that says a contact opted out of all email; empty: none.",
    )
    engagement_properties: dict[str, str] = Field(
        default_factory=lambda: {
            "engagement_score": "postwise_engagement_score",
            "last_open_at": "postwise_last_open",
            "last_click_at": "postwise_last_click",
            "unsubscribed": "postwise_unsubscribed",
        },
        description="What postwise pushes -> the HubSpot contact property it is written to "
        "(create them in HubSpot first: number, datetime, datetime, single checkbox).",
    )
    poll_archived: bool = Field(
        default=True,
        description="Reconcile deletions by listing archived (deleted) contacts every "
        "archived_reconcile_hours (deletions otherwise come from contact.deletion webhooks).",
    )
    archived_reconcile_hours: float = Field(
        default=24.0,
        ge=0,
        le=24 * 30,
        description="Hours between listings of the recycle bin. HubSpot can only list all "
        "archived contacts (100 per call, by id), so this is not done on every poll; 0: every "
        "poll (1 call per 100 archived contacts each time).",
    )
    account_timezone: str = Field(
        default="UTC",
        description="The HubSpot account's time zone (Settings > Account defaults): its daily "
        "API limit resets at midnight there, and a connector that used it up waits until then.",
    )
    max_attempts: int = Field(default=5, ge=1, le=20, description="Tries per API call.")
    max_retry_wait: float = Field(
        default=60.0, ge=0, le=3600, description="Longest Retry-After honoured, in seconds."
    )

    @field_validator("account_timezone")
    @classmethod
    def _check_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"{value!r} is not an IANA time zone such as America/New_York"
            ) from None
        return value

    @field_validator("properties")
    @classmethod
    def _check_properties(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(PROFILE_FIELDS))
        if unknown:
            raise ValueError(
                f"{', '.join(unknown)}: only {', '.join(PROFILE_FIELDS)} can be mapped; "
                "list other properties in attribute_properties"
            )
        return value

    @field_validator("engagement_properties")
    @classmethod
    def _check_engagement(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(ENGAGEMENT_KEYS))
        if unknown:
            raise ValueError(f"{', '.join(unknown)}: known keys are {', '.join(ENGAGEMENT_KEYS)}")
        return value


def parse_options(options: Mapping[str, Any]) -> HubSpotOptions:
    """Validate ``options``; raises ConfigurationError naming the option and what is allowed."""
    return validate_options(HubSpotOptions, options, prefix="crm_options.hubspot")
