"""Recording what happened to each message of an attempt: ledger, events, retries.

A :class:`Settlement` collects the outcome of every message of one attempt and commits them in
an order that survives a crash at any point:

1. events go on the stream first (:func:`postwise.streams.publish`, one atomic call), with
   deterministic ids (``sent:<message id>``...), so writing them twice after a crash is
   harmless: consumers are idempotent by event id;
2. the ledger rows are updated in one transaction, each only while the attempt's claim holds;
3. retries and deferrals are enqueued for their time. Rows going back to waiting carry a due-by
   time, so a crash before this step leaves them to the sweeper rather than losing them.

Outcomes (see :class:`~postwise.delivery.provider.Outcome`):

* accepted → ``accepted`` and a ``sent`` event;
* permanent → ``bounced`` and a ``bounce`` event for the compliance consumer, with the SMTP reply
  as ``smtp_code``/``status``/``diagnostic`` and the provider's verdict as ``kind`` when it gave
  one (compliance then acts on the kind instead of classifying the reply);
* failed → ``dead`` and a ``dead_letter`` event, never a bounce: the recipient is not at fault;
* transient → ``retrying`` with exponential backoff (at least the provider's ``retry_after``),
  or after ``max_attempts`` ``dead`` with a ``dead_letter`` event;
* deferred → waiting again for the provider's ``retry_after`` (bounded, see
  :mod:`~postwise.delivery.retry`), without using up an attempt; once the provider has been
  deferring it for ``delivery_max_defer_hours`` (since its first deferral, recorded as
  ``message.deferred_since``), ``dead`` with a ``dead_letter`` event instead;
* unknown → ``dead`` *in doubt*, like a message a crashed worker had handed over: the provider
  may have it, so it is never sent again automatically.

Events carry an HTTP API's status as ``http_status``, never as ``smtp_code``; so does the ledger
(``last_http_status`` beside ``last_code``).
"""

from __future__ import annotations

import math
import random
import threading
from collections import Counter
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from postwise.compliance.gate import SkipReason
from postwise.db.models import MessageStatus, utcnow
from postwise.delivery.ledger import ClaimedRow, RowUpdate, apply_updates, pending_status
from postwise.delivery.provider import Outcome, SendResult
from postwise.delivery.queue import enqueue_later
from postwise.delivery.retry import (
    backoff_seconds,
    deferral_seconds,
    is_exhausted,
    retry_seconds,
)
from postwise.events import EventEnvelope
from postwise.ops.metrics import MESSAGES_SETTLED
from postwise.streams.publish import publish

if TYPE_CHECKING:
    from postwise.runtime import Runtime

__all__ = ["IN_DOUBT_PREFIX", "IN_DOUBT_REASON", "Settlement", "in_doubt_reason"]


#: How every in-doubt reason begins (``last_error`` and the ``dead_letter`` event).
IN_DOUBT_PREFIX = "in doubt: "
IN_DOUBT_REASON = (
    f"{IN_DOUBT_PREFIX}the worker stopped while the provider had this message, so it may have "
    "been accepted; not sent again to avoid a duplicate"
)


def in_doubt_reason(detail: str) -> str:
    """The reason a message the provider may have taken (``detail`` says why) is dead."""
    what = detail.strip()[:600] or "the provider could not tell whether it took the message"
    return f"{IN_DOUBT_PREFIX}{what}; not sent again to avoid a duplicate"


class Settlement:
    """The outcomes of one attempt (``token``), committed together."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        token: str,
        sending_domain: str | None = None,
        now: datetime | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.runtime = runtime
        self.settings = runtime.settings
        self.token = token
        self.sending_domain = sending_domain
        self.now = now or utcnow()
        self.rng = rng or random.Random()
        self.updates: list[RowUpdate] = []
        self.events: list[EventEnvelope] = []
        #: (provider, delay in seconds) → message ids to enqueue again after that delay.
        self.later: dict[tuple[str, float], list[str]] = {}
        self._retry_delays: dict[int, float] = {}
        self.counts: Counter[str] = Counter()
        # Lanes of one attempt record outcomes from several threads.
        self._lock = threading.RLock()

    def result(
        self, row: ClaimedRow, result: SendResult, *, recipient_domain: str | None = None
    ) -> None:
        """Record the provider's outcome for ``row``'s message."""
        if result.outcome is Outcome.DEFERRED:
            self._provider_deferred(row, result, recipient_domain)
            return
        attempts = row.attempts + 1
        common: dict[str, Any] = {
            "attempts": attempts,
            "last_code": result.code,
            "last_status": result.status,
            "last_http_status": result.http_status,
        }
        if result.outcome is Outcome.ACCEPTED:
            self._update(
                row,
                MessageStatus.ACCEPTED,
                provider_message_id=result.provider_message_id,
                # The message's own acceptance, not the batch's start (bot and prefetch
                # classification measure from it).
                sent_at=result.accepted_at or self.now,
                **common,
            )
            self._event(
                "sent",
                row,
                occurred_at=result.accepted_at,
                smtp_code=result.code,
                http_status=result.http_status,
                recipient_domain=recipient_domain,
                sending_domain=self.sending_domain,
                template_id=row.template_id,
                template_version=row.template_version,
            )
        elif result.outcome is Outcome.PERMANENT:
            self._update(row, MessageStatus.BOUNCED, last_error=result.reason, **common)
            self._event(
                "bounce",
                row,
                kind=result.bounce_kind.value if result.bounce_kind is not None else None,
                smtp_code=result.code,
                http_status=result.http_status,
                status=result.status,
                diagnostic=result.reason,
                recipient_domain=recipient_domain,
                sending_domain=self.sending_domain,
            )
        elif result.outcome is Outcome.UNKNOWN:
            self.in_doubt(row, detail=result.reason, recipient_domain=recipient_domain, **common)
        elif result.outcome is Outcome.FAILED:
            self._dead(row, result.reason, recipient_domain=recipient_domain, **common)
        elif is_exhausted(attempts, self.settings):
            self._dead(
                row,
                f"gave up after {attempts} attempts: {result.reason}",
                recipient_domain=recipient_domain,
                **common,
            )
        else:
            delay = retry_seconds(self._retry_delay(attempts), result.retry_after)
            self._update(
                row,
                MessageStatus.RETRYING,
                last_error=result.reason,
                due_by=self._due_by(delay),
                # Tried, and the attempt counted: max_attempts bounds it from here, and a later
                # deferral starts the deferral limit again.
                reset_deferral=True,
                **common,
            )
            self._later(row, delay)

    def skipped(self, row: ClaimedRow, reason: SkipReason | str) -> None:
        """``row`` must not be sent (the gate said no, or a plugin vetoed it)."""
        self._update(
            row,
            MessageStatus.SKIPPED,
            attempts=row.attempts,
            last_error=str(reason),
            count_as=f"skipped:{reason}",
        )

    def failed(self, row: ClaimedRow, reason: str) -> None:
        """``row`` cannot be built (a template or address error); retrying would not help."""
        self._dead(row, reason, attempts=row.attempts)

    def in_doubt(
        self,
        row: ClaimedRow,
        *,
        detail: str | None = None,
        **fields: Any,
    ) -> None:
        """``row``'s message may have been taken: dead-lettered, never sent again by itself.

        Without ``detail``, its attempt died while the provider had it (see :mod:`journal`);
        with it, the provider said it could not tell (``detail`` is its reason).
        """
        reason = IN_DOUBT_REASON if detail is None else in_doubt_reason(detail)
        fields.setdefault("attempts", row.attempts + 1)
        self._dead(row, reason, in_doubt=True, **fields)

    def deferred(self, row: ClaimedRow, delay: float, reason: str, **fields: Any) -> None:
        """Put ``row`` back to wait ``delay`` seconds (rate limit, reputation pause, recovery).

        ``fields`` are more of the row's new values (the reply that deferred it). These waits are
        postwise's own and have no limit; a provider's deferral, which has one
        (``delivery_max_defer_hours``), goes through :meth:`result`.
        """
        delay = round(max(0.0, delay), 3)
        self._update(
            row,
            pending_status(row.attempts),
            attempts=row.attempts,
            last_error=reason,
            due_by=self._due_by(delay),
            count_as="deferred",
            **fields,
        )
        self._later(row, delay)

    def _provider_deferred(
        self, row: ClaimedRow, result: SendResult, recipient_domain: str | None = None
    ) -> None:
        # A deferral uses up no attempt, so only time ends a throttle that never lifts: like an
        # MTA's queue lifetime, counted from the provider's first deferral of the message (a
        # wait of postwise's own making, a schedule or a rate limit, does not count).
        reason = result.reason or "deferred by the provider"
        replies: dict[str, Any] = {
            "last_code": result.code,
            "last_status": result.status,
            "last_http_status": result.http_status,
        }
        limit = self.settings.delivery_max_defer_hours
        since = row.deferred_since or self.now
        age = self.now - since
        if age >= timedelta(hours=limit):
            hours = age.total_seconds() / 3600
            self._dead(
                row,
                f"gave up: deferred by the provider for {hours:.1f} h "
                f"(delivery_max_defer_hours is {limit:g}): {reason}",
                attempts=row.attempts,
                recipient_domain=recipient_domain,
                **replies,
            )
            return
        # Without a time from the provider, wait about as long as the message has been deferred
        # already (the backoff of the matching attempt number): a relay that stays away is asked
        # again after 30 s, then minutes, then hourly, not every 30 s for days.
        step = 1 + int(math.log2(max(1.0, age.total_seconds() / self.settings.retry_base_seconds)))
        delay = deferral_seconds(result.retry_after, self._retry_delay(min(step, 32)))
        self.deferred(row, delay, reason, deferred_since=since, **replies)

    def commit(self) -> Counter[str]:
        """Write events, then the ledger, then enqueue what must run again; returns counts."""
        if self.events:
            # Ids are deterministic and every consumer is idempotent by id: no markers needed.
            publish(self.runtime, self.events, dedupe=False)
        if self.updates:
            with self.runtime.engine.begin() as connection:
                apply_updates(connection, self.token, self.updates, now=self.now)
        if self.later:
            for (provider, delay), ids in self.later.items():
                enqueue_later(self.runtime, provider, ids, delay)
        for key, amount in self.counts.items():
            outcome, _, reason = key.partition(":")
            MESSAGES_SETTLED.labels(outcome, reason).inc(amount)
        return self.counts

    def _dead(
        self,
        row: ClaimedRow,
        reason: str,
        *,
        in_doubt: bool | None = None,
        recipient_domain: str | None = None,
        **fields: Any,
    ) -> None:
        self._update(row, MessageStatus.DEAD, last_error=reason, **fields)
        self._event(
            "dead_letter",
            row,
            reason=reason[:500],
            recipient_domain=recipient_domain,
            attempts=fields.get("attempts"),
            in_doubt=in_doubt,
            smtp_code=fields.get("last_code"),
            http_status=fields.get("last_http_status"),
        )

    def _retry_delay(self, attempts: int) -> float:
        # One draw per attempt number and settlement: a batch's retries travel as one job.
        with self._lock:
            delay = self._retry_delays.get(attempts)
            if delay is None:
                delay = round(backoff_seconds(attempts, self.settings, rng=self.rng), 3)
                self._retry_delays[attempts] = delay
            return delay

    def _later(self, row: ClaimedRow, delay: float) -> None:
        with self._lock:
            self.later.setdefault((row.provider, delay), []).append(row.id)

    def _due_by(self, delay: float) -> datetime:
        return self.now + timedelta(seconds=delay + self.settings.delivery_lease_seconds)

    @property
    def settled(self) -> set[str]:
        """Ids of the messages whose outcome is recorded."""
        with self._lock:
            return {update.id for update in self.updates}

    def _update(
        self, row: ClaimedRow, status: str, *, count_as: str | None = None, **fields: Any
    ) -> None:
        update = RowUpdate(id=row.id, status=str(status), **fields)
        with self._lock:
            self.updates.append(update)
            if count_as is not None:
                self.counts[count_as] += 1
            elif status != MessageStatus.SKIPPED:
                self.counts[str(status)] += 1

    def _event(
        self,
        event_type: str,
        row: ClaimedRow,
        *,
        occurred_at: datetime | None = None,
        **properties: Any,
    ) -> None:
        props: Mapping[str, Any] = {k: v for k, v in properties.items() if v is not None}
        event = EventEnvelope(
            event_id=f"{event_type}:{row.id}",
            type=event_type,
            occurred_at=occurred_at or self.now,
            contact_id=row.contact_id,
            message_id=row.id,
            campaign_id=row.campaign_id,
            trigger_id=row.trigger_id,
            experiment_id=row.experiment_id,
            variant=row.variant,
            provider=row.provider,
            properties=props,
        )
        with self._lock:
            self.events.append(event)
