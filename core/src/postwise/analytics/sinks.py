"""The contract of analytics sinks: where the batch writer stores events for the long term.

The built-in sink writes to the SQL database (PostgreSQL in production); the ClickHouse sink in
``contrib/`` implements the same contract for large deployments.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar

__all__ = ["AnalyticsSink", "StoredEvent"]


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """An event as sinks store it. Contacts are referred to by id, never by address."""

    event_id: str
    type: str
    occurred_at: datetime
    contact_id: int | None = None
    message_id: str | None = None
    campaign_id: int | None = None
    experiment_id: int | None = None
    variant: str | None = None
    provider: str | None = None
    properties: Mapping[str, Any] = field(default_factory=dict)


class AnalyticsSink(abc.ABC):
    """Long-term event storage."""

    name: ClassVar[str]

    @abc.abstractmethod
    def write_batch(self, events: Sequence[StoredEvent]) -> int:
        """Store ``events`` idempotently by ``event_id``; return how many were new."""

    @abc.abstractmethod
    def erase_contact(self, contact_id: int) -> int:
        """Remove every event of ``contact_id`` (right to erasure); return how many."""

    def close(self) -> None:  # noqa: B027 - optional hook with a sound no-op default
        """Release connections."""
