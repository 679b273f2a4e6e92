"""What every ``postwise`` subcommand shares: the runtime and output helpers."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from functools import wraps
from typing import Any, TypeVar

import click

from postwise.ops.heartbeat import Heartbeat
from postwise.ops.logs import configure_logging
from postwise.ops.metrics import serve_metrics
from postwise.redis_client import connect_redis
from postwise.runtime import Runtime
from postwise.settings import Settings, load_settings

__all__ = ["check_deployable", "emit_json", "get_runtime", "pass_runtime"]

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("postwise")


def get_runtime(ctx: click.Context, *, process: str | None = None) -> Runtime:
    """The runtime of this invocation, built once from settings and closed when it ends.

    A long-running ``process`` (one of :data:`postwise.ops.heartbeat.PROCESS_KINDS`: servers,
    workers, consumers) handles real mail, so it refuses to start on settings that cannot send
    it correctly (see ``Settings.deployment_problems``) unless ``mode`` is ``development``,
    where it starts and says what is missing. It then beats into Redis until the command ends,
    so ``/health`` and ``postwise run`` know it is alive.
    """
    runtime = _runtime(ctx, process)
    if process is not None:
        check_deployable(runtime.settings)
        if runtime.settings.metrics_port:
            serve_metrics(runtime.settings.metrics_port, runtime.settings.metrics_address)
        if not runtime.settings.redis_url.startswith("fakeredis://"):
            # Its own connection: a worker forks, and the beat must not share its pool.
            heartbeat = Heartbeat(connect_redis(runtime.settings.redis_url), process)
            heartbeat.__enter__()
            ctx.find_root().call_on_close(lambda: heartbeat.__exit__(None, None, None))
    return runtime


def check_deployable(settings: Settings) -> None:
    """Refuse settings that cannot send real mail, unless ``mode`` is ``development``."""
    problems = settings.deployment_problems()
    if not problems:
        return
    listing = "\n".join(f"  - {problem}" for problem in problems)
    if settings.mode == "development":
        log.warning("development mode: these settings must not send real mail:\n%s", listing)
        return
    raise click.ClickException(
        "these settings cannot send real mail:\n"
        f"{listing}\n"
        "Fix them, or set POSTWISE_MODE=development to try postwise on this machine."
    )


def _runtime(ctx: click.Context, process: str | None = None) -> Runtime:
    root = ctx.find_root()
    root.ensure_object(dict)
    runtime: Runtime | None = root.obj.get("runtime")
    if runtime is None:
        settings = load_settings(config_file=root.obj.get("config_file"))
        configure_logging(settings.log_level, settings.log_format, process=process)
        runtime = Runtime(settings)
        root.obj["runtime"] = runtime
        root.call_on_close(runtime.close)
    return runtime


def pass_runtime(func: F) -> F:
    """Decorate a command so it receives the runtime as its first argument."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        return func(get_runtime(click.get_current_context()), *args, **kwargs)

    return wrapper  # type: ignore[return-value]


def emit_json(data: Any) -> None:
    """Print ``data`` as one line of JSON."""
    click.echo(json.dumps(data, default=str, sort_keys=False))
