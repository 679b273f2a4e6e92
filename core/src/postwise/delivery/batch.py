"""Delivering one batch: claim, re-check, render, rate-limit, send, record.

:func:`deliver` is what the RQ job runs. The steps, each once per batch unless said otherwise:

1. recover rows of this batch whose earlier attempt died (expired claim), then claim the rows
   that wait for an attempt: rows already sent, skipped or claimed by a live attempt are left
   alone, which is what makes a re-delivered job harmless;
2. load the contacts (one query) and re-check the compliance gate, with the consent purpose
   each row records: an unsubscribe or a withdrawal of consent that arrived after the message
   was queued means it is not sent;
3. defer what a reputation pause covers (provider, sending domain, recipient domain);
4. take tokens from the provider's bucket for the rest; what is over the limit waits in the
   queue until the bucket refills;
5. per chunk of ``delivery_chunk_size`` messages, on up to ``delivery_concurrency`` lanes at
   once: render and sign, ask the ``before_send`` hooks, journal, send, call the
   ``after_send`` hooks. Once the provider throttles the sender, or a run of transient failures
   trips the circuit breaker, the chunks not taken yet are not attempted: they are deferred,
   without using up an attempt;
6. record every outcome (:class:`~postwise.delivery.outcomes.Settlement`).
"""

from __future__ import annotations

import dataclasses
import logging
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import TYPE_CHECKING

from postwise.contacts.normalize import email_domain
from postwise.db.models import utcnow
from postwise.delivery.compose import ContactData, load_contacts
from postwise.delivery.gate import Pauses, Recipient, SkipReason
from postwise.delivery.journal import Journal
from postwise.delivery.ledger import ClaimedRow, claim
from postwise.delivery.outcomes import Settlement
from postwise.delivery.provider import (
    Outcome,
    OutgoingMessage,
    Provider,
    SendResult,
    throttles_sender,
)
from postwise.delivery.recovery import recover_stale
from postwise.delivery.services import DeliveryServices, services_for
from postwise.errors import ConfigurationError, DeliveryError, NotFoundError, PostwiseError
from postwise.ops.metrics import RATE_LIMIT_WAITS

if TYPE_CHECKING:
    from postwise.runtime import Runtime

__all__ = ["PAUSE_RECHECK_SECONDS", "deliver", "lease_seconds"]

log = logging.getLogger(__name__)

#: How long messages covered by a reputation pause wait before they are looked at again.
PAUSE_RECHECK_SECONDS = 300.0

#: After this many consecutive transient failures in one batch the rest of the batch is not
#: attempted (it is deferred): a relay that is down fails every message the same way, each
#: after a timeout.
MAX_CONSECUTIVE_TRANSIENT = 3

_NOT_ATTEMPTED = "not attempted: "

_JOURNAL_GRACE_SECONDS = 86400


def lease_seconds(job_timeout: int) -> int:
    """How long a claim lasts: the job timeout and a tenth more (at most a minute).

    The job is interrupted at its timeout; the slack lets an attempt that was interrupted
    finish the provider calls in flight and settle before recovery takes its rows over.
    """
    return job_timeout + min(60, job_timeout // 10)


def deliver(runtime: Runtime, message_ids: Sequence[str]) -> dict[str, int]:
    """Deliver the messages among ``message_ids`` that wait for an attempt; returns counts."""
    if not message_ids:
        return {}
    services = services_for(runtime)
    # Built before anything is claimed: a misconfiguration (sender, DKIM key) fails the job
    # with the rows untouched, instead of leaving them claimed until the lease runs out.
    composer = services.composer
    recover_stale(runtime, message_ids=message_ids)
    settings = runtime.settings
    token = uuid.uuid4().hex
    now = utcnow()
    with runtime.engine.begin() as connection:
        rows = claim(
            connection,
            message_ids,
            token=token,
            until=now + timedelta(seconds=lease_seconds(settings.delivery_lease_seconds)),
            now=now,
        )
    if not rows:
        return {"claimed": 0}
    settlement = Settlement(runtime, token=token, sending_domain=composer.sending_domain, now=now)
    journal = Journal(
        runtime.redis, token, ttl=settings.delivery_lease_seconds + _JOURNAL_GRACE_SECONDS
    )
    attempt = _Attempt(runtime, services, settlement, journal)
    try:
        attempt.run(rows)
    except Exception as exc:
        # Record what is known: a message with the provider when it failed is in doubt, the
        # rest failed transiently (so a failure that repeats ends in the dead letters instead
        # of looping). If even this fails, the claim stays and recovery takes over.
        log.exception("delivery of a batch of %d messages failed", len(rows))
        attempt.abandon(rows, f"worker error: {type(exc).__name__}: {exc}")
    counts: Counter[str] = settlement.commit()
    journal.discard()
    counts["claimed"] = len(rows)
    return dict(counts)


class _Attempt:
    """One attempt at a claimed batch."""

    def __init__(
        self,
        runtime: Runtime,
        services: DeliveryServices,
        settlement: Settlement,
        journal: Journal,
    ) -> None:
        self.runtime = runtime
        self.services = services
        self.settlement = settlement
        self.journal = journal
        self.composer = services.composer
        self.hook = runtime.plugins.hook
        #: Ids of the messages with the provider right now (in doubt if the attempt fails).
        self.in_flight: set[str] = set()
        self._lock = threading.Lock()

    def abandon(self, rows: list[ClaimedRow], reason: str) -> None:
        """Settle every row not settled yet after the attempt failed with ``reason``."""
        doubtful = set(self.in_flight)
        settled = self.settlement.settled
        for row in rows:
            if row.id in settled:
                continue
            if row.id in doubtful:
                self.settlement.in_doubt(row)
            else:
                self.settlement.result(row, SendResult(row.id, Outcome.TRANSIENT, reason=reason))

    def run(self, rows: list[ClaimedRow]) -> None:
        contacts, segments, sendable = self._gate(rows)
        pauses = Pauses.load(self.runtime.redis)
        by_provider: dict[str, list[ClaimedRow]] = {}
        for row in sendable:
            by_provider.setdefault(row.provider, []).append(row)
        for provider_name, group in by_provider.items():
            try:
                provider = self.runtime.provider(provider_name)
            except ConfigurationError as exc:
                # The operator's to fix, not the messages' fault: they wait, using up nothing,
                # and nothing is lost (a dead letter per message would be).
                log.error(
                    "provider %r cannot be built, holding its messages: %s", provider_name, exc
                )
                for row in group:
                    self.settlement.deferred(
                        row,
                        PAUSE_RECHECK_SECONDS,
                        f"provider {provider_name!r} is misconfigured: {exc}",
                    )
                continue
            unpaused = self._apply_pauses(group, contacts, pauses, provider_name)
            granted = self._take_tokens(unpaused, provider_name)
            if granted:
                self._send(provider, granted, contacts, segments)

    def _gate(
        self, rows: list[ClaimedRow]
    ) -> tuple[dict[int, ContactData], dict[int, set[str]], list[ClaimedRow]]:
        from postwise.contacts.segments import contacts_in_segment

        settlement = self.settlement
        with self.runtime.session() as session:
            contacts = load_contacts(session, (r.contact_id for r in rows if r.contact_id))
            ready: list[ClaimedRow] = []
            for row in rows:
                if row.contact_id is None or row.contact_id not in contacts:
                    settlement.skipped(row, SkipReason.INVALID_CONTACT)
                    continue
                ready.append(row)
            self.composer.prepare(session, ready)
            sendable: list[ClaimedRow] = []
            for marketing in (True, False):
                part = [r for r in ready if self.composer.is_marketing(r) == marketing]
                if not part:
                    continue
                # Per row, not per contact: one contact's rows in a batch may need different
                # consent purposes (a campaign to a consent list and a trigger's send).
                recipients = [_recipient(contacts[r.contact_id], r) for r in part if r.contact_id]
                reasons = self.services.gate.check_each(session, recipients, marketing=marketing)
                for row, reason in zip(part, reasons, strict=True):
                    if reason is None:
                        sendable.append(row)
                    else:
                        settlement.skipped(row, reason)
            segments: dict[int, set[str]] = {}
            ids = [r.contact_id for r in sendable if r.contact_id is not None]
            for name in sorted(self.composer.segments_needed(sendable)):
                try:
                    members = contacts_in_segment(session, name, ids)
                except NotFoundError:
                    members = set()
                for contact_id in members:
                    segments.setdefault(contact_id, set()).add(name)
        order = {row.id: i for i, row in enumerate(rows)}
        sendable.sort(key=lambda r: order[r.id])
        return contacts, segments, sendable

    def _apply_pauses(
        self,
        rows: list[ClaimedRow],
        contacts: dict[int, ContactData],
        pauses: Pauses,
        provider: str,
    ) -> list[ClaimedRow]:
        if not pauses:
            return rows
        whole = pauses.provider(provider) or pauses.sending_domain(self.composer.sending_domain)
        delay = PAUSE_RECHECK_SECONDS * (1 + random.random() / 10)
        # A pause is a decision to hold mail: the time it holds a message never counts toward
        # delivery_max_defer_hours (the limit starts again at the next provider deferral).
        if whole:
            for row in rows:
                self._paused(row, delay, whole)
            return []
        kept: list[ClaimedRow] = []
        for row in rows:
            assert row.contact_id is not None
            reason = pauses.recipient_domain(contacts[row.contact_id].email)
            if reason:
                self._paused(row, delay, reason)
            else:
                kept.append(row)
        return kept

    def _paused(self, row: ClaimedRow, delay: float, reason: str) -> None:
        self.settlement.deferred(row, delay, f"reputation pause: {reason}", reset_deferral=True)

    def _take_tokens(self, rows: list[ClaimedRow], provider: str) -> list[ClaimedRow]:
        bucket = self.services.bucket(provider)
        if bucket is None or not rows:
            return rows
        grant = bucket.take(len(rows))
        if grant.granted < len(rows):
            # A little jitter keeps workers deferred at the same moment from all returning at once.
            delay = grant.retry_after * (1 + random.random() / 10)
            reason = f"rate limit of {provider} ({bucket.limit})"
            RATE_LIMIT_WAITS.labels(provider).inc(len(rows) - grant.granted)
            for row in rows[grant.granted :]:
                self.settlement.deferred(row, delay, reason)
        return rows[: grant.granted]

    def _send(
        self,
        provider: Provider,
        rows: list[ClaimedRow],
        contacts: dict[int, ContactData],
        segments: dict[int, set[str]],
    ) -> None:
        """Send ``rows`` in chunks, over up to ``delivery_concurrency`` provider calls at once."""
        settings = self.runtime.settings
        size = settings.delivery_chunk_size
        chunks = [rows[i : i + size] for i in range(0, len(rows), size)]
        lanes = min(settings.delivery_concurrency, len(chunks))
        work = _Chunks(chunks)
        if lanes <= 1:
            self._lane(provider, work, contacts, segments)
            return
        # Each lane renders and sends its own chunks on its own connection, so one lane's wait
        # for the relay's replies is another lane's time to render and sign.
        pool = ThreadPoolExecutor(lanes, thread_name_prefix="postwise-send")
        try:
            futures = [
                pool.submit(self._lane, provider, work, contacts, segments) for _ in range(lanes)
            ]
            for future in futures:
                future.result()
        finally:
            # Also when this thread is interrupted (the job timeout): no lane may still be
            # sending once the attempt settles, or a message could be sent and retried.
            work.stop()
            pool.shutdown(wait=True)

    def _lane(
        self,
        provider: Provider,
        work: _Chunks,
        contacts: dict[int, ContactData],
        segments: dict[int, set[str]],
    ) -> None:
        unflushed: list[SendResult] = []
        try:
            while (chunk := work.take()) is not None:
                held = work.held(provider.name)
                if held is not None:
                    for row in chunk:
                        self.settlement.result(row, dataclasses.replace(held, message_id=row.id))
                    continue
                outgoing = self._compose(chunk, contacts, segments)
                if not outgoing:
                    continue
                self.journal.write(unflushed, started=[m.message_id for _, m in outgoing])
                with self._lock:
                    self.in_flight.update(row.id for row, _ in outgoing)
                results = _send_batch(provider, [m for _, m in outgoing])
                for (row, message), result in zip(outgoing, results, strict=True):
                    self.settlement.result(
                        row, result, recipient_domain=email_domain(message.recipient)
                    )
                with self._lock:
                    self.in_flight.difference_update(row.id for row, _ in outgoing)
                unflushed = results
                for (_, message), result in zip(outgoing, results, strict=True):
                    self._after_send(message, result)
                work.observe(results)
            self.journal.write(unflushed)
        except BaseException:
            work.stop()
            raise

    def _after_send(self, message: OutgoingMessage, result: SendResult) -> None:
        try:
            self.hook.postwise_after_send(message=message, result=result)
        except Exception:
            # The message is sent and recorded; an observer's failure must not change that.
            log.exception("a postwise_after_send hook failed for message %s", message.message_id)

    def _compose(
        self,
        chunk: list[ClaimedRow],
        contacts: dict[int, ContactData],
        segments: dict[int, set[str]],
    ) -> list[tuple[ClaimedRow, OutgoingMessage]]:
        outgoing: list[tuple[ClaimedRow, OutgoingMessage]] = []
        for row in chunk:
            assert row.contact_id is not None
            try:
                message = self.composer.compose(
                    row, contacts[row.contact_id], segments=segments.get(row.contact_id, ())
                )
            except PostwiseError as exc:
                self.settlement.failed(row, f"could not build the message: {exc}")
                continue
            verdicts = self.hook.postwise_before_send(message=message, contact_id=row.contact_id)
            if any(verdict is False for verdict in verdicts):
                self.settlement.skipped(row, SkipReason.VETOED)
                continue
            outgoing.append((row, message))
        return outgoing


class _Chunks:
    """The chunks of a batch, handed out to lanes, and what holds back those not taken yet.

    Two things do, and the chunks they hold back are deferred, without using up an attempt
    (they were not attempted):

    * the provider throttles the sender (a deferral that is not about one recipient, see
      :func:`~postwise.delivery.provider.throttles_sender`): the other chunks would be refused
      the same way, so they wait as long as the provider asked, as the messages of the
      throttled chunk that the provider did not attempt do;
    * the circuit breaker: after :data:`MAX_CONSECUTIVE_TRANSIENT` transient failures in a
      row, a relay that is down fails every message the same way, each after a timeout.
    """

    def __init__(self, chunks: list[list[ClaimedRow]]) -> None:
        self._chunks = iter(chunks)
        self._lock = threading.Lock()
        self._transient = 0
        self._last_transient: SendResult | None = None
        self._throttled: SendResult | None = None
        self._stopped = False

    def take(self) -> list[ClaimedRow] | None:
        with self._lock:
            if self._stopped:
                return None
            return next(self._chunks, None)

    def stop(self) -> None:
        with self._lock:
            self._stopped = True

    def observe(self, results: list[SendResult]) -> None:
        with self._lock:
            for result in results:
                if result.outcome is Outcome.TRANSIENT:
                    self._transient += 1
                    self._last_transient = result
                    continue
                self._transient = 0
                if self._throttled is None and throttles_sender(result):
                    self._throttled = result

    def held(self, provider: str) -> SendResult | None:
        """Why the next chunk is not attempted, as the deferral to give each of its messages
        (``message_id`` left empty), or None to attempt it."""
        with self._lock:
            throttled = self._throttled
            if throttled is not None:
                cause = throttled.reason.removeprefix(_NOT_ATTEMPTED)
                return SendResult(
                    "",
                    Outcome.DEFERRED,
                    code=throttled.code,
                    status=throttled.status,
                    reason=f"{_NOT_ATTEMPTED}{provider} is refusing the sender for now ({cause})",
                    http_status=throttled.http_status,
                    retry_after=throttled.retry_after,
                )
            last = self._last_transient
            if self._transient < MAX_CONSECUTIVE_TRANSIENT or last is None:
                return None
            return SendResult(
                "",
                Outcome.DEFERRED,
                reason=(
                    f"{_NOT_ATTEMPTED}{self._transient} messages in a row failed transiently at "
                    f"{provider} (last: {last.reason})"
                ),
                retry_after=last.retry_after,
            )


def _recipient(contact: ContactData, row: ClaimedRow) -> Recipient:
    return Recipient(
        contact.id, contact.email, contact.status, contact.country, row.consent_purpose
    )


def _send_batch(provider: Provider, messages: list[OutgoingMessage]) -> list[SendResult]:
    """The provider's results, one per message in order, whatever the provider did."""
    started = time.monotonic()
    try:
        results = provider.send_batch(messages)
    except DeliveryError as exc:
        return [SendResult(m.message_id, Outcome.TRANSIENT, reason=str(exc)) for m in messages]
    by_id = {r.message_id: r for r in results}
    if len(results) != len(messages) or len(by_id) != len(messages):
        log.error(
            "provider %s returned %d results for %d messages (after %.1fs); messages without "
            "a result are retried",
            provider.name,
            len(results),
            len(messages),
            time.monotonic() - started,
        )
    return [
        by_id.get(m.message_id)
        or SendResult(m.message_id, Outcome.TRANSIENT, reason="the provider returned no result")
        for m in messages
    ]
