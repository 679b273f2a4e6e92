"""The ``salesforce`` connector's options: ``POSTWISE_CRM_OPTIONS__SALESFORCE__<KEY>`` or the
``[crm_options.salesforce]`` table of the config file."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from postwise.crm.connector import PROFILE_FIELDS
from postwise.errors import ConfigurationError
from postwise.options import AbsoluteUrl
from postwise.options import parse_options as validate_options

__all__ = ["SalesforceOptions", "parse_options"]

PRODUCTION_AUDIENCE = "https://login.salesforce.com"
SANDBOX_AUDIENCE = "https://test.salesforce.com"
ENGAGEMENT_KEYS = ("engagement_score", "last_open_at", "last_click_at", "unsubscribed")
_FIELD_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,79}$")


class SalesforceOptions(BaseModel):
    """Everything the Salesforce connector can be told."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    login_url: AbsoluteUrl = Field(
        default="https://login.salesforce.com",
        description="Where tokens come from (/services/oauth2/token). Client credentials need "
        "the org's My Domain URL (https://<domain>.my.salesforce.com).",
    )
    audience: str = Field(
        default="",
        description="The JWT bearer assertion's aud: https://login.salesforce.com for "
        "production orgs, https://test.salesforce.com for sandboxes, or an Experience Cloud "
        "site URL, even when the token is posted to a My Domain login_url. Empty: chosen from "
        "login_url (test.salesforce.com or a *.sandbox.my.salesforce.com domain -> sandbox).",
    )
    auth: Literal["client_credentials", "jwt"] = Field(
        default="client_credentials", description="OAuth 2.0 flow of the connected app."
    )
    client_id: str = Field(default="", description="The connected app's consumer key.")
    client_secret: SecretStr = Field(
        default=SecretStr(""), description="The consumer secret (client credentials flow)."
    )
    username: str = Field(default="", description="The user the JWT bearer flow acts as.")
    private_key: SecretStr = Field(
        default=SecretStr(""), description="PEM RSA key whose certificate the app holds (JWT)."
    )
    private_key_path: Path | None = Field(default=None, description="Or the key's file.")
    api_version: str = Field(default="60.0", pattern=r"^\d{2,3}\.0$")
    timeout: float = Field(default=30.0, gt=0, le=600, description="Seconds per request.")
    page_size: int = Field(
        default=2000, ge=200, le=2000, description="Records per query page (batchSize)."
    )
    fields: dict[str, str] = Field(
        default_factory=lambda: {"first_name": "FirstName", "last_name": "LastName"},
        description="postwise field -> Contact field (first_name, last_name, country as a "
        "code such as MailingCountryCode, timezone).",
    )
    attribute_fields: list[str] = Field(
        default_factory=list, description="Contact fields copied into contact attributes."
    )
    unsubscribed_field: str = Field(
        default="HasOptedOutOfEmail",
        description="The field that says the person opted out of email; empty: none.",
    )
    engagement_fields: dict[str, str] = Field(
        default_factory=lambda: {
            "engagement_score": "Postwise_Engagement_Score__c",
            "last_open_at": "Postwise_Last_Open__c",
            "last_click_at": "Postwise_Last_Click__c",
            "unsubscribed": "Postwise_Unsubscribed__c",
        },
        description="What postwise pushes -> the Contact field written (create them first).",
    )
    webhook_secret: SecretStr = Field(
        default=SecretStr(""),
        description="Shared secret of the Flow's HMAC signature; notifications are refused "
        "until it is set.",
    )
    max_attempts: int = Field(default=5, ge=1, le=20, description="Tries per API call.")
    max_retry_wait: float = Field(
        default=60.0, ge=0, le=3600, description="Longest Retry-After honoured, in seconds."
    )

    @field_validator("fields")
    @classmethod
    def _check_fields(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(PROFILE_FIELDS))
        if unknown:
            raise ValueError(
                f"{', '.join(unknown)}: only {', '.join(PROFILE_FIELDS)} can be mapped; list "
                "other fields in attribute_fields"
            )
        return value

    @field_validator("engagement_fields")
    @classmethod
    def _check_engagement(cls, value: dict[str, str]) -> dict[str, str]:
        unknown = sorted(set(value) - set(ENGAGEMENT_KEYS))
        if unknown:
            raise ValueError(f"{', '.join(unknown)}: known keys are {', '.join(ENGAGEMENT_KEYS)}")
        if value.get("unsubscribed", "").lower() == "hasoptedoutofemail":
            # Pushing false there would clear an opt-out made in Salesforce before it is polled.
            raise ValueError("unsubscribed must not be written to HasOptedOutOfEmail")
        return value

    @model_validator(mode="after")
    def _check_names(self) -> SalesforceOptions:
        names = [
            *self.fields.values(),
            *self.attribute_fields,
            *self.engagement_fields.values(),
            *([self.unsubscribed_field] if self.unsubscribed_field else []),
        ]
        bad = [n for n in names if not _FIELD_RE.match(n)]
        if bad:
            raise ValueError(f"{', '.join(bad)}: not Salesforce field API names")
        return self

    @field_validator("audience")
    @classmethod
    def _check_audience(cls, value: str) -> str:
        value = value.strip().rstrip("/")
        if value and not re.match(r"^https://[A-Za-z0-9.-]+(:\d+)?(/[^\s]*)?$", value):
            raise ValueError(
                "must be an https URL such as https://login.salesforce.com, "
                "https://test.salesforce.com or an Experience Cloud site URL"
            )
        return value

    def jwt_audience(self) -> str:
        """The ``aud`` Salesforce accepts: never the My Domain URL the token is posted to."""
        if self.audience:
            return self.audience
        host = (urlsplit(self.login_url).hostname or "").lower()
        if host == "test.salesforce.com" or host.endswith(".sandbox.my.salesforce.com"):
            return SANDBOX_AUDIENCE
        return PRODUCTION_AUDIENCE

    def key_pem(self) -> bytes:
        """The JWT signing key."""
        if self.private_key.get_secret_value():
            return self.private_key.get_secret_value().encode()
        if self.private_key_path is not None:
            return self.private_key_path.read_bytes()
        raise ConfigurationError(
            "crm_options.salesforce: the jwt flow needs private_key or private_key_path"
        )


def parse_options(options: Mapping[str, Any]) -> SalesforceOptions:
    """Validate ``options``; raises ConfigurationError naming the option and what is allowed."""
    return validate_options(SalesforceOptions, options, prefix="crm_options.salesforce")
