"""Periodic polling: every ``crm_sync_interval_seconds``, poll each configured CRM, then push
its engagement (``postwise crm run``).

Each round handles every CRM in turn; a CRM that cannot be reached, or whose poll is already
running elsewhere (another ``crm run``, or a sync triggered through the API), is reported and
skipped until the next round, never stopping the others. Several runners may be started for
availability: the per-CRM locks in Redis make them take turns rather than double the work.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from postwise.errors import ConflictError, PostwiseError

if TYPE_CHECKING:
    from postwise.runtime import Runtime

__all__ = ["run_forever", "run_round"]

log = logging.getLogger(__name__)


def run_round(runtime: Runtime) -> dict[str, dict[str, Any]]:
    """Poll and push every configured CRM once; per CRM its result or ``{"error": ...}``."""
    from postwise.crm.api import run_sync
    from postwise.crm.sync import configured_systems

    results: dict[str, dict[str, Any]] = {}
    for system in configured_systems(runtime):
        try:
            results[system] = run_sync(runtime, system, full=False, push=True)
        except ConflictError as exc:
            results[system] = {"skipped": str(exc)}
        except PostwiseError as exc:
            log.warning("crm %s: %s", system, exc)
            results[system] = {"error": str(exc)}
        except Exception as exc:  # one CRM's bug must not stop the others' sync
            log.exception("crm %s: sync failed", system)
            results[system] = {"error": f"{type(exc).__name__}: {exc}"}
    return results


def run_forever(
    runtime: Runtime,
    stop: threading.Event,
    *,
    interval: float | None = None,
    on_round: Callable[[dict[str, dict[str, Any]]], None] | None = None,
) -> int:
    """Run rounds every ``interval`` seconds (the setting by default) until ``stop`` is set.

    Returns how many rounds ran. ``on_round`` receives each round's results.
    """
    every = interval if interval is not None else runtime.settings.crm_sync_interval_seconds
    rounds = 0
    while not stop.is_set():
        results = run_round(runtime)
        rounds += 1
        if on_round is not None:
            on_round(results)
        stop.wait(every)
    return rounds
