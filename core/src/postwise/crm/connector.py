"""The contract of CRM connectors (HubSpot, Salesforce, ...).

Contacts flow in from the CRM by webhooks (fresh) and periodic polling (reliable); engagement
flows back out. A connector speaks one CRM's wire format; sync state and conflict resolution live
in the core.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

__all__ = ["CrmConnector", "CrmContact", "EngagementUpdate"]


@dataclass(frozen=True, slots=True)
class CrmContact:
    """A contact as the CRM describes it."""

    external_id: str
    email: str
    updated_at: datetime
    properties: Mapping[str, Any] = field(default_factory=dict)
    deleted: bool = False


@dataclass(frozen=True, slots=True)
class EngagementUpdate:
    """Engagement to write back to one CRM record."""

    external_id: str
    properties: Mapping[str, Any]


class CrmConnector(abc.ABC):
    """One CRM's API."""

    name: ClassVar[str]

    @abc.abstractmethod
    def fetch_changes(self, since: datetime | None) -> Iterator[CrmContact]:
        """Contacts created or changed since ``since`` (all of them when ``None``)."""

    @abc.abstractmethod
    def push_engagement(self, updates: Sequence[EngagementUpdate]) -> None:
        """Write engagement properties back to the CRM records."""

    @abc.abstractmethod
    def verify_webhook(self, headers: Mapping[str, str], body: bytes) -> bool:
        """Whether a webhook request carries the CRM's valid signature."""

    @abc.abstractmethod
    def parse_webhook(self, body: bytes) -> list[CrmContact]:
        """The contact changes a verified webhook announces."""
