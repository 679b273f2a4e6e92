"""``postwise run``: every long-running process of one machine, supervised."""

from __future__ import annotations

import os

import click

from postwise.cli.common import check_deployable, get_runtime
from postwise.ops.supervisor import ProcessSpec, Supervisor


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address the server binds.")
@click.option("--port", default=8000, show_default=True, type=int)
@click.option(
    "--server-workers",
    default=2,
    show_default=True,
    type=click.IntRange(1, 64),
    help="HTTP server processes (uvicorn workers).",
)
@click.option(
    "--workers",
    default=2,
    show_default=True,
    type=click.IntRange(0, 256),
    help="RQ delivery workers.",
)
@click.option("--collectors", default=1, show_default=True, type=click.IntRange(0, 64))
@click.option("--trigger-engines", default=1, show_default=True, type=click.IntRange(0, 64))
@click.option("--journey-engines", default=1, show_default=True, type=click.IntRange(0, 64))
@click.option(
    "--crm/--no-crm",
    default=None,
    help="Run the CRM sync (default: when crm_options configures a CRM).",
)
@click.option(
    "--metrics-port-base",
    type=click.IntRange(1, 65000),
    default=None,
    help="Give each process but the server (which has /metrics) a Prometheus port: BASE+1...",
)
@click.option(
    "--grace",
    default=30.0,
    show_default=True,
    type=float,
    help="Seconds a stopping process gets before it is killed.",
)
@click.pass_context
def run(
    ctx: click.Context,
    *,
    host: str,
    port: int,
    server_workers: int,
    workers: int,
    collectors: int,
    trigger_engines: int,
    journey_engines: int,
    crm: bool | None,
    metrics_port_base: int | None,
    grace: float,
) -> None:
    """Run and supervise every long-running process on this machine until SIGTERM or Ctrl-C.

    The server (with --server-workers processes), delivery workers, event collectors, trigger
    and journey engines, the compliance consumer (bounces, complaints, reputation) and, when a
    CRM is configured, the CRM sync. A process that dies is restarted; /health shows them all. For
    several machines, run the same processes under systemd (see docs/operations.md).
    """
    runtime = get_runtime(ctx)
    check_deployable(runtime.settings)
    if runtime.settings.redis_url.startswith("fakeredis://"):
        raise click.UsageError(
            "postwise run starts several processes, which need a real Redis: set "
            "POSTWISE_REDIS_URL=redis://HOST:6379/0 (`postwise demo` runs without one)"
        )
    runtime.migrate()
    with_crm = bool(runtime.settings.crm_options) if crm is None else crm
    specs = [
        ProcessSpec(
            "server",
            (
                "serve",
                "--no-migrate",
                "--host",
                host,
                "--port",
                str(port),
                "--workers",
                str(server_workers),
            ),
        ),
        *(ProcessSpec(f"worker-{i}", ("worker",)) for i in range(1, workers + 1)),
        *(ProcessSpec(f"collector-{i}", ("events", "collect")) for i in range(1, collectors + 1)),
        *(ProcessSpec(f"triggers-{i}", ("triggers", "run")) for i in range(1, trigger_engines + 1)),
        *(ProcessSpec(f"journeys-{i}", ("journeys", "run")) for i in range(1, journey_engines + 1)),
        ProcessSpec("compliance", ("reputation", "run")),
    ]
    if with_crm:
        specs.append(ProcessSpec("crm", ("crm", "run")))
    if metrics_port_base is not None:
        specs = [specs[0]] + [
            ProcessSpec(s.name, s.args, {"POSTWISE_METRICS_PORT": str(metrics_port_base + i)})
            for i, s in enumerate(specs[1:], start=1)
        ]
    config_file = ctx.find_root().obj.get("config_file")
    env = {**os.environ, **({"POSTWISE_CONFIG": str(config_file)} if config_file else {})}
    ctx.exit(Supervisor(specs, grace_seconds=grace, env=env).run())
