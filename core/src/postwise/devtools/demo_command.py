"""``postwise demo``: send a campaign end to end on this machine, with no servers."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import click

from postwise.cli.common import emit_json, get_runtime
from postwise.devtools.demo import run_demo


@click.command()
@click.option(
    "--contacts",
    default=1000,
    show_default=True,
    type=click.IntRange(10, 100_000),
    help="How many demo contacts to seed (existing ones are reused).",
)
@click.option(
    "--outbox",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Folder for the .eml files (default: DATA_DIR/demo/outbox).",
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object, no progress bar.")
@click.pass_context
def demo(ctx: click.Context, contacts: int, outbox: Path | None, as_json: bool) -> None:
    """Seed contacts and a template, then send a campaign through the whole pipeline.

    A local SMTP sink writes every message as an .eml file; the demo uses its own SQLite
    database and an in-process Redis under DATA_DIR/demo, so it never touches real data.
    """

    settings = get_runtime(ctx).settings
    # The sink's and the in-process worker's per-message logs would drown the summary.
    for name in ("mail.log", "rq.worker", "rq.queue", "rq.job"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if as_json:
        result = run_demo(settings, contacts=contacts, outbox=outbox)
        emit_json(result.to_dict())
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    console = Console()
    with Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        tasks: dict[str, Any] = {}

        def progress(phase: str, done: int, total: int) -> None:
            if phase not in tasks:
                label = "gating audience" if phase == "dispatch" else "sending"
                tasks[phase] = bar.add_task(label, total=total)
            bar.update(tasks[phase], completed=done, total=total)

        result = run_demo(settings, contacts=contacts, outbox=outbox, progress=progress)
    console.print(f"[bold]campaign {result.campaign_id}[/bold]: audience {result.audience}")
    console.print(
        f"  sent     [green]{result.sent}[/green] in {result.seconds:.2f}s "
        f"({result.messages_per_second:,.0f} messages/s, "
        f"{result.messages_per_second * 3600:,.0f}/hour)"
    )
    skipped = sum(result.skipped.values())
    details = ", ".join(f"{reason} {n}" for reason, n in sorted(result.skipped.items()))
    console.print(f"  skipped  [yellow]{skipped}[/yellow]" + (f" ({details})" if details else ""))
    console.print(f"  failed   [red]{result.failed}[/red]")
    if result.pending:
        console.print(f"  pending  {result.pending} (scheduled for a later retry)")
    signed = f", DKIM-signed for {result.dkim_domain}" if result.dkim_domain else ""
    console.print(f"  outbox   {result.outbox} ({result.files} .eml files{signed})")
