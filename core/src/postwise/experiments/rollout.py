"""Automatic rollout: the part of a campaign's audience held back at send gets the winner.

An experiment on a campaign may set ``rollout_fraction`` (say 0.8): at send time delivery holds
that share of the audience back, with the holdout proper, through the experiment's held-back
share (``experiment.holdout``), so the test runs on the rest. The ledger records every
held-back contact (status ``skipped``, reason ``holdout``). Once the gate declares a winner,
or someone stops the experiment and ships a variant, the rollout:

1. collects the held-back contacts of the experiment's campaigns, leaving out the holdout proper
   (the lowest buckets of the assignment hash, below ``options.holdout``), into a static
   segment ``experiment <id> rollout``;
2. creates a campaign of that segment with the winning variant's template version (read from
   the ledger, so it is exactly what the winning arm was sent) and no experiment, so its
   messages never count as exposures;
3. has delivery dispatch it (:mod:`postwise.delivery.rollouts`, the job): the compliance gate,
   the frequency cap, the ledger and the send queues treat it like any campaign, so a contact
   who unsubscribed since the test is not mailed.

The look that declares the winner only marks the rollout ``queued`` (in
``experiment.state["rollout"]``) and enqueues delivery's rollout job (:data:`ROLLOUT_FUNC`,
named, not imported: delivery sits above experiments) on the workers' ``default`` queue. Each
step is idempotent, so a retried or repeated job finishes the same rollout and never mails
anyone twice (the segment and the campaign are reused, dispatch resumes or refuses to dispatch
twice). While a campaign of the experiment is still dispatching, its held-back audience is not
final: the rollout waits (``status: waiting``) and the next look tries again.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from rq import Queue, Retry
from rq.serializers import JSONSerializer
from sqlalchemy.engine import Connection
from sqlmodel import Session, col, select

from postwise.db.models import (
    Campaign,
    Experiment,
    Message,
    MessageStatus,
    Segment,
    SegmentMember,
    Template,
    utcnow,
)
from postwise.errors import ConflictError, NotFoundError, ValidationError
from postwise.experiments.arms import HOLDOUT
from postwise.experiments.assignment import VariantAssigner

if TYPE_CHECKING:
    from postwise.runtime import Runtime

__all__ = [
    "ROLLOUT_FUNC",
    "enqueue_rollout",
    "fill_reserve",
    "finish_rollout",
    "prepare_rollout",
    "request_rollout",
]

log = logging.getLogger(__name__)

#: The job that carries a rollout out. It lives in delivery (which sits above experiments and
#: dispatches the rollout campaign); experiments names it, it does not import it.
ROLLOUT_FUNC = "postwise.delivery.rollouts.rollout_job"
#: Held-back contacts read (and segment members written) per statement.
PAGE = 5000
_SPACE = 1 << 64
_JOB_TIMEOUT = 6 * 3600

_MESSAGE: sa.Table = Message.__table__  # type: ignore[attr-defined]
_MEMBER: sa.Table = SegmentMember.__table__  # type: ignore[attr-defined]


def _campaigns(session: Session, experiment_id: int) -> list[Campaign]:
    return list(
        session.exec(
            select(Campaign)
            .where(Campaign.experiment_id == experiment_id)
            .order_by(col(Campaign.id))
        )
    )


def request_rollout(session: Session, experiment: Experiment, *, ship: str | None = None) -> bool:
    """Mark the rollout queued when it is due; True when the caller must :func:`enqueue_rollout`.

    Due means: the experiment has a ``rollout_fraction``, a variant to roll out (the declared
    winner, else ``ship``), no rollout yet, and every campaign of the experiment finished
    dispatching. Runs inside the look's transaction; enqueue only after it commits.
    """
    fraction = (experiment.options or {}).get("rollout_fraction")
    if ship is not None and not fraction:
        raise ValidationError(
            "nothing to ship: this experiment holds nobody back (it has no rollout_fraction)",
            field="ship",
        )
    variant = experiment.winner or ship
    state = dict(experiment.state or {})
    current = state.get("rollout") or {}
    if not fraction or variant is None or current.get("status") not in (None, "waiting"):
        return False
    assert experiment.id is not None
    campaigns = _campaigns(session, experiment.id)
    unfinished = [c.id for c in campaigns if not (c.counts or {}).get("dispatched")]
    reason = "winner" if experiment.winner else "shipped"
    if not campaigns or unfinished:
        detail = (
            f"campaign {', '.join(map(str, unfinished))} is still dispatching"
            if unfinished
            else "no campaign has sent this experiment yet"
        )
        state["rollout"] = {"variant": variant, "reason": reason, "status": "waiting"}
        state["rollout"]["detail"] = detail + "; the next look tries again"
        experiment.state = state
        return False
    state["rollout"] = {
        "variant": variant,
        "reason": reason,
        "status": "queued",
        "requested_at": utcnow().isoformat(),
    }
    experiment.state = state
    return True


def enqueue_rollout(runtime: Runtime, experiment_id: int) -> str:
    """Queue :func:`rollout_job` for the workers; returns the job id.

    If Redis refuses, the rollout goes back to ``waiting`` so that the next look queues it again.
    """
    try:
        # RQ's default queue, the one delivery's dispatch jobs use.
        queue = Queue(connection=runtime.redis, serializer=JSONSerializer)
        job = queue.enqueue(
            ROLLOUT_FUNC,
            experiment_id,
            job_timeout=_JOB_TIMEOUT,
            result_ttl=3600,
            failure_ttl=7 * 86400,
            retry=Retry(max=3, interval=[10, 60, 300]),
            description=f"roll out experiment {experiment_id}",
        )
    except Exception as exc:
        with runtime.session() as session:
            experiment = session.get(Experiment, experiment_id)
            if experiment is not None:
                state = dict(experiment.state or {})
                rollout = dict(state.get("rollout") or {})
                rollout.update(status="waiting", detail=f"could not be queued: {exc}")
                state["rollout"] = rollout
                experiment.state = state
                session.add(experiment)
        raise
    return str(job.id)


def fill_reserve(
    connection: Connection, experiment: Experiment, campaign_ids: Sequence[int], segment_id: int
) -> int:
    """Add the contacts held back for the rollout by ``campaign_ids`` to the segment.

    The holdout proper is left out. Idempotent: members already there stay once. Returns how
    many contacts the reserve has.
    """
    assert experiment.id is not None
    # Any assigner of this experiment gives the same bucket; the holdout proper is the lowest
    # ``options.holdout`` share of them, the rollout reserve the rest of the held-back share.
    assigner = VariantAssigner(experiment.id, {"_": 1.0})
    floor = round(float((experiment.options or {}).get("holdout") or 0.0) * _SPACE)
    held_back = [
        _MESSAGE.c.campaign_id.in_(list(campaign_ids)),
        _MESSAGE.c.experiment_id == experiment.id,
        _MESSAGE.c.status == MessageStatus.SKIPPED.value,
        _MESSAGE.c.last_error == HOLDOUT,
        _MESSAGE.c.contact_id.is_not(None),
    ]
    add: sa.Insert
    if connection.dialect.name == "postgresql":
        from sqlalchemy.dialects import postgresql

        add = postgresql.insert(_MEMBER).on_conflict_do_nothing()
    else:
        from sqlalchemy.dialects import sqlite

        add = sqlite.insert(_MEMBER).on_conflict_do_nothing()
    total, last = 0, 0
    while True:
        page = list(
            connection.execute(
                sa.select(_MESSAGE.c.contact_id)
                .where(*held_back, _MESSAGE.c.contact_id > last)
                .distinct()
                .order_by(_MESSAGE.c.contact_id)
                .limit(PAGE)
            ).scalars()
        )
        if not page:
            return total
        rows = [
            {"segment_id": segment_id, "contact_id": c} for c in page if assigner.bucket(c) >= floor
        ]
        if rows:
            connection.execute(add, rows)
        total += len(rows)
        last = page[-1]


def _winning_arm(
    session: Session, experiment: Experiment, variant: str, campaign: Campaign
) -> tuple[int, int]:
    """The template and version the arm was sent with (the ledger's, else the definition's)."""
    sent = session.execute(
        sa.select(_MESSAGE.c.template_id, _MESSAGE.c.template_version)
        .where(
            _MESSAGE.c.experiment_id == experiment.id,
            _MESSAGE.c.variant == variant,
            _MESSAGE.c.template_id.is_not(None),
            _MESSAGE.c.template_version.is_not(None),
        )
        .limit(1)
    ).first()
    if sent is not None:
        return int(sent[0]), int(sent[1])
    spec = next(v for v in experiment.variants if v["name"] == variant)
    if spec.get("template_id") is None:
        assert campaign.template_version is not None  # pinned when its dispatch started
        return campaign.template_id, campaign.template_version
    version = spec.get("template_version")
    if version is None:
        template = session.get(Template, spec["template_id"])
        if template is None:
            raise NotFoundError(f"template {spec['template_id']} of variant {variant} is gone")
        version = template.current_version
    return int(spec["template_id"]), int(version)


def _list_purpose(session: Session, campaigns: Sequence[Campaign]) -> str | None:
    """The consent purpose the campaigns' lists require; ConflictError if they differ."""
    purposes = set()
    for campaign in campaigns:
        segment = session.get(Segment, campaign.segment_id) if campaign.segment_id else None
        purposes.add(segment.consent_purpose if segment is not None else None)
    if len(purposes) > 1:
        named = ", ".join(sorted(repr(p) if p else "none" for p in purposes))
        raise ConflictError(
            f"the experiment's campaigns send to lists that need different consent ({named}); "
            "one rollout cannot honour them all: roll out per list by hand"
        )
    return purposes.pop() if purposes else None


def prepare_rollout(runtime: Runtime, experiment_id: int) -> dict[str, Any]:
    """Steps 1 and 2: the segment and the campaign, recorded in the experiment's state.

    Returns the rollout record; its ``status`` is ``dispatching`` (with ``campaign_id``) when
    delivery should dispatch the rollout campaign now.
    """
    with runtime.session() as session:
        experiment = session.exec(
            select(Experiment).where(Experiment.id == experiment_id).with_for_update()
        ).first()
        if experiment is None:
            raise NotFoundError(f"no experiment {experiment_id}")
        state = dict(experiment.state or {})
        plan = dict(state.get("rollout") or {})
        if plan.get("status") not in ("queued", "dispatching"):
            return plan
        variant = str(plan["variant"])
        campaigns = _campaigns(session, experiment_id)
        if not campaigns or any(not (c.counts or {}).get("dispatched") for c in campaigns):
            raise ConflictError(
                f"experiment {experiment_id}: its campaigns have not all finished dispatching, "
                "so the held-back audience is not final yet"
            )
        if plan.get("segment_id") is None:
            name = f"experiment {experiment_id} rollout"
            if session.exec(select(Segment).where(Segment.name == name)).first() is not None:
                raise ConflictError(
                    f"a segment called {name!r} exists but is not this rollout's; rename it"
                )
            # The rollout mails the lists the experiment's campaigns mailed: it needs the
            # consent they need.
            segment = Segment(
                name=name, kind="static", consent_purpose=_list_purpose(session, campaigns)
            )
            session.add(segment)
            session.flush()
            plan["segment_id"] = segment.id
        else:
            # A rollout started by an earlier version made its segment without the purpose.
            existing = session.get(Segment, int(plan["segment_id"]))
            if existing is not None and existing.consent_purpose is None:
                existing.consent_purpose = _list_purpose(session, campaigns)
                session.add(existing)
        reserved = fill_reserve(
            session.connection(),
            experiment,
            [c.id for c in campaigns if c.id is not None],
            int(plan["segment_id"]),
        )
        if plan.get("campaign_id") is None:
            first = campaigns[0]
            template_id, version = _winning_arm(session, experiment, variant, first)
            rollout = Campaign(
                name=f"{experiment.name}: rollout of {variant}"[:200],
                template_id=template_id,
                template_version=version,
                segment_id=int(plan["segment_id"]),
                provider=first.provider,
            )
            session.add(rollout)
            session.flush()
            plan["campaign_id"] = rollout.id
        plan.update(status="dispatching", contacts=reserved)
        state["rollout"] = plan
        experiment.state = state
        session.add(experiment)
    return plan


def finish_rollout(
    runtime: Runtime, experiment_id: int, dispatch: dict[str, Any]
) -> dict[str, Any]:
    """Record the rollout as done with delivery's dispatch report; returns the record."""
    with runtime.session() as session:
        experiment = session.get(Experiment, experiment_id)
        assert experiment is not None
        state = dict(experiment.state or {})
        plan = dict(state.get("rollout") or {})
        plan.update(status="done", dispatch=dispatch, finished_at=utcnow().isoformat())
        state["rollout"] = plan
        experiment.state = state
        session.add(experiment)
    return plan
