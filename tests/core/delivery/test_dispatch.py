"""Dispatch: send requests and campaign audiences become gated ledger rows and queued batches."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from delivery_helpers import (
    add_campaign,
    add_contacts,
    add_segment,
    add_template,
    ledger,
    statuses,
)
from rq import Queue
from rq.serializers import JSONSerializer

from postwise.db.models import Campaign, ContactStatus, Experiment, TemplateVersion
from postwise.delivery.dispatch import dispatch_campaign, submit_send
from postwise.delivery.ledger import campaign_message_id
from postwise.delivery.queue import queue_name
from postwise.delivery.requests import SendRequest, SubmitStatus
from postwise.errors import ConflictError, NotFoundError
from postwise.runtime import Runtime


def _queued_ids(runtime: Runtime) -> list[str]:
    queue = Queue(queue_name("smtp"), connection=runtime.redis, serializer=JSONSerializer)
    ids: list[str] = []
    for job in queue.get_jobs():
        ids.extend(job.args[0])
    return ids


def _request(contact_id: int, template_id: int, key: str = "order-1", **fields: Any) -> SendRequest:
    return SendRequest(contact_id=contact_id, template_id=template_id, dedupe_key=key, **fields)


def test_a_send_request_is_recorded_and_queued_once(delivery: Runtime) -> None:
    (contact,) = add_contacts(delivery, 1)
    template = add_template(delivery)
    first = submit_send(delivery, _request(contact, template, context={"order_id": "A1"}))
    again = submit_send(delivery, _request(contact, template, context={"order_id": "A1"}))
    assert first.status == SubmitStatus.QUEUED
    assert again.status == SubmitStatus.DUPLICATE
    assert again.message_id == first.message_id
    row = ledger(delivery, first.message_id)
    assert row.status == "queued"
    assert row.context == {"order_id": "A1"}
    assert row.template_version == 1
    assert _queued_ids(delivery) == [first.message_id]


def test_a_send_request_that_fails_the_gate_is_skipped_with_its_reason(delivery: Runtime) -> None:
    (contact,) = add_contacts(delivery, 1, status=ContactStatus.UNSUBSCRIBED)
    template = add_template(delivery)
    result = submit_send(delivery, _request(contact, template))
    assert result.status == SubmitStatus.SKIPPED
    assert result.reason == "unsubscribed"
    assert ledger(delivery, result.message_id).status == "skipped"
    assert _queued_ids(delivery) == []


def test_transactional_mail_reaches_unsubscribed_contacts_and_ignores_the_cap(
    make_runtime: Any,
) -> None:
    runtime = make_runtime(frequency_cap="1/d")
    (contact,) = add_contacts(runtime, 1, status=ContactStatus.UNSUBSCRIBED)
    receipt = add_template(runtime, name="receipt", kind="transactional")
    results = [submit_send(runtime, _request(contact, receipt, key=f"r{i}")) for i in range(3)]
    assert [r.status for r in results] == [SubmitStatus.QUEUED] * 3
    assert ledger(runtime, results[0].message_id).transactional


def test_the_frequency_cap_is_shared_by_requests_and_counted_per_contact(
    make_runtime: Any,
) -> None:
    runtime = make_runtime(frequency_cap="2/24h")
    first, second = add_contacts(runtime, 2)
    template = add_template(runtime)
    results = [submit_send(runtime, _request(first, template, key=f"k{i}")) for i in range(3)]
    assert [r.status for r in results] == [
        SubmitStatus.QUEUED,
        SubmitStatus.QUEUED,
        SubmitStatus.SKIPPED,
    ]
    assert results[2].reason == "frequency_cap"
    assert submit_send(runtime, _request(second, template)).status == SubmitStatus.QUEUED


def test_not_before_schedules_the_job_for_that_time(delivery: Runtime) -> None:
    (contact,) = add_contacts(delivery, 1)
    template = add_template(delivery)
    later = datetime.now(UTC) + timedelta(hours=2)
    result = submit_send(delivery, _request(contact, template, not_before=later))
    assert result.status == SubmitStatus.QUEUED
    queue = Queue(queue_name("smtp"), connection=delivery.redis, serializer=JSONSerializer)
    assert len(queue) == 0
    registry = queue.scheduled_job_registry
    (job_id,) = registry.get_job_ids()
    scheduled = registry.get_scheduled_time(job_id)
    assert abs((scheduled - later).total_seconds()) < 2


def test_an_unknown_template_is_an_error_not_a_skip(delivery: Runtime) -> None:
    (contact,) = add_contacts(delivery, 1)
    with pytest.raises(NotFoundError, match="template 999"):
        submit_send(delivery, _request(contact, 999))


def test_a_campaign_gates_every_recipient_and_counts_skips_by_reason(delivery: Runtime) -> None:
    active = add_contacts(delivery, 120, prefix="a")
    gone = add_contacts(delivery, 5, prefix="u", status=ContactStatus.UNSUBSCRIBED)
    bounced = add_contacts(delivery, 3, prefix="b", status=ContactStatus.BOUNCED)
    segment = add_segment(delivery, "everyone", active + gone + bounced)
    template = add_template(delivery)
    campaign = add_campaign(delivery, template, segment_id=segment)
    report = dispatch_campaign(delivery, campaign)
    assert report.audience == 128
    assert report.queued == 120
    assert dict(report.skipped) == {"unsubscribed": 5, "bounced": 3}
    # batch_size 50: 120 recipients in one page of 200 make 3 jobs.
    assert report.batches == 3
    queued = _queued_ids(delivery)
    assert sorted(queued) == sorted(campaign_message_id(campaign, c) for c in active)
    rows = statuses(delivery, campaign_id=campaign)
    assert sum(1 for s in rows.values() if s == "queued") == 120
    assert sum(1 for s in rows.values() if s == "skipped") == 8
    with delivery.session() as session:
        stored = session.get(Campaign, campaign)
        assert stored is not None
        assert stored.status == "sending"
        assert stored.template_version == 1
        assert stored.counts["dispatched"] is True


def test_without_a_segment_the_audience_is_every_active_contact(delivery: Runtime) -> None:
    add_contacts(delivery, 7)
    add_contacts(delivery, 2, prefix="x", status=ContactStatus.UNSUBSCRIBED)
    campaign = add_campaign(delivery, add_template(delivery))
    report = dispatch_campaign(delivery, campaign)
    assert (report.audience, report.queued) == (7, 7)


def test_an_interrupted_dispatch_resumes_without_queueing_anyone_twice(
    make_runtime: Any,
) -> None:
    runtime = make_runtime(batch_size=10)  # pages of 40 contacts
    contacts = add_contacts(runtime, 130)
    campaign = add_campaign(runtime, add_template(runtime))
    pages = 0

    def crash_after_two_pages(report: Any) -> None:
        nonlocal pages
        pages += 1
        if pages == 2:
            raise RuntimeError("dispatcher killed")

    with pytest.raises(RuntimeError):
        dispatch_campaign(runtime, campaign, progress=crash_after_two_pages)
    report = dispatch_campaign(runtime, campaign)
    assert report.done
    assert report.audience == 130
    assert report.queued == 130
    rows = statuses(runtime, campaign_id=campaign)
    assert len(rows) == 130
    assert set(rows) == {campaign_message_id(campaign, c) for c in contacts}
    with pytest.raises(ConflictError, match="dispatched already"):
        dispatch_campaign(runtime, campaign)


def test_experiment_variants_pick_their_template_version(delivery: Runtime) -> None:
    contacts = add_contacts(delivery, 200)
    template = add_template(delivery)
    with delivery.session() as session:
        session.add(
            TemplateVersion(
                template_id=template, version=2, subject="B {{ first_name }}", html="<p>b</p>"
            )
        )
        experiment = Experiment(
            name="subject test",
            holdout=0.1,
            variants=[
                {"name": "a", "weight": 0.5, "template_version": 1},
                {"name": "b", "weight": 0.5, "template_version": 2},
            ],
        )
        session.add(experiment)
        session.flush()
        experiment_id = experiment.id
    campaign = add_campaign(delivery, template, experiment_id=experiment_id)
    report = dispatch_campaign(delivery, campaign)
    from postwise.experiments.assignment import assign_variant

    expected = {
        c: assign_variant(experiment_id, c, {"a": 0.5, "b": 0.5}, holdout=0.1) for c in contacts
    }
    held_out = sum(1 for v in expected.values() if v is None)
    assert report.skipped.get("holdout", 0) == held_out
    assert report.queued == 200 - held_out
    for contact in contacts[:40]:
        row = ledger(delivery, campaign_message_id(campaign, contact))
        if expected[contact] is None:
            assert row.status == "skipped"
        else:
            assert row.variant == expected[contact]
            assert row.template_version == (1 if expected[contact] == "a" else 2)


def test_a_dispatch_that_died_after_writing_a_page_counts_it_once(make_runtime: Any) -> None:
    """The page's rows were written, its cursor not saved: the page is read again, written once."""
    runtime = make_runtime(batch_size=10)  # pages of 40 contacts
    add_contacts(runtime, 100)
    campaign = add_campaign(runtime, add_template(runtime))
    import postwise.delivery.dispatch as dispatch_module

    original = dispatch_module._Dispatcher._save
    saves = 0

    def die_before_the_second_save(self: Any, report: Any, *, cursor: int | None) -> None:
        nonlocal saves
        saves += 1
        if saves == 2:
            raise RuntimeError("dispatcher killed between the insert and the save")
        original(self, report, cursor=cursor)

    dispatch_module._Dispatcher._save = die_before_the_second_save  # type: ignore[method-assign]
    try:
        with pytest.raises(RuntimeError):
            dispatch_campaign(runtime, campaign)
    finally:
        dispatch_module._Dispatcher._save = original  # type: ignore[method-assign]
    assert len(statuses(runtime, campaign_id=campaign)) == 80
    report = dispatch_campaign(runtime, campaign)
    assert (report.audience, report.queued) == (100, 100)
    assert len(statuses(runtime, campaign_id=campaign)) == 100


def test_campaign_rows_get_a_due_by_time_so_a_lost_batch_is_rescued(make_runtime: Any) -> None:
    from postwise.delivery.recovery import requeue_overdue

    runtime = make_runtime(batch_size=10, delivery_lease_seconds=30)
    add_contacts(runtime, 15)
    campaign = add_campaign(runtime, add_template(runtime))
    dispatch_campaign(runtime, campaign)
    ids = sorted(statuses(runtime, campaign_id=campaign))
    row = ledger(runtime, ids[0])
    assert row.claimed_until is not None
    # The batch jobs are lost (a worker died between dequeuing and claiming them).
    Queue(queue_name("smtp"), connection=runtime.redis, serializer=JSONSerializer).empty()
    assert requeue_overdue(runtime) == 0
    later = datetime.now(UTC) + timedelta(seconds=31)
    assert requeue_overdue(runtime, now=later) == 15
    assert sorted(_queued_ids(runtime)) == ids


def test_a_dispatch_whose_process_died_is_resumed_by_the_sweeper(make_runtime: Any) -> None:
    from postwise.delivery.dispatch import dispatch_lock_key
    from postwise.delivery.recovery import resume_dispatches, stalled_dispatches
    from postwise.delivery.worker import drain

    runtime = make_runtime(batch_size=10)
    contacts = add_contacts(runtime, 130)
    campaign = add_campaign(runtime, add_template(runtime))

    def die(report: Any) -> None:
        raise RuntimeError("dispatcher killed")

    with pytest.raises(RuntimeError):
        dispatch_campaign(runtime, campaign, progress=die)
    # A killed process leaves its lock behind until it lapses: nothing is stalled before that.
    runtime.redis.set(dispatch_lock_key(campaign), "1", ex=20)
    assert stalled_dispatches(runtime) == []
    runtime.redis.delete(dispatch_lock_key(campaign))
    assert stalled_dispatches(runtime) == [campaign]
    assert resume_dispatches(runtime) == [campaign]
    assert resume_dispatches(runtime) == []  # queued once, not on every sweep
    drain(runtime)
    rows = statuses(runtime, campaign_id=campaign)
    assert set(rows) == {campaign_message_id(campaign, c) for c in contacts}
    assert set(rows.values()) == {"accepted"}
    with runtime.session() as session:
        stored = session.get(Campaign, campaign)
        assert stored is not None and stored.counts is not None
        assert stored.counts["dispatched"] and stored.counts["queued"] == 130
    assert stalled_dispatches(runtime) == []
