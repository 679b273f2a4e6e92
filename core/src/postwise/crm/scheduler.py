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
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from postwise.crm.connector import CrmLimitReachedError
from postwise.errors import ConflictError, PostwiseError

if TYPE_CHECKING:
    from postwise.runtime import Runtime

__all__ = ["pause", "paused_until", "run_forever", "run_round"]

log = logging.getLogger(__name__)


def run_round(runtime: Runtime) -> dict[str, dict[str, Any]]:
    """Poll and push every configured CRM once; per CRM its result or ``{"error": ...}``."""
    from postwise.crm.api import run_sync
    from postwise.crm.sync import configured_systems

    results: dict[str, dict[str, Any]] = {}
    for system in configured_systems(runtime):
        until = paused_until(runtime, system)
        if until is not None:
            results[system] = {"paused_until": until.isoformat()}
            continue
        try:
            results[system] = run_sync(runtime, system, full=False, push=True)
        except ConflictError as exc:
            results[system] = {"skipped": str(exc)}
        except CrmLimitReachedError as exc:
            pause(runtime, system, exc.until)
            # The alert: an operator must know the CRM stopped syncing for hours.
            log.error(
                "ALERT crm %s: daily API limit reached; paused until %s (%s)",
                system,
                exc.until.isoformat(),
                exc,
            )
            results[system] = {"error": str(exc), "paused_until": exc.until.isoformat()}
        except PostwiseError as exc:
            log.warning("crm %s: %s", system, exc)
            results[system] = {"error": str(exc)}
        except Exception as exc:  # one CRM's bug must not stop the others' sync
            log.exception("crm %s: sync failed", system)
            results[system] = {"error": f"{type(exc).__name__}: {exc}"}
    return results


def _pause_key(system: str) -> str:
    return f"postwise:crm:{system}:paused_until"


def pause(runtime: Runtime, system: str, until: datetime) -> None:
    """Skip ``system`` in ``crm run`` rounds until ``until`` (its daily API limit resets)."""
    seconds = max(1, int((until - datetime.now(UTC)).total_seconds()) + 1)
    runtime.redis.set(_pause_key(system), until.isoformat(), ex=seconds)


def paused_until(runtime: Runtime, system: str) -> datetime | None:
    """When ``system``'s pause ends, or ``None`` when it is not paused."""
    raw = runtime.redis.get(_pause_key(system))
    if not raw:
        return None
    until = datetime.fromisoformat(raw.decode() if isinstance(raw, bytes) else str(raw))
    return until if until > datetime.now(UTC) else None


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
