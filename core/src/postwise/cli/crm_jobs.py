"""The RQ entry points of the CRM integration: what a worker runs for a job the API enqueued.

``POST /v1/crm/{system}/sync`` answers at once with the job's id and status URL; a
``postwise worker`` (which works the ``default`` queue) runs the poll and push here, with its
retry sleeps, outside any HTTP request. It lives with the entry points (the tooling layer,
like ``postwise worker`` that runs it) because it runs with the worker's bound runtime
(:mod:`postwise.delivery.jobs`), which the crm package, a layer below delivery, may not import.
"""

from __future__ import annotations

import logging
from typing import Any

from postwise.crm.api import run_sync
from postwise.delivery.jobs import current_runtime
from postwise.errors import ConflictError

__all__ = ["sync_job"]

log = logging.getLogger(__name__)


def sync_job(system: str, full: bool = False, push: bool = True) -> dict[str, Any]:
    """The RQ job: poll ``system`` (and push). A sync already running is not run twice; a CRM
    that cannot be read fails the job with the reason (recorded for ``crm status`` too)."""
    try:
        return run_sync(current_runtime(), system, full=full, push=push)
    except ConflictError as exc:
        log.info("crm %s: sync job not run: %s", system, exc)
        return {"system": system, "not_run": str(exc)}
