"""``postwise run``: every long-running process of one machine, supervised.

The supervisor starts each process as a child (``python -m postwise.cli ...``), restarts any that
dies (after 1 s, doubling up to 30 s while it keeps dying young, back to 1 s once it has lived a
minute), and on SIGTERM or SIGINT asks every child to stop with SIGTERM, waits up to the grace
period, then kills what is left. Children write their own logs to the supervisor's standard
output and error; each beats into Redis, so ``/health`` shows them.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final

__all__ = ["Child", "ProcessSpec", "Supervisor"]

log = logging.getLogger(__name__)

_FIRST_BACKOFF: Final = 1.0
_MAX_BACKOFF: Final = 30.0
#: A child that lived this long before dying restarts at once (its backoff resets).
_HEALTHY_AFTER: Final = 60.0


@dataclass(frozen=True, slots=True)
class ProcessSpec:
    """One supervised process: a name for logs and the ``postwise`` arguments that run it."""

    name: str
    args: tuple[str, ...]
    env: Mapping[str, str] | None = None


@dataclass
class Child:
    """A supervised process and its restart state."""

    spec: ProcessSpec
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    backoff: float = _FIRST_BACKOFF
    restart_at: float | None = None
    restarts: int = 0

    @property
    def pid(self) -> int | None:
        return None if self.process is None else self.process.pid


@dataclass
class Supervisor:
    """Runs ``specs`` until :meth:`stop` (or a signal), restarting what dies."""

    specs: Sequence[ProcessSpec]
    grace_seconds: float = 30.0
    poll_seconds: float = 0.5
    env: Mapping[str, str] | None = None
    children: list[Child] = field(default_factory=list)
    _stopping: bool = False

    def start(self) -> None:
        self.children = [Child(spec) for spec in self.specs]
        for child in self.children:
            self._spawn(child)

    def _spawn(self, child: Child) -> None:
        command = [sys.executable, "-m", "postwise.cli", *child.spec.args]
        env = {**(self.env or os.environ), **(child.spec.env or {})}
        child.process = subprocess.Popen(command, env=env)  # noqa: S603 - our own command
        child.started_at = time.monotonic()
        child.restart_at = None
        log.info(
            "started %s (pid %d): postwise %s",
            child.spec.name,
            child.process.pid,
            " ".join(child.spec.args),
        )

    def poll(self) -> None:
        """Notice children that died and restart those whose backoff has passed."""
        now = time.monotonic()
        for child in self.children:
            if child.process is not None and child.process.poll() is not None:
                code = child.process.returncode
                lived = now - child.started_at
                child.backoff = (
                    _FIRST_BACKOFF
                    if lived >= _HEALTHY_AFTER
                    else min(child.backoff * 2, _MAX_BACKOFF)
                    if child.restarts
                    else _FIRST_BACKOFF
                )
                child.restart_at = now + child.backoff
                child.process = None
                log.warning(
                    "%s exited with status %s after %.0f s; restarting in %.0f s",
                    child.spec.name,
                    code,
                    lived,
                    child.backoff,
                )
            if child.process is None and child.restart_at is not None and now >= child.restart_at:
                child.restarts += 1
                self._spawn(child)

    def run(self) -> int:
        """Start, supervise until SIGTERM/SIGINT, stop the children; the exit status."""
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            self.start()
            while not self._stopping:
                self.poll()
                time.sleep(self.poll_seconds)
        finally:
            self.stop()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0

    def _on_signal(self, signum: int, _frame: object) -> None:
        log.info("received %s: stopping every process", signal.Signals(signum).name)
        self._stopping = True

    def stop(self) -> None:
        """SIGTERM to every child, wait up to the grace period, SIGKILL the rest."""
        self._stopping = True
        running = [c for c in self.children if c.process is not None and c.process.poll() is None]
        for child in running:
            assert child.process is not None
            child.process.terminate()
        deadline = time.monotonic() + self.grace_seconds
        for child in running:
            assert child.process is not None
            try:
                child.process.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.warning(
                    "%s did not stop within %.0f s; killing it",
                    child.spec.name,
                    self.grace_seconds,
                )
                child.process.kill()
                child.process.wait()
        for child in self.children:
            child.process = None
