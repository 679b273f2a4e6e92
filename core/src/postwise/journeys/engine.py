"""The journey executor: moves contacts through flows, durably.

Where a contact is in a journey is a row of ``journey_run`` (the database is the truth); the
Redis sorted set ``postwise:journeys:due`` indexes the runs that must be looked at at a given
time (a wait ending, a send held by quiet hours or deferred by the frequency cap, a webhook's
retry). Nothing else is held per contact, in memory or in Redis: memory follows the steps in
flight, not the number of contacts.

Two inputs move runs:

* **events**, read from ``postwise:events`` as the consumer group ``journeys``: an event may
  enter contacts into journeys (``entry``), convert them (``goal``), make them leave
  (``exit_on``) or end a wait for that event;
* **due runs**, claimed from the due index with a lease (a worker that dies leaves them to come
  due again).

A run is advanced from its step until it waits or ends. Every step taken increments the run's
``seq``; the new position is written ``WHERE seq = <seq read>``, so two workers can never both
move a run, and a worker killed at any point leaves the run where its last commit put it. Side
effects are keyed by the run's identity and position — a send's dedupe key is
``journey:<journey>:<entry event>:<seq>:<step>:<attempt>`` (delivery turns it into the message
id), a webhook carries it as ``Idempotency-Key`` — so the replay after a crash repeats none of
them: nothing is sent twice. Contact updates are written in the same transaction as the position.

Decisions are taken with the database session closed while side effects run (sends commit their
own ledger rows), in rounds: evaluate every run up to its next side effect or wait; perform the
side effects (sends on a small thread pool); evaluate again; then write every position in one
transaction, then the due index, then the counters and the stream acknowledgement.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from typing import TYPE_CHECKING, Any

import httpx
import redis
import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session, col, select

from postwise.contacts.segments import get_segment, segment_condition
from postwise.db.models import (
    Contact,
    ContactTag,
    Journey,
    JourneyRun,
    JourneyVersion,
    Message,
    as_utc,
    utcnow,
)
from postwise.delivery.requests import SendRequest, SubmitResult, SubmitStatus
from postwise.errors import PostwiseError
from postwise.events import EVENT_STREAM, decode_event
from postwise.journeys.definition import (
    DATE_ENTRY_EVENT,
    SCHEDULE_ENTRY_EVENT,
    SEGMENT_ENTRY_EVENT,
    BestHour,
    BranchStep,
    CompiledJourney,
    ExitStep,
    SendStep,
    SplitStep,
    UpdateContactStep,
    WaitStep,
    WebhookStep,
    compile_journey,
    parse_journey,
)
from postwise.journeys.store import JourneyKeys
from postwise.streams.consumer import Entry, StreamConsumer
from postwise.triggers.builtin import contact_zone
from postwise.triggers.conditions import TriggerEvent
from postwise.triggers.context import (
    BatchContext,
    ScoreFunction,
    engagement_decay,
    load_contacts,
)
from postwise.triggers.definitions import AllOf, ConditionFailed
from postwise.triggers.engine import to_trigger_event
from postwise.triggers.recent import StreamTail

if TYPE_CHECKING:
    from postwise.runtime import Runtime

__all__ = [
    "CONSUMER_GROUP",
    "JourneyEngine",
    "JourneySet",
    "Run",
    "StepReport",
    "best_hour",
    "load_journey_set",
    "run_event",
    "send_dedupe_key",
]

log = logging.getLogger(__name__)

CONSUMER_GROUP = "journeys"
INFRASTRUCTURE_ERRORS: tuple[type[BaseException], ...] = (
    DBAPIError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
)
#: A send the frequency cap refused is tried again this much later, at most this many times.
CAP_RETRY_SECONDS = 3600
CAP_MAX_DEFERRALS = 72
#: Webhook retries back off from this many seconds, doubling.
WEBHOOK_BACKOFF_SECONDS = 30
#: A run never takes more steps than this in one advance (the save-time cycle check makes
#: this unreachable; it is the guard against a definition stored by other means).
MAX_STEPS_PER_ADVANCE = 100

Submitter = Callable[["Runtime", SendRequest], SubmitResult]


def _submit_send(runtime: Runtime, request: SendRequest) -> SubmitResult:
    from postwise.delivery.dispatch import submit_send

    result: SubmitResult = submit_send(runtime, request)
    return result


@dataclass(slots=True)
class Run:
    """A ``journey_run`` row as the engine works on it: a plain object (ORM instances cost
    several times more to load and to change, and the engine writes with Core statements)."""

    journey_id: int
    version: int
    contact_id: int
    entry_key: str
    step: str
    seq: int
    status: str
    event: dict[str, Any]
    state: dict[str, Any]
    entered_at: datetime
    updated_at: datetime
    waiting_for: str | None = None
    due_at: datetime | None = None
    exit_reason: str | None = None
    id: int | None = None


_RUN_FIELDS = (
    "id",
    "journey_id",
    "version",
    "contact_id",
    "entry_key",
    "step",
    "seq",
    "status",
    "event",
    "state",
    "entered_at",
    "updated_at",
    "waiting_for",
    "due_at",
    "exit_reason",
)


def _load_runs(session: Session, *where: Any) -> list[Run]:
    table = JourneyRun.__table__  # type: ignore[attr-defined]
    query = sa.select(*[table.c[name] for name in _RUN_FIELDS]).where(*where)
    return [Run(**dict(zip(_RUN_FIELDS, row, strict=True))) for row in session.execute(query)]


def send_dedupe_key(run: Run | JourneyRun, step: str, attempt: int) -> str:
    return f"journey:{run.journey_id}:{run.entry_key}:{run.seq}:{step}:{attempt}"


def run_event(run: Run | JourneyRun) -> TriggerEvent:
    """The entry event of a run, as conditions see it."""
    data = run.event or {}
    occurred = data.get("occurred_at")
    return TriggerEvent(
        event_id=str(data.get("event_id") or run.entry_key),
        type=str(data.get("type") or ""),
        contact_id=run.contact_id,
        occurred_at=datetime.fromisoformat(occurred) if occurred else as_utc(run.entered_at),
        properties=data.get("properties") or {},
    )


def _event_json(event: TriggerEvent) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "type": event.type,
        "occurred_at": event.occurred_at.isoformat(),
        "properties": dict(event.properties),
    }


def _ms(moment: datetime) -> int:
    return int(moment.astimezone(UTC).timestamp() * 1000)


# -- the journeys in force -----------------------------------------------------------------------


@dataclass(slots=True)
class JourneySet:
    """Every compiled version, the current ones by entry event type, and the event types any
    version reacts to (goals, exits, waits)."""

    versions: dict[tuple[int, int], CompiledJourney] = field(default_factory=dict)
    by_entry: dict[str, list[CompiledJourney]] = field(default_factory=dict)
    watched: set[str] = field(default_factory=set)
    errors: dict[tuple[int, int], str] = field(default_factory=dict)
    #: Current, active journeys entered by a date attribute or a schedule (swept, not events).
    swept: list[CompiledJourney] = field(default_factory=list)

    def get(self, journey_id: int, version: int) -> CompiledJourney | None:
        return self.versions.get((journey_id, version))

    def relevant(self, event_type: str) -> bool:
        return event_type in self.by_entry or event_type in self.watched


def load_journey_set(session: Session, registry: Any) -> JourneySet:
    journeys = {j.id: j for j in session.exec(select(Journey)).all()}
    result = JourneySet()
    for row in session.exec(select(JourneyVersion)).all():
        journey = journeys.get(row.journey_id)
        if journey is None:
            continue
        try:
            compiled = compile_journey(
                parse_journey(row.definition),
                registry,
                journey_id=row.journey_id,
                version=row.version,
            )
        except PostwiseError as exc:
            result.errors[(row.journey_id, row.version)] = str(exc)
            log.error("journey %r version %s cannot run: %s", journey.name, row.version, exc)
            continue
        compiled.active = journey.active
        result.versions[(row.journey_id, row.version)] = compiled
        definition = compiled.definition
        if definition.goal is not None:
            result.watched.add(definition.goal.event)
        result.watched.update(match.type for match in definition.exit_on)
        for step in definition.steps:
            if isinstance(step, WaitStep) and step.for_event is not None:
                result.watched.add(step.for_event.type)
        if row.version == journey.version and journey.active:
            if definition.entry.event is not None:
                result.by_entry.setdefault(definition.entry.event, []).append(compiled)
            else:
                result.swept.append(compiled)
    for entries in result.by_entry.values():
        entries.sort(key=lambda j: (-j.definition.priority, j.id))
    return result


# -- one batch's work ----------------------------------------------------------------------------


@dataclass(slots=True)
class StepReport:
    """What one batch (of events or of due runs) did."""

    events: int = 0
    entered: int = 0
    advanced: int = 0
    steps: int = 0
    sent: int = 0
    waiting: int = 0
    finished: int = 0
    conflicts: int = 0


@dataclass(slots=True)
class _Work:
    """A run being advanced in this batch."""

    run: Run
    journey: CompiledJourney
    seq_read: int
    new: bool = False
    #: The side effect the run stopped at, to perform between rounds.
    effect: str | None = None
    effect_result: Any = None
    stopped: bool = False
    contact_updates: list[UpdateContactStep] = field(default_factory=list)
    message_ids: list[tuple[str, str]] = field(default_factory=list)


class _Stats:
    def __init__(self) -> None:
        self.counts: dict[tuple[int, str], int] = {}

    def add(self, journey_id: int, name: str, amount: int = 1) -> None:
        key = (journey_id, name)
        self.counts[key] = self.counts.get(key, 0) + amount

    def write(self, pipe: Any, keys: JourneyKeys) -> None:
        for (journey_id, name), amount in self.counts.items():
            if amount:
                pipe.hincrby(keys.stats(journey_id), name, amount)


class JourneyEngine(StreamConsumer):
    """One journey worker: a consumer of the ``journeys`` group and a processor of due runs."""

    start_id = "$"

    def __init__(
        self,
        runtime: Runtime,
        *,
        consumer: str | None = None,
        group: str = CONSUMER_GROUP,
        stream: str = EVENT_STREAM,
        keys: JourneyKeys | None = None,
        batch_size: int = 500,
        due_batch_size: int = 1000,
        block_ms: int = 1000,
        claim_idle_ms: int = 60_000,
        due_lease_ms: int = 60_000,
        submit: Submitter | None = None,
        send_workers: int = 4,
        http: httpx.Client | None = None,
        clock: Callable[[], datetime] | None = None,
        score: ScoreFunction | None = None,
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
        self.keys = keys or JourneyKeys()
        self.due_batch_size = due_batch_size
        self.block_ms = block_ms
        self.due_lease_ms = due_lease_ms
        self.submit: Submitter = submit or _submit_send
        self.send_workers = send_workers
        self._pool: ThreadPoolExecutor | None = None
        self.http = http
        self.clock = clock or (lambda: datetime.now(UTC))
        self.score = score if score is not None else engagement_decay(runtime.settings)
        self.recent = recent if recent is not None else StreamTail(self.redis, stream=stream)
        self.registry = runtime.plugins.registry("conditions")
        self.journeys = JourneySet()
        self._version: Any = None
        self._loaded_at = 0.0
        self._claimed_at = 0.0
        self._due_at = 0.0
        self._own_pending = True
        #: How often date and schedule entries are looked for.
        self.sweep_seconds = 60.0
        self._swept_at = 0.0

    # -- set-up ---------------------------------------------------------------------------------

    def reload(self) -> JourneySet:
        version = self.redis.get(self.keys.version)
        with self.runtime.session() as session:
            self.journeys = load_journey_set(session, self.registry)
        self._version = version
        self._loaded_at = time.monotonic()
        return self.journeys

    def _check_version(self) -> None:
        if (
            time.monotonic() - self._loaded_at > 30
            or self.redis.get(self.keys.version) != self._version
        ):
            self.reload()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None
        if self.http is not None:
            self.http.close()
            self.http = None

    # -- the loop -------------------------------------------------------------------------------

    def run(self, *, stop: threading.Event | None = None, idle_exit: float | None = None) -> int:
        """Work until ``stop`` is set (or after ``idle_exit`` idle seconds). Database and Redis
        outages leave the batch pending; it is retried with backoff."""
        self.ensure_group()
        self.reload()
        try:
            return self.consume(stop=stop, idle_exit=idle_exit, block_ms=self.block_ms)
        finally:
            self.close()

    def transient_errors(self) -> tuple[type[BaseException], ...]:
        return INFRASTRUCTURE_ERRORS

    def after_failure(self) -> None:
        self._own_pending = True

    def step(self, block_ms: int | None = None) -> int:
        """Reclaim, handle due runs, read one batch of events. Returns how much was done."""
        handled = 0
        if self._own_pending:
            entries = self.read_own_pending()
            if entries:
                self._check_version()
                self.process(entries)
                handled += len(entries)
            else:
                self._own_pending = False
        if time.monotonic() - self._claimed_at > self.claim_idle_ms / 4000:
            self._claimed_at = time.monotonic()
            entries = self.claim_stale()
            if entries:
                self.process(entries)
                handled += len(entries)
        # At most every 100 ms (of the engine's clock, which tests move by hand).
        moment = self.clock().timestamp()
        if abs(moment - self._due_at) >= 0.1:
            self._due_at = moment
            handled += self.process_due()
        if self.journeys.swept and time.monotonic() - self._swept_at > self.sweep_seconds:
            self._swept_at = time.monotonic()
            handled += self.process_scheduled()
        block = None if handled else (self.block_ms if block_ms is None else block_ms)
        entries = self.read_new(block_ms=block)
        if entries:
            # After the read: a journey saved before these events were published is seen.
            self._check_version()
            self.process(entries)
            handled += len(entries)
        return handled

    # -- events ---------------------------------------------------------------------------------

    def process(self, entries: Sequence[Entry]) -> StepReport:
        """Handle a batch of stream entries and acknowledge them."""
        report = StepReport()
        stats = _Stats()
        events: list[TriggerEvent] = []
        engagement: list[tuple[str, str]] = []
        for entry_id, fields in entries:
            if not fields:
                continue
            try:
                envelope = decode_event(fields)
                event = to_trigger_event(envelope)
            except (ValueError, KeyError, TypeError) as exc:
                log.warning("skipping an undecodable stream entry %r: %s", entry_id, exc)
                continue
            if envelope.type in _ENGAGEMENT and envelope.message_id:
                props = envelope.properties or {}
                machine = bool(props.get("machine_open") or props.get("scanner"))
                name = _ENGAGEMENT[envelope.type] + ("_machine" if machine else "")
                engagement.append((envelope.message_id, name))
            if event is not None and self.journeys.relevant(event.type):
                events.append(event)
        report.events = len(events)
        if engagement:
            self._count_engagement(engagement, stats)
        works: list[_Work] = []
        if events:
            works, contacts = self._on_events(events, stats, report)
            self._advance_all(works, stats, report, contacts=contacts)
            self._save(works, stats, report)
        pipe = self.redis.pipeline(transaction=True)
        stats.write(pipe, self.keys)
        self.ack(entries, pipe)
        pipe.execute()
        return report

    def _count_engagement(self, engagement: list[tuple[str, str]], stats: _Stats) -> None:
        """Opens and clicks of messages journeys sent, counted on the step that sent them
        (machine opens and scanner clicks apart: ``<step>:opened_machine``)."""
        pipe = self.redis.pipeline(transaction=False)
        for message_id, _name in engagement:
            pipe.get(self.keys.message(message_id))
        for (_message_id, name), origin in zip(engagement, pipe.execute(), strict=True):
            if origin is None:
                continue
            text = origin.decode() if isinstance(origin, bytes) else str(origin)
            journey_id, _, step = text.partition(":")
            if journey_id.isdigit():
                stats.add(int(journey_id), f"{step}:{name}")

    def _on_events(
        self, events: list[TriggerEvent], stats: _Stats, report: StepReport
    ) -> tuple[list[_Work], dict[int, dict[str, Any]]]:
        now = self.clock()
        contact_ids = sorted({e.contact_id for e in events})
        watched = [e for e in events if e.type in self.journeys.watched]
        entering = [e for e in events if e.type in self.journeys.by_entry]
        # Keyed by the run object: new runs have no id before they are written.
        works: dict[int, _Work] = {}
        with self.runtime.session() as session:
            context = BatchContext(session, events, now=now, score=self.score, recent=self.recent)
            runs: dict[int, list[Run]] = {}
            if watched or entering:
                for run in _load_runs(
                    session,
                    col(JourneyRun.contact_id).in_(contact_ids),
                    col(JourneyRun.status) == "active",
                ):
                    runs.setdefault(run.contact_id, []).append(run)
            history = self._entry_history(session, entering) if entering else {}
            for event in events:
                contact = context.contacts.get(event.contact_id)
                for run in runs.get(event.contact_id, []):
                    if run.status != "active":
                        continue
                    journey = self.journeys.get(run.journey_id, run.version)
                    if journey is None:
                        continue
                    work = works.get(id(run))
                    if work is None:
                        work = _Work(run, journey, run.seq)
                    if self._react(work, event, context, stats):
                        works[id(run)] = work
                if contact is None:
                    continue
                for journey in self.journeys.by_entry.get(event.type, []):
                    work = self._enter(
                        journey, event, context, history=history, runs=runs, stats=stats, now=now
                    )
                    if work is not None:
                        works[id(work.run)] = work
                        runs.setdefault(event.contact_id, []).append(work.run)
                        report.entered += 1
            contacts = context.contacts
        return list(works.values()), contacts

    def _entry_history(
        self,
        session: Session,
        events: list[TriggerEvent],
        journey_ids: list[int] | None = None,
    ) -> dict[tuple[int, int], tuple[datetime | None, set[str]]]:
        """Per (journey, contact): when the contact last entered, and the entry keys used."""
        if journey_ids is None:
            journey_ids = sorted({j.id for e in events for j in self.journeys.by_entry[e.type]})
        contact_ids = sorted({e.contact_id for e in events})
        rows = session.execute(
            sa.select(
                col(JourneyRun.journey_id),
                col(JourneyRun.contact_id),
                col(JourneyRun.entered_at),
                col(JourneyRun.entry_key),
            ).where(
                col(JourneyRun.journey_id).in_(journey_ids),
                col(JourneyRun.contact_id).in_(contact_ids),
            )
        )
        found: dict[tuple[int, int], tuple[datetime | None, set[str]]] = {}
        for journey_id, contact_id, entered_at, entry_key in rows:
            last, keys = found.get((journey_id, contact_id), (None, set()))
            entered = as_utc(entered_at)
            keys.add(entry_key)
            found[(journey_id, contact_id)] = (
                entered if last is None or entered > last else last,
                keys,
            )
        return found

    def _enter(
        self,
        journey: CompiledJourney,
        event: TriggerEvent,
        context: BatchContext,
        *,
        history: dict[tuple[int, int], tuple[datetime | None, set[str]]],
        runs: dict[int, list[Run]],
        stats: _Stats,
        now: datetime,
    ) -> _Work | None:
        if not self._holds(journey, journey.entry_conditions, event, context, stats):
            return None
        last, keys = history.get((journey.id, event.contact_id), (None, set()))
        if event.event_id in keys:
            return None  # this event already entered it (a re-read after a crash)
        inside = any(
            r.journey_id == journey.id and r.status == "active"
            for r in runs.get(event.contact_id, [])
        )
        if inside:
            stats.add(journey.id, "entry:already_inside")
            return None
        every = journey.definition.reentry_seconds
        if last is not None:
            if every is None:
                stats.add(journey.id, "entry:once")
                return None
            if every and now - last < timedelta(seconds=every):
                stats.add(journey.id, "entry:too_soon")
                return None
        history[(journey.id, event.contact_id)] = (now, {*keys, event.event_id})
        start = journey.definition.start_step
        run = Run(
            journey_id=journey.id,
            version=journey.version,
            contact_id=event.contact_id,
            entry_key=event.event_id,
            step=start,
            seq=0,
            status="active",
            event=_event_json(event),
            state={},
            entered_at=now,
            updated_at=now,
        )
        stats.add(journey.id, "journey:entered")
        stats.add(journey.id, f"{start}:entered")
        return _Work(run, journey, 0, new=True)

    def _react(
        self, work: _Work, event: TriggerEvent, context: BatchContext, stats: _Stats
    ) -> bool:
        """An event for a contact inside: goal, exit, or the end of a wait. True if it moved."""
        run, journey = work.run, work.journey
        if event.occurred_at < as_utc(run.entered_at) - timedelta(seconds=1):
            return False  # happened before the contact entered
        goal = journey.definition.goal
        if (
            goal is not None
            and event.type == goal.event
            and journey.goal_conditions is not None
            and self._holds(journey, journey.goal_conditions, event, context, stats)
        ):
            self._finish(work, "converted", stats)
            stats.add(journey.id, "goal:converted")
            stats.add(journey.id, f"{run.step}:converted")
            return True
        for event_type, conditions in journey.exit_conditions:
            if event.type == event_type and self._holds(journey, conditions, event, context, stats):
                self._finish(work, f"exit_on:{event_type}"[:50], stats)
                return True
        step = journey.steps.get(run.step)
        if (
            isinstance(step, WaitStep)
            and step.for_event is not None
            and run.waiting_for == event.type
            and self._holds(journey, journey.wait_conditions[step.id], event, context, stats)
        ):
            stats.add(journey.id, f"{step.id}:event_arrived")
            self._move(work, step.next, stats)
            return True
        return False

    def _holds(
        self,
        journey: CompiledJourney,
        conditions: AllOf,
        event: TriggerEvent,
        context: BatchContext,
        stats: _Stats,
    ) -> bool:
        try:
            return conditions.evaluate(event, context.for_event(event))
        except ConditionFailed as failed:
            if isinstance(failed.error, INFRASTRUCTURE_ERRORS):
                raise failed.error from failed
            log.error(
                "condition %r of plugin %r raised in journey %r: %s: %s",
                failed.leaf.condition.name,
                failed.leaf.plugin,
                journey.name,
                type(failed.error).__name__,
                failed.error,
            )
            stats.add(journey.id, "errors")
            return False

    # -- date and schedule entries -------------------------------------------------------------

    def process_scheduled(self, chunk: int = 2000) -> int:
        """Enter the contacts whose date (``date_attribute``) or schedule has come. Returns how
        many entered. Each entry's key names the contact and the local date, so sweeping again
        (another worker, the next minute) enters no one twice."""
        now = self.clock()
        entered = 0
        for journey in list(self.journeys.swept):
            entry = journey.definition.entry
            if entry.date_attribute is not None:
                for events in self._date_candidates(journey, now, chunk):
                    entered += self._enter_swept(journey, events, now)
            elif entry.schedule is not None:
                for events in self._schedule_candidates(journey, now, chunk):
                    entered += self._enter_swept(journey, events, now)
            elif entry.segment is not None:
                for events in self._segment_changes(journey, now, chunk):
                    entered += self._enter_swept(journey, events, now)
        return entered

    def _segment_changes(
        self, journey: CompiledJourney, now: datetime, chunk: int
    ) -> Iterator[list[TriggerEvent]]:
        """The contacts who joined (or left) the segment since the last sweep.

        One worker sweeps each journey per ``every`` (a Redis lock). The members seen by the
        last sweep are kept in a Redis set; the first sweep only records them (joining means
        joining after the journey started)."""
        spec = journey.definition.entry.segment
        assert spec is not None
        every = int(spec.every)
        base = f"{self.keys.namespace}:segment:{journey.id}"
        if not self.redis.set(f"{base}:lock", self.consumer, nx=True, ex=every):
            return
        current: set[int] = set()
        after = 0
        while True:
            with self.runtime.session() as session:
                segment = get_segment(session, spec.name)
                ids = [
                    row[0]
                    for row in session.execute(
                        sa.select(col(Contact.id))
                        .where(col(Contact.id) > after, segment_condition(session, segment))
                        .order_by(col(Contact.id))
                        .limit(chunk)
                    )
                ]
            if not ids:
                break
            current.update(ids)
            after = ids[-1]
        members = f"{base}:members"
        known = self.redis.exists(f"{base}:swept")
        before = {int(m) for m in self.redis.sscan_iter(members, count=10_000)}
        changed = sorted(current - before if spec.on == "enter" else before - current)
        # The new snapshot replaces the old one at once (written aside, then renamed).
        staging = f"{base}:staging"
        self.redis.delete(staging)
        listed = sorted(current)
        for start in range(0, len(listed), 10_000):
            self.redis.sadd(staging, *listed[start : start + 10_000])
        if listed:
            self.redis.rename(staging, members)
        else:
            self.redis.delete(members)
        self.redis.set(f"{base}:swept", int(now.timestamp()))
        if not known:
            return
        stamp = int(now.timestamp())
        for start in range(0, len(changed), chunk):
            yield [
                TriggerEvent(
                    event_id=f"segment:{spec.on}:{contact_id}:{stamp}",
                    type=SEGMENT_ENTRY_EVENT,
                    contact_id=contact_id,
                    occurred_at=now,
                    properties={"segment": spec.name, "change": spec.on},
                )
                for contact_id in changed[start : start + chunk]
            ]

    def _date_candidates(
        self, journey: CompiledJourney, now: datetime, chunk: int
    ) -> Iterator[list[TriggerEvent]]:
        spec = journey.definition.entry.date_attribute
        assert spec is not None
        # A contact's local date is UTC's, the day before or the day after.
        targets = [
            (now + timedelta(days=shift)).date() - timedelta(days=spec.offset_days)
            for shift in (-1, 0, 1)
        ]
        value = Contact.attributes[spec.attribute].as_string()
        patterns = (
            [f"%-{t.month:02d}-{t.day:02d}%" for t in targets]
            + ["%-02-29%" for t in targets if (t.month, t.day) == (2, 28)]
            if spec.yearly
            else [f"{t.isoformat()}%" for t in targets]
        )
        hour, minute = (int(x) for x in spec.at.split(":"))
        after = 0
        while True:
            with self.runtime.session() as session:
                rows = session.execute(
                    sa.select(col(Contact.id), col(Contact.timezone), value)
                    .where(
                        col(Contact.id) > after,
                        col(Contact.status) == "active",
                        sa.or_(*[value.like(p) for p in patterns]),
                    )
                    .order_by(col(Contact.id))
                    .limit(chunk)
                ).all()
            if not rows:
                return
            after = rows[-1][0]
            events = []
            for contact_id, zone_name, raw in rows:
                local = now.astimezone(contact_zone({"timezone": zone_name}))
                if (local.hour, local.minute) < (hour, minute):
                    continue
                target = local.date() - timedelta(days=spec.offset_days)
                if not _date_matches(str(raw), target, yearly=spec.yearly):
                    continue
                events.append(
                    TriggerEvent(
                        event_id=f"date:{contact_id}:{local.date().isoformat()}",
                        type=DATE_ENTRY_EVENT,
                        contact_id=contact_id,
                        occurred_at=now,
                        properties={"attribute": spec.attribute, "date": str(raw)[:10]},
                    )
                )
            if events:
                yield events

    def _schedule_candidates(
        self, journey: CompiledJourney, now: datetime, chunk: int
    ) -> Iterator[list[TriggerEvent]]:
        spec = journey.definition.entry.schedule
        assert spec is not None
        local = now.astimezone(contact_zone({"timezone": spec.timezone}))
        hour, minute = (int(x) for x in spec.at.split(":"))
        day = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")[local.weekday()]
        if (local.hour, local.minute) < (hour, minute):
            return
        if spec.days_of_week is not None and day not in spec.days_of_week:
            return
        done_key = f"{self.keys.namespace}:swept:{journey.id}:{journey.version}:{local.date()}"
        if self.redis.exists(done_key):
            return
        after = 0
        while True:
            with self.runtime.session() as session:
                ids = [
                    row[0]
                    for row in session.execute(
                        sa.select(col(Contact.id))
                        .where(col(Contact.id) > after, col(Contact.status) == "active")
                        .order_by(col(Contact.id))
                        .limit(chunk)
                    )
                ]
            if not ids:
                break
            after = ids[-1]
            yield [
                TriggerEvent(
                    event_id=f"schedule:{contact_id}:{local.date().isoformat()}",
                    type=SCHEDULE_ENTRY_EVENT,
                    contact_id=contact_id,
                    occurred_at=now,
                    properties={"date": local.date().isoformat()},
                )
                for contact_id in ids
            ]
        # Every contact was offered the occurrence: the next sweeps today skip the scan.
        self.redis.set(done_key, "1", ex=3 * 86400)

    def _enter_swept(
        self, journey: CompiledJourney, events: list[TriggerEvent], now: datetime
    ) -> int:
        stats = _Stats()
        report = StepReport()
        works: list[_Work] = []
        with self.runtime.session() as session:
            context = BatchContext(session, events, now=now, score=self.score, recent=self.recent)
            runs: dict[int, list[Run]] = {}
            for run in _load_runs(
                session,
                col(JourneyRun.journey_id) == journey.id,
                col(JourneyRun.contact_id).in_(sorted({e.contact_id for e in events})),
                col(JourneyRun.status) == "active",
            ):
                runs.setdefault(run.contact_id, []).append(run)
            history = self._entry_history(session, events, [journey.id])
            for event in events:
                if event.contact_id not in context.contacts:
                    continue
                work = self._enter(
                    journey, event, context, history=history, runs=runs, stats=stats, now=now
                )
                if work is not None:
                    works.append(work)
                    runs.setdefault(event.contact_id, []).append(work.run)
            contacts = context.contacts
        self._advance_all(works, stats, report, contacts=contacts)
        self._save(works, stats, report)
        pipe = self.redis.pipeline(transaction=False)
        stats.write(pipe, self.keys)
        pipe.execute()
        return len(works)

    # -- due runs -------------------------------------------------------------------------------

    def process_due(self, limit: int | None = None) -> int:
        """Advance the runs whose time has come. Returns how many were claimed."""
        now = self.clock()
        ids = self._claim_due(now, limit or self.due_batch_size)
        if not ids:
            return 0
        stats = _Stats()
        report = StepReport()
        works: list[_Work] = []
        gone: list[int] = []
        with self.runtime.session() as session:
            rows = _load_runs(session, col(JourneyRun.id).in_(ids))
            found = {run.id for run in rows}
            gone.extend(i for i in ids if i not in found)
            for run in rows:
                journey = self.journeys.get(run.journey_id, run.version)
                if run.status != "active":
                    gone.append(run.id or 0)
                elif journey is None:
                    # Its version no longer compiles here (a plugin missing): try again later.
                    stats.add(run.journey_id, "errors")
                    run.due_at = now + timedelta(minutes=5)
                    works.append(_Work(run, _unloadable(run), run.seq, stopped=True))
                elif not journey.active:
                    # Paused: contacts stay where they are; looked at again in a minute.
                    run.due_at = max(as_utc(run.due_at) or now, now + timedelta(minutes=1))
                    works.append(_Work(run, journey, run.seq, stopped=True))
                else:
                    works.append(_Work(run, journey, run.seq))
        self._advance_all(works, stats, report)
        self._save(works, stats, report)
        pipe = self.redis.pipeline(transaction=True)
        if gone:
            pipe.zrem(self.keys.due, *gone)
        stats.write(pipe, self.keys)
        pipe.execute()
        return len(ids)

    def _claim_due(self, now: datetime, limit: int) -> list[int]:
        now_ms = _ms(now)
        # One cheap read first: most calls find nothing due, and need no WATCH.
        if not self.redis.zrangebyscore(self.keys.due, "-inf", now_ms, start=0, num=1):
            return []
        with self.redis.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(self.keys.due)
                    members: list[Any] = list(
                        pipe.zrangebyscore(self.keys.due, "-inf", now_ms, start=0, num=limit)
                    )
                    if not members:
                        pipe.unwatch()
                        return []
                    pipe.multi()
                    pipe.zadd(
                        self.keys.due, dict.fromkeys(members, now_ms + self.due_lease_ms), xx=True
                    )
                    pipe.execute()
                    return [int(m) for m in members]
                except redis.WatchError:
                    continue

    # -- advancing ------------------------------------------------------------------------------

    def _advance_all(
        self,
        works: list[_Work],
        stats: _Stats,
        report: StepReport,
        *,
        contacts: dict[int, dict[str, Any]] | None = None,
    ) -> None:
        """Advance every run until it waits or ends, performing side effects between rounds.

        Contacts are loaded once for the batch (``contacts`` may bring them already loaded)
        and reused by later rounds, which see the batch's own contact updates.
        """
        pending = [w for w in works if not w.stopped]
        known: dict[int, dict[str, Any]] = contacts if contacts is not None else {}
        rounds = 0
        while pending:
            rounds += 1
            now = self.clock()
            with self.runtime.session() as session:
                events = [run_event(w.run) for w in pending]
                missing = {w.run.contact_id for w in pending} - known.keys()
                if missing:
                    known.update(load_contacts(session, missing))
                context = BatchContext(
                    session,
                    events,
                    now=now,
                    score=self.score,
                    recent=self.recent,
                    contacts=known,
                )
                for work, event in zip(pending, events, strict=True):
                    self._walk(work, event, context, now=now, stats=stats, report=report)
            effects = [w for w in pending if w.effect is not None]
            if effects:
                self._perform(effects, now)
            pending = []
            for work in effects:
                self._after_effect(work, now, stats, report)
                if not work.stopped:
                    pending.append(work)
            if rounds > MAX_STEPS_PER_ADVANCE:
                for work in pending:
                    self._finish(work, "too_many_steps", stats)
                break

    def _walk(
        self,
        work: _Work,
        event: TriggerEvent,
        context: BatchContext,
        *,
        now: datetime,
        stats: _Stats,
        report: StepReport,
    ) -> None:
        """Take steps until the run waits, ends or needs a side effect."""
        run, journey = work.run, work.journey
        contact = context.contacts.get(run.contact_id)
        if contact is None:
            # Erased (or deleted) while inside: it leaves at once, nothing more is done.
            self._finish(work, "contact_erased", stats)
            return
        for _ in range(MAX_STEPS_PER_ADVANCE):
            if work.stopped:
                return
            step = journey.steps.get(run.step)
            if step is None:
                self._finish(work, "step_missing", stats)
                return
            report.steps += 1
            due = as_utc(run.due_at)
            if isinstance(step, WaitStep):
                if due is None:
                    if step.for_event is not None:
                        assert isinstance(step.timeout, int)
                        run.waiting_for = step.for_event.type
                        run.due_at = now + timedelta(seconds=step.timeout)
                    elif step.duration is not None:
                        assert isinstance(step.duration, int)
                        run.due_at = now + timedelta(seconds=step.duration)
                    elif step.until_best_hour is not None:
                        best = best_hour(context, event, step.until_best_hour, now, contact)
                        run.due_at = _next_local_time(now, best, contact)
                    else:
                        assert step.until_local_time is not None
                        run.due_at = _next_local_time(now, step.until_local_time, contact)
                    stats.add(journey.id, f"{step.id}:waiting")
                    work.stopped = True
                    report.waiting += 1
                    return
                if due > now:
                    work.stopped = True  # looked at early (a stale due entry): keep waiting
                    return
                if step.for_event is not None:
                    stats.add(journey.id, f"{step.id}:timed_out")
                    self._move(work, step.timeout_next, stats)
                else:
                    self._move(work, step.next, stats)
                continue
            if isinstance(step, SendStep):
                if due is not None and due > now:
                    work.stopped = True
                    return
                if journey.quiet is not None and not step.ignore_quiet_hours:
                    held = journey.quiet.hold_until(now, contact_zone(contact))
                    if held is not None:
                        run.due_at = held
                        stats.add(journey.id, f"{step.id}:quiet_hours")
                        work.stopped = True
                        return
                work.effect = "send"
                return
            if isinstance(step, WebhookStep):
                if due is not None and due > now:
                    work.stopped = True
                    return
                work.effect = "webhook"
                return
            if isinstance(step, BranchStep):
                conditions = journey.branch_conditions[step.id]
                taken = self._holds(journey, conditions, event, context, stats)
                stats.add(journey.id, f"{step.id}:{'then' if taken else 'else'}")
                self._move(work, step.then if taken else step.else_, stats)
                continue
            if isinstance(step, SplitStep):
                path = _split(run, step)
                run.state = {**run.state, f"split:{step.id}": path}
                stats.add(journey.id, f"{step.id}:path{path}")
                self._move(work, step.paths[path].next, stats)
                continue
            if isinstance(step, UpdateContactStep):
                work.contact_updates.append(step)
                _apply_to_mapping(contact, step)
                stats.add(journey.id, f"{step.id}:updated")
                self._move(work, step.next, stats)
                continue
            if isinstance(step, ExitStep):
                self._finish(work, step.reason, stats)
                return
            self._finish(work, "unknown_step", stats)
            return
        self._finish(work, "too_many_steps", stats)

    def _move(self, work: _Work, target: str | None, stats: _Stats) -> None:
        run = work.run
        if target is None:
            self._finish(work, "completed", stats)
            return
        run.step = target
        run.seq += 1
        run.due_at = None
        run.waiting_for = None
        run.state = {k: v for k, v in run.state.items() if not k.startswith("attempt")}
        stats.add(work.journey.id, f"{target}:entered")

    def _finish(self, work: _Work, reason: str, stats: _Stats) -> None:
        run = work.run
        run.status = "done"
        run.exit_reason = reason
        run.due_at = None
        run.waiting_for = None
        run.seq += 1
        work.stopped = True
        work.effect = None
        stats.add(work.journey.id, f"exit:{reason}")
        stats.add(work.journey.id, f"{run.step}:exited")

    # -- side effects ---------------------------------------------------------------------------

    def _perform(self, works: list[_Work], now: datetime) -> None:
        """Side effects: one contact's one after another, highest journey priority first (so
        when the frequency cap has room for only some, the higher priority journey's send
        goes and the others are deferred); different contacts' on ``send_workers`` threads."""
        groups: dict[int, list[_Work]] = {}
        for work in works:
            groups.setdefault(work.run.contact_id, []).append(work)
        ordered = [
            sorted(group, key=lambda w: (-w.journey.definition.priority, w.journey.id))
            for group in groups.values()
        ]
        if self.send_workers <= 1 or len(ordered) == 1:
            for group in ordered:
                self._perform_group(group)
            return
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.send_workers, thread_name_prefix="journey-send")
        list(self._pool.map(self._perform_group, ordered))

    def _perform_group(self, group: list[_Work]) -> None:
        for work in group:
            self._perform_one(work)

    def _perform_one(self, work: _Work) -> None:
        step = work.journey.steps[work.run.step]
        try:
            if isinstance(step, SendStep):
                work.effect_result = self.submit(self.runtime, self._request(work, step))
            elif isinstance(step, WebhookStep):
                work.effect_result = self._call_webhook(work, step)
        except INFRASTRUCTURE_ERRORS:
            raise
        except PostwiseError as exc:
            work.effect_result = exc

    def _request(self, work: _Work, step: SendStep) -> SendRequest:
        run = work.run
        attempt = int(run.state.get("attempt", 0))
        template_id = work.journey.templates.get(step.id)
        if template_id is None:
            assert isinstance(step.template, int)
            template_id = step.template
        return SendRequest(
            contact_id=run.contact_id,
            template_id=template_id,
            dedupe_key=send_dedupe_key(run, step.id, attempt),
            reason="journey",
            context={
                "event": dict((run.event or {}).get("properties") or {}),
                "event_type": (run.event or {}).get("type"),
                "journey": work.journey.name,
                "journey_step": step.id,
            },
            consent_purpose=step.consent_purpose,
            experiment_id=step.experiment_id,
        )

    def _call_webhook(self, work: _Work, step: WebhookStep) -> int | str:
        run = work.run
        body = json.dumps(
            {
                "journey": work.journey.name,
                "journey_id": work.journey.id,
                "step": step.id,
                "contact_id": run.contact_id,
                "event": run.event,
            },
            separators=(",", ":"),
            sort_keys=True,
        ).encode()
        headers = {
            "Content-Type": "application/json",
            "Idempotency-Key": send_dedupe_key(run, step.id, 0),
            "User-Agent": "postwise-journeys",
        }
        secret = os.environ.get(step.secret_env) if step.secret_env else None
        if secret:
            stamp = str(int(time.time()))
            digest = hmac.new(secret.encode(), stamp.encode() + b"." + body, hashlib.sha256)
            headers["X-Postwise-Signature"] = f"t={stamp},v1={digest.hexdigest()}"
        if self.http is None:
            self.http = httpx.Client(follow_redirects=False)
        try:
            response = self.http.post(step.url, content=body, headers=headers, timeout=step.timeout)
        except httpx.TimeoutException:
            return "timeout"
        except httpx.HTTPError as exc:
            return f"error:{type(exc).__name__}"
        return response.status_code

    def _after_effect(self, work: _Work, now: datetime, stats: _Stats, report: StepReport) -> None:
        run, journey = work.run, work.journey
        step = journey.steps[run.step]
        result, work.effect, work.effect_result = work.effect_result, None, None
        if isinstance(step, SendStep):
            if isinstance(result, PostwiseError):
                # The template was deleted under the live journey, or the request is invalid.
                log.error("journey %r step %r cannot send: %s", journey.name, step.id, result)
                reason = "template_missing" if "template" in str(result) else "send_error"
                self._finish(work, reason, stats)
                return
            assert isinstance(result, SubmitResult)
            status, skip = result.status, result.reason
            if status == SubmitStatus.DUPLICATE:
                status, skip = self._ledger_outcome(result.message_id)
            if status == SubmitStatus.SKIPPED and skip == "frequency_cap":
                deferrals = int(run.state.get("attempt", 0)) + 1
                if deferrals > CAP_MAX_DEFERRALS:
                    self._finish(work, "frequency_cap", stats)
                    return
                run.state = {**run.state, "attempt": deferrals}
                run.due_at = now + timedelta(seconds=CAP_RETRY_SECONDS)
                stats.add(journey.id, f"{step.id}:deferred")
                work.stopped = True
                return
            if status == SubmitStatus.SKIPPED and skip == "holdout":
                # The experiment's holdout: no message, and the contact goes on through the
                # flow, so the goal's conversions measure the message's incremental effect.
                stats.add(journey.id, f"{step.id}:holdout")
                self._move(work, step.next, stats)
                return
            if status == SubmitStatus.SKIPPED:
                stats.add(journey.id, f"{step.id}:skipped")
                self._finish(work, f"send_skipped:{skip}"[:50], stats)
                return
            stats.add(journey.id, f"{step.id}:sent")
            work.message_ids.append((result.message_id, step.id))
            report.sent += 1
            self._move(work, step.next, stats)
            return
        if isinstance(step, WebhookStep):
            if isinstance(result, int) and 200 <= result < 300:
                stats.add(journey.id, f"{step.id}:delivered")
                self._move(work, step.next, stats)
                return
            permanent = isinstance(result, int) and 400 <= result < 500 and result not in (408, 429)
            attempts = int(run.state.get("attempt", 0)) + 1
            stats.add(journey.id, f"{step.id}:failed")
            run.state = {**run.state, "attempt": attempts, "webhook_last": str(result)}
            if permanent or attempts >= step.attempts:
                if step.on_failure:
                    self._move(work, step.on_failure, stats)
                else:
                    self._finish(work, "webhook_failed", stats)
                return
            run.due_at = now + timedelta(seconds=WEBHOOK_BACKOFF_SECONDS * 2 ** (attempts - 1))
            work.stopped = True

    def _ledger_outcome(self, message_id: str) -> tuple[SubmitStatus, str | None]:
        """A duplicate submission: what the first one did (a replay after a crash)."""
        with self.runtime.session() as session:
            row = session.execute(
                sa.select(col(Message.status), col(Message.last_error)).where(
                    col(Message.id) == message_id
                )
            ).first()
        if row is not None and row[0] == "skipped":
            return SubmitStatus.SKIPPED, row[1]
        return SubmitStatus.QUEUED, None

    # -- writing --------------------------------------------------------------------------------

    def _update_positions(
        self, session: Session, moved: list[_Work], now: datetime, report: StepReport
    ) -> list[_Work]:
        """Write every moved run ``WHERE id = ? AND seq = <seq read>``; the runs another worker
        moved meanwhile (or erased) are left out of what is returned.

        On PostgreSQL: one ``UPDATE … FROM unnest(arrays) … RETURNING id`` for the batch; else an
        executemany of the same update."""
        if session.get_bind().dialect.name == "postgresql":
            runs = [work.run for work in moved]
            returned = session.execute(
                _UPDATE_POSITIONS_PG,
                {
                    "ids": [r.id for r in runs],
                    "seq_read": [work.seq_read for work in moved],
                    "steps": [r.step for r in runs],
                    "seqs": [r.seq for r in runs],
                    "statuses": [r.status for r in runs],
                    "waiting": [r.waiting_for for r in runs],
                    "due": [r.due_at for r in runs],
                    "reasons": [r.exit_reason for r in runs],
                    "states": [json.dumps(r.state, separators=(",", ":")) for r in runs],
                    "now": now,
                },
            )
            written = {row[0] for row in returned}
            kept = [work for work in moved if work.run.id in written]
            report.conflicts += len(moved) - len(kept)
            return kept
        params = [
            {
                "b_id": work.run.id,
                "b_seq_read": work.seq_read,
                "step": work.run.step,
                "seq": work.run.seq,
                "status": work.run.status,
                "waiting_for": work.run.waiting_for,
                "due_at": work.run.due_at,
                "exit_reason": work.run.exit_reason,
                "state": work.run.state,
                "updated_at": now,
            }
            for work in moved
        ]
        result: Any = session.connection().execute(_UPDATE_POSITION, params)
        if int(getattr(result, "rowcount", -1)) == len(moved):
            return moved
        # Some were moved by someone else: keep the ones whose row now holds our seq.
        rows = session.execute(
            sa.select(col(JourneyRun.id), col(JourneyRun.seq)).where(
                col(JourneyRun.id).in_([work.run.id for work in moved])
            )
        )
        current = {row[0]: row[1] for row in rows}
        kept = [work for work in moved if current.get(work.run.id or 0) == work.run.seq]
        report.conflicts += len(moved) - len(kept)
        return kept

    def _save(self, works: list[_Work], stats: _Stats, report: StepReport) -> None:
        """Write every moved run (optimistically) and every new one, then the due index."""
        if not works:
            return
        now = self.clock()
        saved: list[_Work] = []
        with self.runtime.session() as session:
            moved: list[_Work] = []
            fresh: list[_Work] = []
            for work in works:
                work.run.updated_at = now
                (fresh if work.new else moved).append(work)
            if fresh:
                ids = session.execute(
                    sa.insert(JourneyRun).returning(
                        col(JourneyRun.id), sort_by_parameter_order=True
                    ),
                    [_row(work.run) for work in fresh],
                ).scalars()
                for work, run_id in zip(fresh, ids, strict=True):
                    work.run.id = run_id
                saved.extend(fresh)
            if moved:
                saved.extend(self._update_positions(session, moved, now, report))
            for work in saved:
                for update in work.contact_updates:
                    _apply_to_contact(session, work.run.contact_id, update)
            session.flush()
            positions = [(w, w.run.id, w.run.status, as_utc(w.run.due_at)) for w in saved]
        report.advanced += len(saved)
        # After the commit: a run whose index entry is lost here is found again by
        # `postwise journeys rebuild-index`; an entry left behind is dropped when it comes due.
        pipe = self.redis.pipeline(transaction=False)
        due: dict[str, int] = {}
        leaving: list[str] = []
        for work, run_id, status, due_at in positions:
            assert run_id is not None
            if status == "active" and due_at is not None:
                due[str(run_id)] = _ms(due_at)
            else:
                leaving.append(str(run_id))
                if status == "done":
                    report.finished += 1
            for message_id, step_id in work.message_ids:
                pipe.set(
                    self.keys.message(message_id),
                    f"{work.run.journey_id}:{step_id}",
                    ex=30 * 86400,
                )
        if due:
            pipe.zadd(self.keys.due, due)
        if leaving:
            pipe.zrem(self.keys.due, *leaving)
        pipe.execute()


_ENGAGEMENT = {"open": "opened", "click": "clicked"}
_RUNS = JourneyRun.__table__  # type: ignore[attr-defined]
_UPDATE_POSITIONS_PG = sa.text(
    """
    UPDATE journey_run AS r
    SET step = v.step, seq = v.seq, status = v.status, waiting_for = v.waiting_for,
        due_at = v.due_at, exit_reason = v.exit_reason, state = CAST(v.state AS json),
        updated_at = :now
    FROM unnest(
        CAST(:ids AS integer[]), CAST(:seq_read AS integer[]), CAST(:steps AS varchar[]),
        CAST(:seqs AS integer[]), CAST(:statuses AS varchar[]), CAST(:waiting AS varchar[]),
        CAST(:due AS timestamptz[]), CAST(:reasons AS varchar[]), CAST(:states AS text[])
    ) AS v(id, seq_read, step, seq, status, waiting_for, due_at, exit_reason, state)
    WHERE r.id = v.id AND r.seq = v.seq_read
    RETURNING r.id
    """
)
_COLUMNS = [c.name for c in _RUNS.columns if c.name != "id"]


def _row(run: Run) -> dict[str, Any]:
    return {name: getattr(run, name) for name in _COLUMNS}


_UPDATE_POSITION = (
    sa.update(_RUNS)
    .where(_RUNS.c.id == sa.bindparam("b_id"), _RUNS.c.seq == sa.bindparam("b_seq_read"))
    .values(
        step=sa.bindparam("step"),
        seq=sa.bindparam("seq"),
        status=sa.bindparam("status"),
        waiting_for=sa.bindparam("waiting_for"),
        due_at=sa.bindparam("due_at"),
        exit_reason=sa.bindparam("exit_reason"),
        state=sa.bindparam("state"),
        updated_at=sa.bindparam("updated_at"),
    )
)


def _unloadable(run: Run) -> CompiledJourney:
    return CompiledJourney(
        id=run.journey_id,
        version=run.version,
        definition=None,  # type: ignore[arg-type]
        steps={},
        entry_conditions=AllOf("entry", []),
        goal_conditions=None,
        exit_conditions=[],
        branch_conditions={},
        wait_conditions={},
        templates={},
        quiet=None,
    )


def _split(run: Run, step: SplitStep) -> int:
    """A stable choice for this run (a replay picks the same path)."""
    digest = hashlib.sha256(f"{run.journey_id}:{run.entry_key}:{step.id}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") / 2**64 * sum(p.weight for p in step.paths)
    for index, path in enumerate(step.paths):
        point -= path.weight
        if point < 0:
            return index
    return len(step.paths) - 1


def _next_local_time(now: datetime, hhmm: str, contact: Any) -> datetime:
    """The next moment (after now) that is ``hhmm`` on the contact's clock."""
    zone = contact_zone(contact)
    hour, minute = (int(part) for part in hhmm.split(":"))
    local = now.astimezone(zone)
    candidate = datetime.combine(local.date(), dtime(hour, minute), tzinfo=zone)
    if candidate <= local:
        candidate = datetime.combine(
            local.date() + timedelta(days=1), dtime(hour, minute), tzinfo=zone
        )
    return candidate.astimezone(UTC)


def best_hour(
    context: BatchContext,
    event: TriggerEvent,
    options: BestHour,
    now: datetime,
    contact: Mapping[str, Any],
) -> str:
    """The contact's most engaged hour (``"HH:00"``, their clock) from human opens and clicks
    in the window, or the fallback when there are too few of them."""
    since = now - timedelta(days=options.window_days)
    zone = contact_zone(contact)
    hours: Counter[int] = Counter()
    for kind in ("open", "click"):
        for past in context.history_events(event, kind, since, now):
            if not past.automated:
                hours[past.occurred_at.astimezone(zone).hour] += 1
    if sum(hours.values()) < options.min_events:
        return options.fallback
    hour = min(hours, key=lambda h: (-hours[h], h))
    return f"{hour:02d}:00"


def _date_matches(raw: str, target: date, *, yearly: bool) -> bool:
    """Whether the ISO date at the start of ``raw`` is ``target`` (month and day if yearly)."""
    try:
        value = date.fromisoformat(raw[:10])
    except ValueError:
        return False
    if not yearly:
        return value == target
    if (value.month, value.day) == (target.month, target.day):
        return True
    # Born on 29 February: celebrated on 28 February when the year has no 29th.
    leap = target.year % 4 == 0 and (target.year % 100 != 0 or target.year % 400 == 0)
    return (
        (value.month, value.day) == (2, 29) and (target.month, target.day) == (2, 28) and not leap
    )


def _apply_to_mapping(contact: dict[str, Any], step: UpdateContactStep) -> None:
    """The update as later conditions of the same advance see it (built-in fields win)."""
    attributes = dict(contact.get("attributes") or {})
    attributes.update(step.set)
    for name in step.unset:
        attributes.pop(name, None)
        if name not in _FIELDS:
            contact.pop(name, None)
    contact["attributes"] = attributes
    for name, value in step.set.items():
        if name not in _FIELDS:
            contact[name] = value
    tags = set(contact.get("tags") or ())
    tags.update(step.add_tags)
    tags.difference_update(step.remove_tags)
    contact["tags"] = frozenset(tags)


_FIELDS = frozenset(
    {"id", "email", "first_name", "last_name", "timezone", "country", "status", "tags"}
)


def _apply_to_contact(session: Session, contact_id: int, step: UpdateContactStep) -> None:
    contact = session.get(Contact, contact_id)
    if contact is None:
        return
    if step.set or step.unset:
        attributes = dict(contact.attributes or {})
        attributes.update(step.set)
        for name in step.unset:
            attributes.pop(name, None)
        contact.attributes = attributes
        contact.updated_at = utcnow()
        session.add(contact)
    query = select(ContactTag.tag).where(ContactTag.contact_id == contact_id)
    existing = set(session.exec(query).all())
    for tag in step.add_tags:
        if tag not in existing:
            session.add(ContactTag(contact_id=contact_id, tag=tag))
            existing.add(tag)
    if step.remove_tags:
        session.execute(
            sa.delete(ContactTag).where(
                col(ContactTag.contact_id) == contact_id, col(ContactTag.tag).in_(step.remove_tags)
            )
        )


def rebuild_due_index(runtime: Runtime, keys: JourneyKeys | None = None) -> int:
    """Re-add every waiting run to the due index from the database (after losing Redis)."""
    keys = keys or JourneyKeys()
    count = 0
    with runtime.session() as session:
        rows: Iterable[Any] = session.execute(
            sa.select(col(JourneyRun.id), col(JourneyRun.due_at)).where(
                col(JourneyRun.status) == "active", col(JourneyRun.due_at).is_not(None)
            )
        )
        pipe = runtime.redis.pipeline(transaction=False)
        for run_id, due_at in rows:
            pipe.zadd(keys.due, {str(run_id): _ms(as_utc(due_at))})
            count += 1
            if count % 10_000 == 0:
                pipe.execute()
        pipe.execute()
    return count
