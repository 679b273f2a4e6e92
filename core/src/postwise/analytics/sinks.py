"""The contract of analytics sinks: where the batch writer stores events for the long term.

The built-in sink writes to the SQL database (PostgreSQL in production); the ClickHouse sink in
``contrib/`` implements the same contract for large deployments.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import TYPE_CHECKING, ClassVar

from postwise.events import EventEnvelope

if TYPE_CHECKING:
    from postwise.analytics.metrics import MetricsBackend

__all__ = ["AnalyticsSink", "StoredEvent"]


#: The event a sink stores is the one event shape, :class:`postwise.events.EventEnvelope` (the
#: name stays for sink plugins). Sinks without a ``trigger_id`` column store
#: :attr:`~postwise.events.EventEnvelope.stored_properties`.
StoredEvent = EventEnvelope


class AnalyticsSink(abc.ABC):
    """Long-term event storage."""

    name: ClassVar[str]

    #: True when :meth:`write_batch` also folds new events into contacts' engagement scores
    #: in the same transaction (the SQL sink). Otherwise the batch writer does it from what
    #: :meth:`write_new` returns.
    maintains_engagement: ClassVar[bool] = False

    @abc.abstractmethod
    def write_batch(self, events: Sequence[StoredEvent]) -> int:
        """Store ``events`` idempotently by ``event_id``; return how many were new."""

    @abc.abstractmethod
    def erase_contact(self, contact_id: int) -> int:
        """Remove every event of ``contact_id`` (right to erasure); return how many."""

    def write_new(self, events: Sequence[StoredEvent]) -> list[StoredEvent]:
        """Store ``events`` like :meth:`write_batch` and return those not stored before.

        Sinks that can tell which events were new override this. The default is exact when a
        batch is all new or all known; a batch that is partly known (only a redelivery after a
        crash makes one) returns nothing, so engagement is never counted twice.
        """
        new = self.write_batch(events)
        return list(events) if new == len(events) else []

    def events_of_contact(self, contact_id: int) -> list[StoredEvent] | None:
        """Every stored event of ``contact_id``, oldest first: the right of access (GDPR
        art. 15) exports them. ``None`` means this sink cannot read events back; the export
        then says its events are missing instead of pretending there are none. Every sink
        postwise ships implements it, and :class:`~postwise.testing.contracts.AnalyticsSinkContract`
        holds plugins to it."""
        return None

    def metrics(self) -> MetricsBackend | None:
        """The metric queries over this sink's events, or ``None`` if it cannot answer them."""
        return None

    def close(self) -> None:  # noqa: B027 - optional hook with a sound no-op default
        """Release connections."""
