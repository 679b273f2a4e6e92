"""The RQ entry points of delivery: what a worker runs for a job :mod:`.queue` enqueued.

This is the top of the delivery package: it imports the modules that do the work (batch,
dispatch) and nothing imports it back except the worker. Enqueueing lives in
:mod:`postwise.delivery.queue`, which names these functions only by their dotted path.

The worker process binds its :class:`~postwise.runtime.Runtime` once (:func:`bind_runtime`);
jobs run with it, sharing its connections, template cache and SMTP pool.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from postwise.delivery.batch import deliver
from postwise.delivery.dispatch import dispatch_campaign
from postwise.errors import ConflictError
from postwise.runtime import Runtime

__all__ = ["bind_runtime", "current_runtime", "deliver_batch", "dispatch_job"]

#: The runtime jobs of this process use, under the key "runtime".
_binding: dict[str, Runtime] = {}
_binding_lock = threading.Lock()

log = logging.getLogger(__name__)


def bind_runtime(runtime: Runtime | None) -> None:
    """Make ``runtime`` the one jobs in this process use (``None`` unbinds)."""
    with _binding_lock:
        if runtime is None:
            _binding.pop("runtime", None)
        else:
            _binding["runtime"] = runtime


def current_runtime() -> Runtime:
    """The bound runtime; a plain ``rq worker`` process builds one from settings once."""
    with _binding_lock:
        runtime = _binding.get("runtime")
        if runtime is None:
            runtime = _binding["runtime"] = Runtime()
        return runtime


def deliver_batch(message_ids: list[str], provider: str | None = None) -> dict[str, int]:
    """The RQ job: deliver the messages ``message_ids`` that still wait for an attempt."""
    return deliver(current_runtime(), message_ids)


def dispatch_job(campaign_id: int) -> dict[str, Any]:
    """The RQ job: dispatch (or resume dispatching) campaign ``campaign_id``.

    A campaign another process is dispatching, or that is dispatched already, is left alone:
    the sweeper may queue a stalled dispatch again while a late job for it is still waiting.
    """
    try:
        return dispatch_campaign(current_runtime(), campaign_id).to_dict()
    except ConflictError as exc:
        log.info("dispatch of campaign %d not run: %s", campaign_id, exc)
        return {"campaign_id": campaign_id, "not_run": str(exc)}
