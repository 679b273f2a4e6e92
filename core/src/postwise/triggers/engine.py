"""The trigger engine: a consumer of the event stream that turns events into send requests.

It reads ``postwise:events`` as the consumer group ``triggers`` (add consumers — processes, on any
machine — to scale out) and handles each batch of entries in five steps (when events trickle in,
it lingers ``linger_ms`` for more, so per-batch work is shared by several events):

1. decode the events and keep those with a contact and at least one trigger on their type;
2. evaluate every such trigger's conditions against one :class:`BatchContext` for the batch (the
   contacts in one query; segments and history in one query each, when first asked);
3. claim the cooldown of every match in one atomic Redis round trip;
4. act, highest priority first within an event: submit the send to delivery
   (``submit_send``, which applies the compliance gate and the global frequency cap), holding it
   to the end of quiet hours in the contact's zone, or schedule it when the trigger has a delay;
5. add the batch's counters and acknowledge its entries in one Redis transaction.

At-least-once reading, exactly-once firing: a batch is acknowledged only after it is handled;
if the consumer dies first, its entries are read again — by itself after a restart, or by another
consumer through XAUTOCLAIM once they have been idle for ``claim_idle_ms``. The re-read finds its
own cooldown claims (they hold the event id) and resubmits with the same dedupe key,
``trigger:<id>:event:<event id>``, which delivery turns into the same message id: the send
happens once. Because counters and acknowledgement commit together, they count each event once.

A condition that raises is isolated: it is logged with the plugin that registered it, counted
as an error of the trigger, and only that trigger is skipped for that event. Database and Redis
failures are not isolated: the batch stays unacknowledged and is retried.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

import redis
from sqlalchemy.exc import DBAPIError

from postwise.delivery.dispatch import submit_send
from postwise.delivery.requests import SendRequest, SubmitResult, SubmitStatus
from postwise.errors import PostwiseError
from postwise.events import EVENT_STREAM, EventEnvelope, decode_event
from postwise.plugins import CONDITIONS
from postwise.streams.consumer import Entry, StreamConsumer, default_consumer_name
from postwise.triggers.builtin import contact_zone
from postwise.triggers.compiled import (
    CompiledTrigger,
    TriggerSet,
    load_trigger_set,
    report_invalid,
)
from postwise.triggers.conditions import TriggerEvent
from postwise.triggers.context import BatchContext, ScoreFunction, engagement_decay
from postwise.triggers.cooldown import (
    EVENT_DEDUPE_SECONDS,
    Claim,
    ClaimOutcome,
    TriggerKeys,
    claim_many,
    release,
)
from postwise.triggers.definitions import ConditionFailed
from postwise.triggers.quiet_hours import QuietHours
from postwise.triggers.recent import StreamTail
from postwise.triggers.schedule import ScheduledSend, claim_due, finish, has_due, schedule
from postwise.triggers.stats import StatsBatch

if TYPE_CHECKING:
    from postwise.runtime import Runtime

__all__ = [
    "CONSUMER_GROUP",
    "BatchReport",
    "Submitter",
    "TriggerEngine",
    "dedupe_key",
    "default_consumer_name",
    "to_trigger_event",
]

log = logging.getLogger(__name__)

CONSUMER_GROUP = "triggers"
#: Failures that mean "try the batch again later", never "skip this trigger".
INFRASTRUCTURE_ERRORS: tuple[type[BaseException], ...] = (
    DBAPIError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)

Submitter = Callable[["Runtime", SendRequest], SubmitResult]


def dedupe_key(trigger_id: int, event_id: str) -> str:
    """The dedupe key of the send ``trigger_id`` makes for ``event_id``."""
    return f"trigger:{trigger_id}:event:{event_id}"


def to_trigger_event(envelope: EventEnvelope) -> TriggerEvent | None:
    """The conditions' view of an event (None without a contact): the one conversion, at the
    edge where events meet condition plugins, whose API names a contact id that is never None."""
    if envelope.contact_id is None:
        return None
    occurred = envelope.occurred_at
    if occurred.tzinfo is None:
        occurred = occurred.replace(tzinfo=UTC)
    return TriggerEvent(
        event_id=envelope.event_id,
        type=envelope.type,
        contact_id=int(envelope.contact_id),
        occurred_at=occurred,
        properties=envelope.properties or {},
    )


def _submit_send(runtime: Runtime, request: SendRequest) -> SubmitResult:

    result: SubmitResult = submit_send(runtime, request)
    return result


@dataclass(slots=True)
class BatchReport:
    """What one batch did (also in the Redis counters; this is for callers and benchmarks)."""

    entries: int = 0
    events: int = 0
    matched: int = 0
    fired: int = 0
    scheduled: int = 0
    held: int = 0
    capped: int = 0
    errors: int = 0
    queries: int = 0


@dataclass(frozen=True, slots=True)
class _Send:
    trigger: CompiledTrigger
    event: TriggerEvent
    claim: Claim
    not_before: datetime | None
    #: Finishing an earlier, interrupted handling: a duplicate submission counts as fired.
    completing: bool


@dataclass(slots=True)
class _Candidate:
    event: TriggerEvent
    trigger: CompiledTrigger
    claim: Claim


class TriggerEngine(StreamConsumer):
    """One consumer of the ``triggers`` group. Run one per process; add processes to scale."""

    #: A new group starts at new events (``"0"`` would replay the whole stream).
    start_id = "$"

    def __init__(
        self,
        runtime: Runtime,
        *,
        consumer: str | None = None,
        group: str = CONSUMER_GROUP,
        stream: str = EVENT_STREAM,
        keys: TriggerKeys | None = None,
        batch_size: int = 500,
        block_ms: int = 1000,
        linger_ms: float = 5.0,
        claim_idle_ms: int = 60_000,
        due_lease_ms: int = 60_000,
        submit: Submitter | None = None,
        send_workers: int = 4,
        score: ScoreFunction | None = None,
        clock: Callable[[], datetime] | None = None,
        recent: StreamTail | None = None,
    ) -> None:
        super().__init__(
            runtime.redis,
            group=group,
            consumer=consumer,
            stream=stream,
            batch_size=batch_size,
            claim_idle_ms=claim_idle_ms,
        )
        self.runtime = runtime
        self.keys = keys or TriggerKeys()
        self.block_ms = block_ms
        self.linger_ms = linger_ms
        self.due_lease_ms = due_lease_ms
        self.submit: Submitter = submit or _submit_send
        self.send_workers = send_workers
        self._pool: ThreadPoolExecutor | None = None
        self.score = score if score is not None else engagement_decay(runtime.settings)
        self.clock = clock or (lambda: datetime.now(UTC))
        self.quiet = QuietHours.parse(runtime.settings.quiet_hours)
        self.registry = runtime.plugins.registry(CONDITIONS)
        self.triggers = TriggerSet()
        #: The stream's entries the collector has not stored yet: history conditions (exit
        #: checks above all) count them, so an event accepted before a check is never missed.
        self.recent = recent if recent is not None else StreamTail(self.redis, stream=stream)
        self._version: Any = None
        self._loaded_at = 0.0
        self._checked_at = 0.0
        self._claimed_at = 0.0
        self._due_at = 0.0
        self._own_pending = True

    # -- set-up ---------------------------------------------------------------------------------

    def reload(self) -> TriggerSet:
        """Load and compile the triggers now."""
        version = self.redis.get(self.keys.version)
        with self.runtime.session() as session:
            self.triggers = load_trigger_set(session, self.registry)
        self._version = version
        self._loaded_at = self._checked_at = time.monotonic()
        report_invalid(self.redis, self.keys, self.consumer, self.triggers)
        return self.triggers

    def _maybe_reload(self) -> None:
        now = time.monotonic()
        if now - self._loaded_at > 30.0:
            self.reload()
        elif now - self._checked_at > 1.0:
            self._check_version()

    def _check_version(self) -> None:
        """Reload if a trigger changed. Called after each read of new entries: the store bumps
        the version after its commit, so an entry published after a trigger was saved is read
        after the bump and is evaluated against the new trigger set."""
        self._checked_at = time.monotonic()
        if self.redis.get(self.keys.version) != self._version:
            self.reload()

    def close(self) -> None:
        """Stop the send threads (the runtime stays open; its owner closes it)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    # -- the loop -------------------------------------------------------------------------------

    def run(
        self,
        *,
        stop: threading.Event | None = None,
        idle_exit: float | None = None,
    ) -> int:
        """Consume until ``stop`` is set (or, with ``idle_exit``, after that many idle seconds).

        Database and Redis outages leave the batch pending; it is retried with backoff.
        """
        self.ensure_group()
        self.reload()
        try:
            return self.consume(stop=stop, idle_exit=idle_exit, block_ms=self.block_ms)
        finally:
            self.close()

    def transient_errors(self) -> tuple[type[BaseException], ...]:
        return INFRASTRUCTURE_ERRORS

    def after_failure(self) -> None:
        # The failed batch is this consumer's own pending entries now: read them first.
        self._own_pending = True

    def step(self, block_ms: int | None = None) -> int:
        """One iteration: reclaim, read one batch, handle due sends. Returns entries handled."""
        self._maybe_reload()
        handled = 0
        if self._own_pending:
            # Entries this consumer read but never acknowledged (it crashed, or a batch failed).
            entries = self.read_own_pending()
            if entries:
                self.process(entries, redelivered=True)
                handled += len(entries)
            else:
                self._own_pending = False
        if time.monotonic() - self._claimed_at > self.claim_idle_ms / 4000:
            handled += self._autoclaim()
        if time.monotonic() - self._due_at > 0.25:
            self._due_at = time.monotonic()
            handled += self.process_due()
        block = None if handled else (self.block_ms if block_ms is None else block_ms)
        entries = self.read_new(block_ms=block)
        if entries and len(entries) < self.batch_size and self.linger_ms:
            # A trickle: wait a moment for more, so that per-batch work (a query, two Redis
            # transactions) is shared by several events instead of paid for each.
            time.sleep(self.linger_ms / 1000)
            entries += self.read_new(count=self.batch_size - len(entries))
        if entries:
            self._check_version()
            self.process(entries, redelivered=False)
            handled += len(entries)
        return handled

    def _autoclaim(self) -> int:
        self._claimed_at = time.monotonic()
        entries = self.claim_stale()
        if entries:
            self.process(entries, redelivered=True)
        return len(entries)

    # -- one batch ------------------------------------------------------------------------------

    def process(self, entries: Sequence[Entry], *, redelivered: bool) -> BatchReport:
        """Handle a batch of stream entries and acknowledge them.

        ``redelivered`` says the entries were read before (pending after a crash): their claims
        and sends may already exist and are then completed rather than counted as duplicates.
        """
        report = BatchReport(entries=len(entries))
        stats = StatsBatch(self.keys)
        events: list[TriggerEvent] = []
        for _entry_id, fields in entries:
            if not fields:
                continue  # trimmed from the stream while pending
            try:
                event = to_trigger_event(decode_event(fields))
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("skipping an undecodable stream entry %r: %s", _entry_id, exc)
                stats.add_engine("undecodable")
                continue
            if event is None:
                continue
            if self.triggers.for_event_type(event.type):
                events.append(event)
            for invalid in self.triggers.invalid_for_event_type(event.type):
                # Active, but its definition does not compile here (a condition plugin not
                # installed on this host, a cancelled campaign): counted, never silent.
                stats.add(invalid.id, "invalid")
        report.events = len(events)
        if events:
            self._handle(events, redelivered, stats, report)
        stats.add_engine("entries", len(entries))
        pipe = self.redis.pipeline(transaction=True)
        stats.write(pipe)
        self.ack(entries, pipe)
        pipe.execute()
        return report

    def _handle(
        self,
        events: list[TriggerEvent],
        redelivered: bool,
        stats: StatsBatch,
        report: BatchReport,
    ) -> None:
        now = self.clock()
        candidates: list[_Candidate] = []
        with self.runtime.session() as session:
            context = BatchContext(session, events, now=now, score=self.score, recent=self.recent)
            for event in events:
                if event.contact_id not in context.contacts:
                    stats.add_engine("unknown_contact")
                    continue
                event_context = context.for_event(event)
                for trigger in self.triggers.for_event_type(event.type):
                    assert trigger.conditions is not None
                    try:
                        matched = trigger.conditions.evaluate(event, event_context)
                    except ConditionFailed as failed:
                        if isinstance(failed.error, INFRASTRUCTURE_ERRORS):
                            raise failed.error from failed
                        self._condition_error(trigger, event, failed)
                        stats.add(trigger.id, "errors")
                        report.errors += 1
                        continue
                    if matched:
                        stats.add(trigger.id, "matched")
                        candidates.append(_Candidate(event, trigger, self._claim(trigger, event)))
            report.queries = context.queries
            contacts = context.contacts
        report.matched = len(candidates)
        outcomes = claim_many(self.redis, [c.claim for c in candidates])
        scheduled = self.redis.pipeline(transaction=False)
        sends: list[_Send] = []
        for candidate, outcome in zip(candidates, outcomes, strict=True):
            trigger = candidate.trigger
            if outcome is ClaimOutcome.HELD:
                stats.add(trigger.id, "cooldown")
                report.held += 1
                continue
            if outcome is ClaimOutcome.OWN and not redelivered:
                stats.add(trigger.id, "duplicates")
                continue
            due = now + timedelta(seconds=trigger.delay_seconds)
            if self.quiet is not None and not trigger.transactional:
                due = (
                    self.quiet.hold_until(due, contact_zone(contacts[candidate.event.contact_id]))
                    or due
                )
            if trigger.delay_seconds:
                send = ScheduledSend(
                    dedupe_key(trigger.id, candidate.event.event_id),
                    trigger.id,
                    candidate.event,
                    due,
                    candidate.claim.key,
                )
                schedule(scheduled, self.keys, send)
                stats.add(trigger.id, "scheduled")
                report.scheduled += 1
                continue
            not_before = due if due > now else None
            sends.append(_Send(trigger, candidate.event, candidate.claim, not_before, redelivered))
        if len(scheduled):
            scheduled.execute()
        self._submit_all(sends, stats, report)

    def _claim(self, trigger: CompiledTrigger, event: TriggerEvent) -> Claim:
        if trigger.cooldown_seconds:
            return Claim(
                self.keys.cooldown(trigger.id, event.contact_id),
                event.event_id,
                trigger.cooldown_seconds * 1000,
            )
        return Claim(
            self.keys.event(trigger.id, event.event_id), event.event_id, EVENT_DEDUPE_SECONDS * 1000
        )

    def _submit_all(self, sends: list[_Send], stats: StatsBatch, report: BatchReport) -> None:
        """Submit the sends to delivery and count the results.

        Each contact's sends go one after another in priority order (so when the frequency cap
        leaves room for only some, the higher priority trigger gets it); different contacts'
        sends run on ``send_workers`` threads, overlapping delivery's database and Redis waits.
        """
        if not sends:
            return
        groups: dict[int, list[_Send]] = {}
        for send in sends:
            groups.setdefault(send.event.contact_id, []).append(send)
        if self.send_workers <= 1 or len(groups) == 1:
            results = [self._submit_group(group) for group in groups.values()]
        else:
            results = list(self._executor().map(self._submit_group, groups.values()))
        for group_results in results:
            for send, outcome in group_results:
                self._record(send, outcome, stats, report)

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.send_workers, thread_name_prefix="trigger-send")
        return self._pool

    def _submit_group(self, group: list[_Send]) -> list[tuple[_Send, SubmitResult | PostwiseError]]:
        results: list[tuple[_Send, SubmitResult | PostwiseError]] = []
        for send in group:
            try:
                results.append((send, self.submit(self.runtime, self._request(send))))
            except INFRASTRUCTURE_ERRORS:
                raise
            except PostwiseError as exc:
                results.append((send, exc))
        return results

    def _request(self, send: _Send) -> SendRequest:
        trigger, event = send.trigger, send.event
        assert trigger.template_id is not None
        return SendRequest(
            contact_id=event.contact_id,
            template_id=trigger.template_id,
            dedupe_key=dedupe_key(trigger.id, event.event_id),
            reason="trigger",
            not_before=send.not_before,
            trigger_id=trigger.id,
            campaign_id=trigger.campaign_id,
            experiment_id=trigger.experiment_id,
            transactional=trigger.transactional,
            context={"event": dict(event.properties), "event_type": event.type},
            consent_purpose=trigger.consent_purpose,
        )

    def _record(
        self,
        send: _Send,
        outcome: SubmitResult | PostwiseError,
        stats: StatsBatch,
        report: BatchReport,
    ) -> None:
        trigger, claim = send.trigger, send.claim
        if isinstance(outcome, PostwiseError):
            log.error(
                "trigger %r (id %s): delivery rejected the send for event %s: %s",
                trigger.name,
                trigger.id,
                send.event.event_id,
                outcome,
            )
            stats.add(trigger.id, "errors")
            report.errors += 1
            release(self.redis, claim.key, claim.event_id)
            return
        if outcome.status == SubmitStatus.QUEUED or (
            outcome.status == SubmitStatus.DUPLICATE and send.completing
        ):
            stats.add(trigger.id, "fired")
            report.fired += 1
        elif outcome.status == SubmitStatus.DUPLICATE:
            stats.add(trigger.id, "duplicates")
        else:
            capped = outcome.reason == "frequency_cap"
            stats.add(trigger.id, "capped" if capped else "skipped")
            report.capped += capped
            # Nothing was sent, so the cooldown must not hold the next chance back.
            release(self.redis, claim.key, claim.event_id)

    def _condition_error(
        self, trigger: CompiledTrigger, event: TriggerEvent, failed: ConditionFailed
    ) -> None:
        log.error(
            "condition %r of plugin %r raised on trigger %r (id %s) for event %s; the trigger is "
            "skipped for this event: %s: %s",
            failed.leaf.condition.name,
            failed.leaf.plugin,
            trigger.name,
            trigger.id,
            event.event_id,
            type(failed.error).__name__,
            failed.error,
        )

    # -- delayed sends --------------------------------------------------------------------------

    def process_due(self, limit: int | None = None) -> int:
        """Handle delayed sends that have come due: exit check, then submit. Returns how many."""
        now = self.clock()
        if not has_due(self.redis, self.keys, now=now):
            return 0
        sends = claim_due(
            self.redis,
            self.keys,
            now=now,
            limit=limit or self.batch_size,
            lease_ms=self.due_lease_ms,
        )
        if not sends:
            return 0
        stats = StatsBatch(self.keys)
        report = BatchReport()
        live: list[tuple[ScheduledSend, CompiledTrigger]] = []
        for send in sends:
            trigger = self.triggers.by_id.get(send.trigger_id)
            if trigger is None or not trigger.active or not trigger.usable:
                # Paused or deleted: cancelled; not compiling on this host: invalid (counted
                # apart, and reported by `triggers list`, so a missing plugin is seen).
                reason = "invalid" if trigger is not None and trigger.active else "cancelled"
                stats.add(send.trigger_id, reason)
                release(self.redis, send.claim_key, send.event.event_id)
            else:
                live.append((send, trigger))
        to_submit: list[tuple[ScheduledSend, CompiledTrigger]] = []
        if live:
            with self.runtime.session() as session:
                context = BatchContext(
                    session,
                    [s.event for s, _ in live],
                    now=now,
                    score=self.score,
                    recent=self.recent,
                )
                for send, trigger in live:
                    if trigger.exit_conditions is None:
                        to_submit.append((send, trigger))
                        continue
                    try:
                        exited = trigger.exit_conditions.evaluate(
                            send.event, context.for_event(send.event)
                        )
                    except ConditionFailed as failed:
                        if isinstance(failed.error, INFRASTRUCTURE_ERRORS):
                            raise failed.error from failed
                        self._condition_error(trigger, send.event, failed)
                        stats.add(trigger.id, "errors")
                        continue
                    if exited:
                        stats.add(trigger.id, "exited")
                        # Nothing was sent: the cooldown this send held is given back.
                        release(self.redis, send.claim_key, send.event.event_id)
                    else:
                        to_submit.append((send, trigger))
        # A due send handled twice can only be one whose first handling died before finishing,
        # so a duplicate here completes that handling.
        self._submit_all(
            [
                _Send(
                    trigger, send.event, Claim(send.claim_key, send.event.event_id, 0), None, True
                )
                for send, trigger in to_submit
            ],
            stats,
            report,
        )
        pipe = self.redis.pipeline(transaction=True)
        stats.write(pipe)
        for send in sends:
            finish(pipe, self.keys, send)
        pipe.execute()
        return len(sends)
