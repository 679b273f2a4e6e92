"""Dispatch: send requests and campaign audiences become ledger rows and queued batches.

:func:`submit_send` handles one request (from a trigger, the API, a script) synchronously: the
compliance gate (with the request's ``consent_purpose``, if any), the frequency cap, the ledger
row under the request's deterministic id (a second submission is reported as a duplicate) and
the job, at ``not_before`` when given.

:func:`dispatch_campaign` streams a campaign's audience in pages of contact ids (keyset
pagination: memory does not grow with the audience), passes every recipient through the same
gate and cap (with the consent purpose the list requires, which every ledger row records so the
worker checks it again right before sending), assigns experiment variants, writes the page's
ledger rows in one statement and enqueues its batches with one ``enqueue_many``. It records its
position after every page, so running it again after a crash resumes where it stopped; messages
already queued are not queued twice (the ledger ignores their rows; a batch enqueued twice is
claimed once).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import redis
import sqlalchemy as sa
from sqlmodel import Session, col

from postwise.compliance.consent import check_purpose
from postwise.compliance.gate import Recipient, SkipReason
from postwise.contacts.segments import segment_condition
from postwise.db.models import (
    Campaign,
    CampaignStatus,
    Contact,
    ContactStatus,
    Experiment,
    Message,
    MessageStatus,
    Segment,
    Template,
    as_utc,
    utcnow,
)
from postwise.delivery.campaigns import check_sendable
from postwise.delivery.ledger import campaign_message_id, insert_rows, ledger_row
from postwise.delivery.queue import enqueue_at, enqueue_batches
from postwise.delivery.requests import SendRequest, SubmitResult, SubmitStatus
from postwise.delivery.services import services_for
from postwise.errors import ConflictError, NotFoundError, ValidationError
from postwise.experiments.arms import HOLDOUT, Arms
from postwise.plugins import PROVIDERS

if TYPE_CHECKING:
    from postwise.runtime import Runtime

__all__ = [
    "DISPATCH_LOCK_SECONDS",
    "DispatchReport",
    "dispatch_campaign",
    "dispatch_lock_key",
    "submit_send",
]


#: Contacts read per page of a campaign audience, in multiples of the batch size.
PAGE_BATCHES = 4

_LOCK_PREFIX = "postwise:delivery:dispatch-lock:"
#: How long a dispatch's lock outlives its last renewal (its process dying included).
DISPATCH_LOCK_SECONDS = 20

log = logging.getLogger(__name__)


def _list_purpose(session: Session, campaign_id: int) -> str | None:
    """The consent purpose of the list campaign ``campaign_id`` sends to, if it has one."""
    campaign = session.get(Campaign, campaign_id)
    if campaign is None or campaign.segment_id is None:
        return None
    segment = session.get(Segment, campaign.segment_id)
    return segment.consent_purpose if segment is not None else None


def submit_send(runtime: Runtime, request: SendRequest) -> SubmitResult:
    """Gate, count, record and enqueue one send request; the result says which happened."""
    settings = runtime.settings
    services = services_for(runtime)
    message_id = request.message_id
    provider = request.provider or settings.provider
    runtime.component(PROVIDERS, provider)  # an unknown provider fails here, loudly
    now = utcnow()
    not_before = as_utc(request.not_before) if request.not_before else None
    purpose = request.consent_purpose
    if purpose is not None:
        purpose = check_purpose(purpose, field="consent_purpose")
    with runtime.session() as session:
        if session.execute(sa.select(col(Message.id)).where(col(Message.id) == message_id)).first():
            return SubmitResult(message_id, SubmitStatus.DUPLICATE)
        template = session.get(Template, request.template_id)
        if template is None:
            raise NotFoundError(f"template {request.template_id} does not exist")
        marketing = template.kind != "transactional"
        template_id, version = template.id, template.current_version
        assert template_id is not None
        if request.campaign_id is not None:
            # A send for a campaign (a trigger enrolling a contact) needs what its list needs;
            # a ledger row carries one purpose, so a request may not ask for another.
            listed = _list_purpose(session, request.campaign_id)
            if listed is not None and purpose not in (None, listed):
                raise ValidationError(
                    f"campaign {request.campaign_id} sends to a list that needs {listed!r} "
                    f"consent; a send cannot also need {purpose!r}",
                    field="consent_purpose",
                )
            purpose = purpose or listed
        variant = None
        if request.experiment_id is not None:
            experiment = session.get(Experiment, request.experiment_id)
            if experiment is None:
                raise NotFoundError(f"experiment {request.experiment_id} does not exist")
            arms = Arms.load(session, experiment, template_id, version)
            variant, template_id, version = arms.assign(request.contact_id)
        contact = session.get(Contact, request.contact_id)
        reason: str | None = None
        if contact is None:
            reason = SkipReason.INVALID_CONTACT
        elif variant == HOLDOUT:
            reason = HOLDOUT
        else:
            recipient = Recipient(
                request.contact_id, contact.email, contact.status, contact.country, purpose
            )
            reason = services.gate.check(session, [recipient], marketing=marketing).get(
                request.contact_id
            )
        if reason is None and marketing and services.frequency_cap is not None:
            fits = services.frequency_cap.count(runtime.redis, [(request.contact_id, message_id)])
            if not fits[0]:
                reason = SkipReason.FREQUENCY_CAP
        due = max(now, not_before) if not_before else now
        row = ledger_row(
            message_id,
            contact_id=request.contact_id,
            provider=provider,
            template_id=template_id,
            template_version=version,
            now=now,
            campaign_id=request.campaign_id,
            trigger_id=request.trigger_id,
            experiment_id=request.experiment_id,
            variant=None if variant == HOLDOUT else variant,
            transactional=not marketing,
            context=request.context,
            consent_purpose=purpose,
            status=MessageStatus.SKIPPED.value if reason else MessageStatus.QUEUED.value,
            reason=str(reason) if reason else None,
            due_by=None if reason else due + timedelta(seconds=settings.delivery_lease_seconds),
        )
        inserted = insert_rows(session.connection(), [row])
    if not inserted:
        return SubmitResult(message_id, SubmitStatus.DUPLICATE)
    if reason:
        return SubmitResult(message_id, SubmitStatus.SKIPPED, str(reason))
    if not_before is not None and not_before > now:
        enqueue_at(runtime, provider, [message_id], not_before)
    else:
        enqueue_batches(runtime, provider, [[message_id]])
    return SubmitResult(message_id, SubmitStatus.QUEUED)


@dataclass(slots=True)
class DispatchReport:
    """Where a campaign's dispatch stands."""

    campaign_id: int
    audience: int = 0
    queued: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    seconds: float = 0.0
    done: bool = False

    def to_dict(self) -> dict[str, Any]:
        return {
            "campaign_id": self.campaign_id,
            "audience": self.audience,
            "queued": self.queued,
            "skipped": dict(self.skipped),
            "batches": self.batches,
            "seconds": round(self.seconds, 3),
            "done": self.done,
        }


def dispatch_campaign(
    runtime: Runtime,
    campaign_id: int,
    *,
    progress: Callable[[DispatchReport], None] | None = None,
) -> DispatchReport:
    """Gate, record and enqueue every recipient of the campaign; resumable after a crash."""
    lock_key = dispatch_lock_key(campaign_id)
    if not runtime.redis.set(lock_key, "1", nx=True, ex=DISPATCH_LOCK_SECONDS):
        raise ConflictError(
            f"campaign {campaign_id} is being dispatched by another process; wait for it to "
            "finish (its status shows progress)"
        )
    keeper = _LockKeeper(runtime, lock_key)
    keeper.start()
    try:
        return _Dispatcher(runtime, campaign_id, lock_key).run(progress)
    finally:
        keeper.stop()
        runtime.redis.delete(lock_key)


def dispatch_lock_key(campaign_id: int) -> str:
    """The Redis key a live dispatch of ``campaign_id`` holds (and keeps alive)."""
    return f"{_LOCK_PREFIX}{campaign_id}"


class _LockKeeper(threading.Thread):
    """Keeps a dispatch's lock alive while the dispatch runs, however long a page takes.

    The lock lives :data:`DISPATCH_LOCK_SECONDS`: a dispatch whose process died lets it lapse
    within that, and the sweeper (:func:`postwise.delivery.recovery.resume_dispatches`) queues
    the campaign's dispatch again, which resumes from the last page recorded.
    """

    def __init__(self, runtime: Runtime, key: str) -> None:
        super().__init__(name="postwise-dispatch-lock", daemon=True)
        self.runtime = runtime
        self.key = key
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(DISPATCH_LOCK_SECONDS / 4):
            try:
                self.runtime.redis.expire(self.key, DISPATCH_LOCK_SECONDS)
            except redis.RedisError as exc:
                log.warning("could not renew the dispatch lock %s (retrying): %s", self.key, exc)

    def stop(self) -> None:
        self._stop_event.set()


@dataclass(frozen=True, slots=True)
class _Plan:
    """What every page of one campaign's dispatch shares."""

    campaign_id: int
    template_id: int
    template_version: int
    experiment_id: int | None
    marketing: bool
    provider: str
    arms: Arms | None
    #: The consent purpose the campaign's list requires (``Segment.consent_purpose``).
    consent_purpose: str | None


class _Dispatcher:
    def __init__(self, runtime: Runtime, campaign_id: int, lock_key: str) -> None:
        self.runtime = runtime
        self.campaign_id = campaign_id
        self.lock_key = lock_key
        self.services = services_for(runtime)
        self.page_size = runtime.settings.batch_size * PAGE_BATCHES

    def run(self, progress: Callable[[DispatchReport], None] | None) -> DispatchReport:
        started = time.monotonic()
        with self.runtime.session() as session:
            campaign, template, segment, arms = self._start(session)
            marketing = template.kind != "transactional"
            provider = campaign.provider or self.runtime.settings.provider
            counts = dict(campaign.counts or {})
        self.runtime.component(PROVIDERS, provider)
        report = DispatchReport(
            self.campaign_id,
            audience=int(counts.get("audience", 0)),
            queued=int(counts.get("queued", 0)),
            skipped=Counter({k: int(v) for k, v in (counts.get("skipped") or {}).items()}),
            batches=int(counts.get("batches", 0)),
        )
        cursor = int(counts.get("cursor", 0))
        assert campaign.id is not None and template.id is not None
        assert campaign.template_version is not None
        plan = _Plan(
            campaign_id=campaign.id,
            template_id=template.id,
            template_version=campaign.template_version,
            experiment_id=campaign.experiment_id,
            marketing=marketing,
            provider=provider,
            arms=arms,
            consent_purpose=segment.consent_purpose if segment is not None else None,
        )
        for page in self._pages(segment, cursor):
            queued_ids = self._dispatch_page(page, plan, report)
            batches = [
                queued_ids[i : i + self.runtime.settings.batch_size]
                for i in range(0, len(queued_ids), self.runtime.settings.batch_size)
            ]
            enqueue_batches(self.runtime, provider, batches)
            report.batches += len(batches)
            report.audience += len(page)
            report.seconds = time.monotonic() - started
            self._save(report, cursor=page[-1].contact_id)
            if progress is not None:
                progress(report)
        report.done = True
        report.seconds = time.monotonic() - started
        self._save(report, cursor=None)
        if progress is not None:
            progress(report)
        return report

    def _start(self, session: Session) -> tuple[Campaign, Template, Segment | None, Arms | None]:
        campaign = session.get(Campaign, self.campaign_id)
        if campaign is None:
            raise NotFoundError(f"campaign {self.campaign_id} does not exist")
        check_sendable(campaign)
        template = session.get(Template, campaign.template_id)
        if template is None:
            raise NotFoundError(f"template {campaign.template_id} does not exist")
        if campaign.template_version is None:
            # Fixed when the send starts, so every recipient gets the same version.
            campaign.template_version = template.current_version
        segment = None
        if campaign.segment_id is not None:
            segment = session.get(Segment, campaign.segment_id)
            if segment is None:
                raise NotFoundError(f"segment {campaign.segment_id} does not exist")
        arms = None
        if campaign.experiment_id is not None:
            experiment = session.get(Experiment, campaign.experiment_id)
            if experiment is None:
                raise NotFoundError(f"experiment {campaign.experiment_id} does not exist")
            assert template.id is not None
            arms = Arms.load(session, experiment, template.id, campaign.template_version)
        if campaign.status == CampaignStatus.DRAFT:
            campaign.status = CampaignStatus.SENDING
            campaign.started_at = utcnow()
        session.add(campaign)
        session.flush()
        return campaign, template, segment, arms

    def _pages(self, segment: Segment | None, after: int) -> Iterator[list[Recipient]]:

        last = after
        while True:
            with self.runtime.session() as session:
                condition = (
                    segment_condition(session, segment)
                    if segment is not None
                    else col(Contact.status) == ContactStatus.ACTIVE.value
                )
                query = (
                    sa.select(
                        col(Contact.id),
                        col(Contact.email),
                        col(Contact.status),
                        col(Contact.country),
                    )
                    .where(col(Contact.id) > last, condition)
                    .order_by(col(Contact.id))
                    .limit(self.page_size)
                )
                page = [Recipient(*row) for row in session.execute(query)]
            if not page:
                return
            yield page
            last = page[-1].contact_id

    def _dispatch_page(
        self, page: Sequence[Recipient], plan: _Plan, report: DispatchReport
    ) -> list[str]:
        marketing, arms = plan.marketing, plan.arms
        now = utcnow()
        # A page's rows carry a due-by time: if their batch job is lost before it claims them
        # (a worker killed between dequeuing and claiming), the sweeper enqueues them again.
        due_by = now + timedelta(seconds=self.runtime.settings.delivery_lease_seconds)
        rows: list[dict[str, Any]] = []
        queued: list[str] = []
        with self.runtime.session() as session:
            skips: dict[int, str] = dict(
                self.services.gate.check(
                    session, page, marketing=marketing, consent_purpose=plan.consent_purpose
                )
            )
            entries: list[tuple[Recipient, str, str | None, int, int]] = []
            for recipient in page:
                message_id = campaign_message_id(plan.campaign_id, recipient.contact_id)
                variant, arm_template, arm_version = (
                    arms.assign(recipient.contact_id)
                    if arms is not None
                    else (None, plan.template_id, plan.template_version)
                )
                if variant == HOLDOUT and recipient.contact_id not in skips:
                    skips[recipient.contact_id] = HOLDOUT
                entries.append((recipient, message_id, variant, arm_template, arm_version))
            cap = self.services.frequency_cap
            if marketing and cap is not None:
                candidates = [
                    (r.contact_id, m) for r, m, *_ in entries if r.contact_id not in skips
                ]
                for (contact_id, _), fits in zip(
                    candidates, cap.count(self.runtime.redis, candidates), strict=True
                ):
                    if not fits:
                        skips[contact_id] = SkipReason.FREQUENCY_CAP
            for recipient, message_id, variant, arm_template, arm_version in entries:
                reason = skips.get(recipient.contact_id)
                rows.append(
                    ledger_row(
                        message_id,
                        contact_id=recipient.contact_id,
                        provider=plan.provider,
                        template_id=arm_template,
                        template_version=arm_version,
                        now=now,
                        campaign_id=plan.campaign_id,
                        experiment_id=plan.experiment_id,
                        variant=None if variant == HOLDOUT else variant,
                        transactional=not marketing,
                        consent_purpose=plan.consent_purpose,
                        status=MessageStatus.SKIPPED.value
                        if reason
                        else MessageStatus.QUEUED.value,
                        reason=str(reason) if reason else None,
                        due_by=None if reason else due_by,
                    )
                )
                if reason:
                    report.skipped[str(reason)] += 1
                else:
                    queued.append(message_id)
            # A page written again after a crash (its rows exist, its cursor was not saved) is
            # counted once all the same: the counters are saved with the cursor. Its messages
            # are enqueued again (the first run may have died before it enqueued them); a batch
            # of rows already claimed or sent claims nothing.
            insert_rows(session.connection(), rows)
        report.queued += len(queued)
        return queued

    def _save(self, report: DispatchReport, *, cursor: int | None) -> None:
        with self.runtime.session() as session:
            campaign = session.get(Campaign, self.campaign_id)
            assert campaign is not None
            counts = dict(campaign.counts or {})
            counts.update(
                audience=report.audience,
                queued=report.queued,
                skipped=dict(report.skipped),
                batches=report.batches,
                dispatch_seconds=round(report.seconds, 3),
            )
            if cursor is None:
                counts["dispatched"] = True
                counts.pop("cursor", None)
            else:
                counts["cursor"] = cursor
            campaign.counts = counts
            session.add(campaign)
