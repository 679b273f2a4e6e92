"""``postwise serve`` and ``postwise worker``."""

from __future__ import annotations

import os
import tempfile
from typing import Any

import click

from postwise.cli.common import get_runtime
from postwise.runtime import Runtime


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--migrate/--no-migrate", default=True, help="Apply migrations before serving.")
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 64),
    help="Server processes; about one per core (docs/operations.md).",
)
@click.pass_context
def serve(ctx: click.Context, host: str, port: int, migrate: bool, workers: int) -> None:
    """Run the HTTP server (API, tracking, webhooks; OpenAPI at /schema)."""
    import uvicorn

    from postwise.server.app import create_app

    runtime = get_runtime(ctx, process="server")
    if migrate:
        runtime.migrate()
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": "warning",
        "access_log": False,
        "server_header": False,
        # postwise's own logging (text or JSON, addresses masked) carries uvicorn's lines too.
        "log_config": None,
    }
    if workers == 1:
        uvicorn.run(create_app(runtime=runtime), **options)
        return
    # Each process builds its own app from the same settings (environment and config file),
    # and their counters are added up for /metrics through files in one folder.
    config_file = ctx.find_root().obj.get("config_file")
    if config_file:
        os.environ["POSTWISE_CONFIG"] = str(config_file)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="postwise-metrics-")
    uvicorn.run("postwise.server.app:create_app", factory=True, workers=workers, **options)


@click.command()
@click.option(
    "--queue",
    "queues",
    multiple=True,
    help="Queues to serve (default: every send queue of installed providers, then 'default').",
)
@click.option("--burst", is_flag=True, help="Stop when the queues are empty.")
@click.option("--name", default=None, help="Worker name (default: host and pid).")
@click.pass_context
def worker(ctx: click.Context, queues: tuple[str, ...], burst: bool, name: str | None) -> None:
    """Run an RQ worker that sends batches and runs scheduled jobs."""
    from postwise.delivery.worker import run_worker

    runtime: Runtime = get_runtime(ctx, process="worker")
    if runtime.settings.redis_url.startswith("fakeredis://"):
        raise click.UsageError(
            "a separate worker needs a real Redis: set POSTWISE_REDIS_URL=redis://HOST:6379/0 "
            "(the embedded stand-in lives inside one process; `postwise demo` runs its own worker)"
        )
    run_worker(runtime, queues=list(queues) or None, burst=burst, name=name)
