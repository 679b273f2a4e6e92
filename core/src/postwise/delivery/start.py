"""Starting a campaign's send: the one place the API, the CLI and the web interface go through."""

from __future__ import annotations

from typing import Any

from postwise.delivery.atomic import supports_lua
from postwise.delivery.campaigns import check_sendable, get_campaign
from postwise.delivery.dispatch import dispatch_campaign
from postwise.delivery.queue import enqueue_dispatch
from postwise.runtime import Runtime

__all__ = ["start_campaign_send"]


def start_campaign_send(runtime: Runtime, campaign_id: int) -> dict[str, Any]:
    """Start sending: workers stream the audience and deliver it.

    With the embedded Redis stand-in there are no separate workers, so the audience is
    dispatched here (its messages wait for ``postwise campaigns send``).
    """
    with runtime.session() as session:
        check_sendable(get_campaign(session, campaign_id))
    if supports_lua(runtime.redis):
        job_id = enqueue_dispatch(runtime, campaign_id)
        return {"campaign_id": campaign_id, "dispatch_job": job_id, "status": "dispatching"}
    report = dispatch_campaign(runtime, campaign_id)
    return {"campaign_id": campaign_id, "status": "dispatched", **report.to_dict()}
