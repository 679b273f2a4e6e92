"""The rollout job: delivery dispatches the campaign an experiment's rollout prepared.

:mod:`postwise.experiments.rollout` decides what to roll out (the held-back audience, the winning
arm's template version) and names this job when it queues it; delivery, which sits above
experiments, carries it out with the same dispatch every campaign goes through.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from postwise.delivery.campaigns import get_campaign
from postwise.delivery.dispatch import dispatch_campaign
from postwise.delivery.jobs import current_runtime
from postwise.errors import ConflictError
from postwise.experiments.rollout import finish_rollout, prepare_rollout

if TYPE_CHECKING:
    from postwise.runtime import Runtime

__all__ = ["rollout_job", "run_rollout"]

log = logging.getLogger(__name__)


def run_rollout(runtime: Runtime, experiment_id: int) -> dict[str, Any]:
    """Carry out the queued rollout of ``experiment_id`` in this process; returns its record.

    A rollout already done is returned as it is; one interrupted is finished (dispatch resumes
    where it stopped).
    """
    plan = prepare_rollout(runtime, experiment_id)
    if plan.get("status") != "dispatching":
        return plan
    campaign_id = int(plan["campaign_id"])
    try:
        dispatch = dispatch_campaign(runtime, campaign_id).to_dict()
    except ConflictError:
        with runtime.session() as session:
            campaign = get_campaign(session, campaign_id)
            if not (campaign.counts or {}).get("dispatched"):
                raise  # another process is dispatching it: RQ retries this job later
            dispatch = {"campaign_id": campaign_id, "done": True, **(campaign.counts or {})}
    log.info(
        "experiment %s: rolled out %s to %s held-back contacts (campaign %s)",
        experiment_id,
        plan["variant"],
        plan.get("contacts"),
        campaign_id,
    )
    return finish_rollout(runtime, experiment_id, dispatch)


def rollout_job(experiment_id: int) -> dict[str, Any]:
    """The RQ job: :func:`run_rollout` with the worker's runtime."""
    return run_rollout(current_runtime(), experiment_id)
