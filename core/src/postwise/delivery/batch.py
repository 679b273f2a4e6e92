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
   once: render and sign, ask the ``before_send`` hooks, send, call the ``after_send`` hooks.
   Each message is journaled right before it is handed over (:mod:`.journal`), so a kill leaves
   at most the message being transmitted per lane in doubt; each acceptance is written to the
   ledger's ``sent_at`` with its own time within :data:`ACCEPTANCE_FLUSH_SECONDS`, while the
   batch is still being sent. Once the provider throttles the sender, or a run of transient
   failures trips the circuit breaker, the chunks not taken yet are not attempted: they are
   deferred, without using up an attempt;
6. record every outcome (:class:`~postwise.delivery.outcomes.Settlement`), waiting for Redis
   and PostgreSQL if they are briefly away.

A worker asked to stop (:func:`~postwise.delivery.liveness.request_stop`) hands no further
message over: the one being transmitted finishes, the rest go back to the queue at once, not in
doubt. An attempt whose rows the sweeper took over (its worker's heartbeat lapsed) stops the
same way and records nothing: the rows are the sweeper's.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import redis
import sqlalchemy as sa

from postwise.compliance.gate import Pauses, Recipient, SkipReason
from postwise.contacts.normalize import email_domain
from postwise.contacts.segments import contacts_in_segment
from postwise.db.models import utcnow
from postwise.delivery.compose import ContactData, load_contacts
from postwise.delivery.journal import Fenced, Journal
from postwise.delivery.ledger import ClaimedRow, claim, record_acceptances
from postwise.delivery.liveness import current_owner, stop_requested
from postwise.delivery.outcomes import Settlement
from postwise.delivery.provider import (
    NOT_HANDED_OVER,
    Outcome,
    OutgoingMessage,
    Provider,
    SendObserver,
    SendResult,
    get_provider,
    throttles_sender,
)
from postwise.delivery.recovery import recover_stale
from postwise.delivery.services import DeliveryServices, services_for
from postwise.errors import ConfigurationError, DeliveryError, NotFoundError, PostwiseError
from postwise.ops.metrics import RATE_LIMIT_WAITS

if TYPE_CHECKING:
    from postwise.runtime import Runtime

__all__ = ["ACCEPTANCE_FLUSH_SECONDS", "PAUSE_RECHECK_SECONDS", "deliver", "lease_seconds"]

log = logging.getLogger(__name__)

#: How long messages covered by a reputation pause wait before they are looked at again.
PAUSE_RECHECK_SECONDS = 300.0

#: After this many consecutive transient failures in one batch the rest of the batch is not
#: attempted (it is deferred): a relay that is down fails every message the same way, each
#: after a timeout.
MAX_CONSECUTIVE_TRANSIENT = 3

_NOT_ATTEMPTED = "not attempted: "

_JOURNAL_GRACE_SECONDS = 86400

#: Acceptance times are written to the ledger at most this long after the acceptance (in one
#: statement for every message accepted meanwhile), while the rest of the batch is still sent.
ACCEPTANCE_FLUSH_SECONDS = 0.25

#: How often recording a batch's outcomes is tried again while Redis or PostgreSQL is away.
_COMMIT_RETRY_SECONDS = 2.0

_STOPPING = "not attempted: the worker is stopping; back in the queue"
_TAKEN_OVER = "not attempted: the sweeper took this batch over"
_NO_JOURNAL = "not attempted: the journal could not be written"


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
    journal = Journal(
        runtime.redis, token, ttl=settings.delivery_lease_seconds + _JOURNAL_GRACE_SECONDS
    )
    # Before the claim: the sweeper must be able to tell whose attempt holds the rows.
    journal.open(current_owner())
    now = utcnow()
    lease = lease_seconds(settings.delivery_lease_seconds)
    with runtime.engine.begin() as connection:
        rows = claim(
            connection, message_ids, token=token, until=now + timedelta(seconds=lease), now=now
        )
    if not rows:
        journal.discard()
        return {"claimed": 0}
    settlement = Settlement(runtime, token=token, sending_domain=composer.sending_domain, now=now)
    attempt = _Attempt(runtime, services, settlement, journal, token)
    try:
        attempt.run(rows)
    except Exception as exc:
        # Record what is known: a message with the provider when it failed is in doubt, the
        # rest failed transiently (so a failure that repeats ends in the dead letters instead
        # of looping). If even this fails, the claim stays and recovery takes over.
        log.exception("delivery of a batch of %d messages failed", len(rows))
        attempt.abandon(rows, f"worker error: {type(exc).__name__}: {exc}")
    if attempt.taken_over:
        log.warning(
            "a batch of %d messages was taken over by the sweeper (this worker's heartbeat "
            "lapsed); it records nothing",
            len(rows),
        )
        return {"claimed": len(rows), "taken_over": len(rows)}
    attempt.release_unsettled(rows)
    counts: Counter[str] = _commit(settlement, deadline=time.monotonic() + lease)
    journal.discard()
    counts["claimed"] = len(rows)
    return dict(counts)


def _commit(settlement: Settlement, *, deadline: float) -> Counter[str]:
    """Commit ``settlement``, trying again while Redis or PostgreSQL is away.

    Committing again after a partial commit is harmless (events are deduplicated by id, ledger
    writes are conditional on the claim, a batch enqueued twice is claimed once). Past
    ``deadline`` (the claim's lease) the sweeper recovers the rows from the journal instead.
    """
    waiting_since: float | None = None
    while True:
        try:
            counts = settlement.commit()
        except (redis.RedisError, sa.exc.OperationalError, sa.exc.InterfaceError) as exc:
            now = time.monotonic()
            if now >= deadline or (stop_requested() and waiting_since and now - waiting_since > 5):
                raise
            if waiting_since is None:
                waiting_since = now
                log.error(
                    "could not record the outcomes of %d messages (%s: %s); Redis or PostgreSQL "
                    "is unreachable, trying again every %gs",
                    len(settlement.updates),
                    type(exc).__name__,
                    exc,
                    _COMMIT_RETRY_SECONDS,
                )
            time.sleep(_COMMIT_RETRY_SECONDS)
            continue
        if waiting_since is not None:
            log.warning(
                "recorded the outcomes of %d messages after waiting %.0fs",
                len(settlement.updates),
                time.monotonic() - waiting_since,
            )
        return counts


class _Attempt:
    """One attempt at a claimed batch."""

    def __init__(
        self,
        runtime: Runtime,
        services: DeliveryServices,
        settlement: Settlement,
        journal: Journal,
        token: str,
    ) -> None:
        self.runtime = runtime
        self.services = services
        self.settlement = settlement
        self.journal = journal
        self.token = token
        self.composer = services.composer
        self.hook = runtime.plugins.hook
        #: Ids of the messages with the provider right now (in doubt if the attempt fails).
        self.in_flight: set[str] = set()
        #: Why no further message is handed over, once one of the reasons applies.
        self.halted: str | None = None
        #: The sweeper fenced the journal: the rows are no longer this attempt's.
        self.taken_over = False
        self._lock = threading.Lock()
        #: Outcomes not journaled yet: written with the next message's start.
        self._unjournaled: list[SendResult] = []
        #: The answers ``answered`` was told, with their acceptance times, by message id.
        self._answers: dict[str, SendResult] = {}
        self._acceptances: list[tuple[str, datetime]] = []
        self._acceptances_flushed = time.monotonic()

    def handing_over(self, messages: Sequence[OutgoingMessage]) -> bool:
        """Journal ``messages`` as started (with the outcomes before them), unless the attempt
        must hand nothing more over; called by the provider right before they leave."""
        if self.halted is None and stop_requested():
            self._halt(_STOPPING)
        if self.halted is not None:
            return False
        ids = [m.message_id for m in messages]
        with self._lock:
            pending, self._unjournaled = self._unjournaled, []
            self.in_flight.update(ids)
        try:
            self.journal.write(pending, started=ids)
        except Fenced:
            self.taken_over = True
            self._refused(ids, _TAKEN_OVER)
            return False
        except redis.RedisError as exc:
            log.error(
                "cannot journal the next message (%s); nothing more is handed over in this "
                "batch (Redis unreachable?)",
                exc,
            )
            with self._lock:
                self._unjournaled[:0] = pending
            self._refused(ids, _NO_JOURNAL)
            return False
        return True

    def answered(self, result: SendResult) -> None:
        """The provider answered about one message: journaled with the next message's start."""
        if result.outcome is Outcome.ACCEPTED and result.accepted_at is None:
            result = dataclasses.replace(result, accepted_at=utcnow())
        with self._lock:
            self._answers[result.message_id] = result
            self._unjournaled.append(result)
            self.in_flight.discard(result.message_id)

    def _refused(self, ids: list[str], reason: str) -> None:
        self._halt(reason)
        with self._lock:
            self.in_flight.difference_update(ids)

    def _halt(self, reason: str) -> None:
        with self._lock:
            if self.halted is None:
                self.halted = reason

    def release_unsettled(self, rows: list[ClaimedRow]) -> None:
        """Give back to the queue, not attempted, the rows a halt left without an outcome."""
        settled = self.settlement.settled
        reason = self.halted or _STOPPING
        for row in rows:
            if row.id not in settled:
                self.settlement.deferred(row, 0.0, reason)
        self._flush_acceptances(force=True)
        if self._unjournaled:
            # The settlement is about to record them anyway.
            with contextlib.suppress(redis.RedisError):
                self.journal.write(self._unjournaled)

    def abandon(self, rows: list[ClaimedRow], reason: str) -> None:
        """Settle every row not settled yet after the attempt failed with ``reason``."""
        with self._lock:
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
                provider = get_provider(self.runtime, provider_name)
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
                results = _send_batch(provider, [m for _, m in outgoing], self)
                returned = utcnow()
                settled: list[SendResult] = []
                unheard: list[SendResult] = []
                for (row, message), answer in zip(outgoing, results, strict=True):
                    if answer.outcome is Outcome.DEFERRED and answer.reason == NOT_HANDED_OVER:
                        # Never left: back to the queue, without using up anything.
                        self.settlement.deferred(row, 0.0, self.halted or _STOPPING)
                        continue
                    with self._lock:
                        result = self._answers.pop(answer.message_id, None)
                    if result is None or result.outcome is not answer.outcome:
                        # Not told as it happened (a provider raised, or gave no result).
                        result = answer
                        if result.outcome is Outcome.ACCEPTED and result.accepted_at is None:
                            result = dataclasses.replace(result, accepted_at=returned)
                        unheard.append(result)
                    settled.append(result)
                    self.settlement.result(
                        row, result, recipient_domain=email_domain(message.recipient)
                    )
                with self._lock:
                    self.in_flight.difference_update(row.id for row, _ in outgoing)
                    self._unjournaled.extend(unheard)
                    self._acceptances.extend(
                        (r.message_id, r.accepted_at)
                        for r in settled
                        if r.outcome is Outcome.ACCEPTED and r.accepted_at is not None
                    )
                self._flush_acceptances()
                for (_, message), result in zip(outgoing, results, strict=True):
                    if result.reason != NOT_HANDED_OVER:
                        self._after_send(message, result)
                work.observe(settled)
                if self.halted is not None:
                    work.stop()
        except BaseException:
            work.stop()
            raise

    def _flush_acceptances(self, *, force: bool = False) -> None:
        """Write the acceptance times gathered since the last flush to the ledger's sent_at.

        Analytics reads them while the batch is still being sent ("a click within 2 s of
        delivery"); the settlement writes the same times again. A failure is only logged.
        """
        with self._lock:
            due = time.monotonic() - self._acceptances_flushed >= ACCEPTANCE_FLUSH_SECONDS
            if not self._acceptances or not (due or force):
                return
            pairs, self._acceptances = self._acceptances, []
            self._acceptances_flushed = time.monotonic()
        try:
            with self.runtime.engine.begin() as connection:
                record_acceptances(connection, self.token, pairs)
        except sa.exc.SQLAlchemyError as exc:
            log.warning("could not record %d acceptance times early: %s", len(pairs), exc)

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


def _send_batch(
    provider: Provider, messages: list[OutgoingMessage], observer: SendObserver
) -> list[SendResult]:
    """The provider's results, one per message in order, whatever the provider did."""
    started = time.monotonic()
    try:
        results = provider.send_observed(messages, observer)
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
