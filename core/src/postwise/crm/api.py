"""HTTP API of the CRM integration, under ``/v1/crm`` (API key required).

* ``GET /v1/crm``: the sync state of every configured CRM;
* ``GET /v1/crm/{system}``: one CRM's state (cursor, links, pending pushes, latest runs);
* ``POST /v1/crm/{system}/sync``: queue a poll (``{"full": true}`` re-reads every record),
  then an engagement push unless ``{"push": false}``, for a worker; answers 202 at once with
  ``job_id`` and ``status_url`` (vendor reads and their retry waits never run in a request);
* ``GET /v1/crm/{system}/sync/{job_id}``: the job's status (``queued``, ``started``,
  ``finished`` with the poll and push reports, ``failed`` with the reason).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from litestar import Controller, MediaType, Response, get, post
from rq import Queue
from rq.exceptions import NoSuchJobError
from rq.job import Job
from rq.serializers import JSONSerializer

from postwise.crm.connector import CrmUnavailableError
from postwise.crm.engagement import push_engagement
from postwise.crm.status import crm_status, record_failure, record_run
from postwise.crm.sync import LOCK_SECONDS, configured_systems, connector_for, poll
from postwise.runtime import Runtime
from postwise.server.errors import problem

__all__ = ["CrmController", "SyncRequest"]

#: The queue sync jobs go to: every ``postwise worker`` works it.
SYNC_QUEUE = "default"
#: Named by dotted path only (postwise.cli.crm_jobs imports this module).
SYNC_FUNC = "postwise.cli.crm_jobs.sync_job"
_RESULT_TTL = 86400


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

    @post("/{system:str}/sync", sync_to_thread=True, status_code=202, opt={"scope": "admin"})
    def sync(self, runtime: Runtime, system: str, data: SyncRequest | None = None) -> Response[Any]:
        """Queue a poll of the CRM, then an engagement push, for a worker."""
        connector_for(runtime, system)  # 404 for a CRM that is not configured
        request = data or SyncRequest()
        queue = Queue(SYNC_QUEUE, connection=runtime.redis, serializer=JSONSerializer)
        job = queue.enqueue(
            SYNC_FUNC,
            system,
            request.full,
            request.push,
            job_timeout=LOCK_SECONDS,
            result_ttl=_RESULT_TTL,
            failure_ttl=_RESULT_TTL,
            description=f"crm sync {system}",
        )
        url = f"/v1/crm/{system}/sync/{job.id}"
        return Response(
            {"job_id": job.id, "status": "queued", "status_url": url},
            status_code=202,
            media_type=MediaType.JSON,
            headers={"Location": url},
        )

    @get("/{system:str}/sync/{job_id:str}", sync_to_thread=True)
    def sync_status(self, runtime: Runtime, system: str, job_id: str) -> Response[Any]:
        """Where a queued sync got to."""
        try:
            job = Job.fetch(job_id, connection=runtime.redis, serializer=JSONSerializer)
        except (NoSuchJobError, ValueError):
            job = None
        if job is None or job.func_name != SYNC_FUNC or list(job.args or [])[:1] != [system]:
            return problem(404, f"no sync job {job_id!r} of CRM {system!r} (kept for a day)")
        found = job.get_status(refresh=True)
        status = str(getattr(found, "value", found) or "unknown")
        body: dict[str, Any] = {"job_id": job.id, "system": system, "status": status}
        if status == "finished":
            body["result"] = job.return_value()
        elif status == "failed":
            info = (job.exc_info or "").strip().splitlines()
            body["error"] = info[-1][:500] if info else "the job failed"
        return Response(body, media_type=MediaType.JSON)
