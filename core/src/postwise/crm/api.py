"""HTTP API of the CRM integration, under ``/v1/crm`` (API key required).

* ``GET /v1/crm``: the sync state of every configured CRM;
* ``GET /v1/crm/{system}``: one CRM's state (cursor, links, pending pushes, latest runs);
* ``POST /v1/crm/{system}/sync``: poll now (``{"full": true}`` re-reads every record), then
  push engagement unless ``{"push": false}``. 409 while a poll or push of that CRM runs, 503
  when the CRM cannot be reached (the cursor stays, the next poll repeats the window).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar import Controller, MediaType, Response, get, post

from postwise.crm.connector import CrmUnavailableError
from postwise.crm.engagement import push_engagement
from postwise.crm.status import crm_status, record_failure, record_run
from postwise.crm.sync import configured_systems, connector_for, poll
from postwise.runtime import Runtime
from postwise.server.errors import problem

__all__ = ["CrmController", "SyncRequest"]


@dataclass
class SyncRequest:
    """Options of a sync triggered through the API."""

    #: Re-read every record instead of those changed since the last poll.
    full: bool = False
    #: Push engagement after the poll.
    push: bool = True


def run_sync(runtime: Runtime, system: str, *, full: bool, push: bool) -> dict[str, Any]:
    """Poll ``system`` (and push); the outcome of each step is recorded for ``status``."""
    connector_for(runtime, system)
    result: dict[str, Any] = {"system": system}
    try:
        report = poll(runtime, system, full=full)
    except CrmUnavailableError as exc:
        record_failure(runtime, system, "poll", str(exc))
        raise
    record_run(runtime, system, "poll", report.to_dict())
    result["poll"] = report.to_dict()
    if push:
        try:
            pushed = push_engagement(runtime, system)
        except CrmUnavailableError as exc:
            record_failure(runtime, system, "push", str(exc))
            raise
        record_run(runtime, system, "push", pushed.to_dict())
        result["push"] = pushed.to_dict()
    return result


class CrmController(Controller):
    """CRM sync state and manual syncs."""

    path = "/v1/crm"
    tags = ["crm"]

    @get("/", sync_to_thread=True)
    def list_systems(self, runtime: Runtime) -> dict[str, Any]:
        """The sync state of every configured CRM."""
        return {"systems": [crm_status(runtime, s) for s in configured_systems(runtime)]}

    @get("/{system:str}", sync_to_thread=True)
    def status(self, runtime: Runtime, system: str) -> dict[str, Any]:
        """One CRM's sync state."""
        connector_for(runtime, system)
        return crm_status(runtime, system)

    @post("/{system:str}/sync", sync_to_thread=True, status_code=200, opt={"scope": "admin"})
    def sync(self, runtime: Runtime, system: str, data: SyncRequest | None = None) -> Response[Any]:
        """Poll the CRM now, then push engagement."""
        request = data or SyncRequest()
        try:
            result = run_sync(runtime, system, full=request.full, push=request.push)
        except CrmUnavailableError as exc:
            return problem(503, str(exc), headers={"Retry-After": "60"})
        return Response(result, media_type=MediaType.JSON)
