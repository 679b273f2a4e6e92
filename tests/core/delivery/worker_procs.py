"""Real ``postwise worker`` processes for fault tests: started, killed, stopped, read back."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from postwise.settings import Settings
from postwise.testing.smtp import FaultySmtpServer

LEDGER_ID = re.compile(rb"^X-Postwise-Message-Id: (\w+)", re.M)


def worker_env(settings: Settings, smtp_port: int, **extra: str) -> dict[str, str]:
    """The environment of a worker process using ``settings``' database and Redis."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("POSTWISE_")}
    env.update(
        POSTWISE_DATA_DIR=str(settings.data_dir),
        POSTWISE_DATABASE_URL=settings.resolved_database_url,
        POSTWISE_REDIS_URL=settings.redis_url,
        POSTWISE_SECRET_KEY=settings.secret_key.get_secret_value(),
        POSTWISE_SMTP_HOST="127.0.0.1",
        POSTWISE_SMTP_PORT=str(smtp_port),
        POSTWISE_SMTP_STARTTLS="off",
        POSTWISE_FREQUENCY_CAP="off",
        POSTWISE_LOG_LEVEL="WARNING",
        POSTWISE_MODE="development",
        POSTWISE_BATCH_SIZE=str(settings.batch_size),
        POSTWISE_RETRY_BASE_SECONDS=str(settings.retry_base_seconds),
        POSTWISE_RETRY_MAX_SECONDS=str(settings.retry_max_seconds),
        POSTWISE_SMTP_TIMEOUT=str(settings.smtp_timeout),
    )
    env.update(extra)
    return env


def start_worker(
    env: dict[str, str],
    cwd: Path,
    *,
    burst: bool = False,
    log: Path | None = None,
    name: str | None = None,
) -> subprocess.Popen[bytes]:
    """A ``postwise worker`` process (its log appended to ``log``, else discarded)."""
    args = ["worker", "--burst"] if burst else ["worker"]
    if name is not None:
        args += ["--name", name]
    code = f"from postwise.cli import main; main({args!r})"
    stderr: Any = subprocess.DEVNULL
    if log is not None:
        stderr = log.open("ab")
    return subprocess.Popen(
        [sys.executable, "-c", code],
        env=env,
        cwd=cwd,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
    )


def wait_for(predicate: Callable[[], bool], timeout: float, step: float = 0.05) -> bool:
    """Poll ``predicate`` until it holds or ``timeout`` seconds passed."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def received(server: FaultySmtpServer) -> Counter[str]:
    """How many times the server accepted each ledger message id."""
    return Counter(
        match.group(1).decode()
        for message in server.accepted
        if (match := LEDGER_ID.search(message.content))
    )


def stop_all(processes: Iterable[subprocess.Popen[bytes]]) -> None:
    """Kill what is still running (the end of a test, passed or not)."""
    for process in processes:
        if process.poll() is None:
            process.kill()
            process.wait(10)
