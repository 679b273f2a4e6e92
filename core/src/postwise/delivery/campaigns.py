"""Campaigns as stored: create one, and read where its sending stands.

A campaign is a template (its version pinned when the send starts), an audience (a segment, or
every active contact) and optionally an experiment. :func:`postwise.delivery.dispatch.
dispatch_campaign` sends it; :func:`campaign_status` reports the dispatch counters and the
ledger's counts by status, and marks the campaign ``sent`` once every message is final.
"""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from postwise.contacts.segments import get_segment
from postwise.db.models import (
    Campaign,
    CampaignStatus,
    Experiment,
    Message,
    MessageStatus,
    Segment,
    iso,
    utcnow,
)
from postwise.delivery.ledger import PENDING_STATES
from postwise.delivery.templates import get_template, get_version
from postwise.errors import ConflictError, NotFoundError, ValidationError

__all__ = [
    "campaign_status",
    "check_sendable",
    "create_campaign",
    "get_campaign",
    "list_campaigns",
]

_UNFINISHED = (*PENDING_STATES, MessageStatus.SENDING.value)


def create_campaign(
    session: Session,
    *,
    name: str,
    template: int | str,
    template_version: int | None = None,
    segment: int | str | None = None,
    provider: str | None = None,
    experiment_id: int | None = None,
) -> Campaign:
    """A draft campaign; ``segment`` None means every active contact."""

    name = name.strip()
    if not name or len(name) > 200:
        raise ValidationError("must be 1-200 characters", field="name")
    stored = get_template(session, template)
    assert stored.id is not None
    if template_version is not None:
        get_version(session, stored.id, template_version)
    segment_row: Segment | None = get_segment(session, segment) if segment is not None else None
    if experiment_id is not None and session.get(Experiment, experiment_id) is None:
        raise NotFoundError(f"experiment {experiment_id} does not exist")
    campaign = Campaign(
        name=name,
        template_id=stored.id,
        template_version=template_version,
        segment_id=segment_row.id if segment_row is not None else None,
        provider=provider,
        experiment_id=experiment_id,
    )
    session.add(campaign)
    session.flush()
    return campaign


def get_campaign(session: Session, campaign_id: int) -> Campaign:
    campaign = session.get(Campaign, campaign_id)
    if campaign is None:
        raise NotFoundError(f"no campaign {campaign_id}")
    return campaign


def check_sendable(campaign: Campaign) -> None:
    """Raise ConflictError unless ``campaign`` can be (or is being) dispatched."""
    if campaign.status not in (CampaignStatus.DRAFT, CampaignStatus.SENDING):
        raise ConflictError(
            f"campaign {campaign.id} is {campaign.status}; only a draft (or an interrupted "
            "send) can be sent"
        )
    if (campaign.counts or {}).get("dispatched"):
        raise ConflictError(f"campaign {campaign.id} has been dispatched already")


def list_campaigns(session: Session, *, limit: int = 100) -> list[Campaign]:
    """The newest campaigns first."""
    return list(session.exec(select(Campaign).order_by(col(Campaign.id).desc()).limit(limit)))


def campaign_status(
    session: Session, campaign_id: int, *, stalled: list[str] | None = None
) -> dict[str, Any]:
    """The campaign, its dispatch counters and its messages counted by ledger status.

    ``stalled`` is what :func:`postwise.delivery.recovery.stalls` found stuck for the campaign,
    shown as ``stalled`` (empty: nothing is).
    """
    campaign = get_campaign(session, campaign_id)
    rows = session.execute(
        sa.select(col(Message.status), sa.func.count())
        .where(col(Message.campaign_id) == campaign_id)
        .group_by(col(Message.status))
    ).all()
    by_status = {str(status): int(count) for status, count in rows}
    counts = dict(campaign.counts or {})
    unfinished = sum(by_status.get(s, 0) for s in _UNFINISHED)
    if campaign.status == CampaignStatus.SENDING and counts.get("dispatched") and unfinished == 0:
        campaign.status = CampaignStatus.SENT
        campaign.finished_at = utcnow()
        session.add(campaign)
        session.flush()
    return {
        "id": campaign.id,
        "name": campaign.name,
        "status": campaign.status,
        "template_id": campaign.template_id,
        "template_version": campaign.template_version,
        "segment_id": campaign.segment_id,
        "experiment_id": campaign.experiment_id,
        "provider": campaign.provider,
        "created_at": iso(campaign.created_at),
        "started_at": iso(campaign.started_at),
        "finished_at": iso(campaign.finished_at),
        "dispatch": {
            "audience": counts.get("audience", 0),
            "queued": counts.get("queued", 0),
            "skipped": counts.get("skipped", {}),
            "batches": counts.get("batches", 0),
            "done": bool(counts.get("dispatched")),
            "seconds": counts.get("dispatch_seconds"),
        },
        "messages": by_status,
        "unfinished": unfinished,
        "stalled": list(stalled or []),
    }
