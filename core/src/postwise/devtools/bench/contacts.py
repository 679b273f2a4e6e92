"""``postwise bench import``: bulk contact import throughput."""

from __future__ import annotations

import csv
import tempfile
import time
from pathlib import Path

import click

from postwise.cli.common import emit_json, get_runtime
from postwise.contacts.importer import import_contacts


def write_sample(path: Path, rows: int) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "email",
                "first_name",
                "last_name",
                "timezone",
                "country",
                "tags",
                "attributes.plan",
                "attributes.city",
            ]
        )
        zones = ["Europe/Paris", "America/New_York", "Asia/Tokyo", "UTC"]
        for i in range(rows):
            writer.writerow(
                [
                    f"user{i}@example.com",
                    f"First{i}",
                    f"Last{i}",
                    zones[i % 4],
                    "FR" if i % 2 else "US",
                    "newsletter;beta" if i % 3 == 0 else "",
                    "pro" if i % 5 == 0 else "free",
                    f"City{i % 100}",
                ]
            )


@click.command(name="import")
@click.option("--rows", default=100_000, show_default=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def bench_import(ctx: click.Context, rows: int, as_json: bool) -> None:
    """Import ROWS generated contacts twice (create, then an unchanged re-import)."""
    runtime = get_runtime(ctx)
    runtime.migrate()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "contacts.csv"
        write_sample(path, rows)
        timings = []
        reports = []
        for _ in range(2):
            started = time.perf_counter()
            with runtime.session() as session:
                report = import_contacts(session, path)
            timings.append(time.perf_counter() - started)
            reports.append(report.to_dict())
    result = {
        "rows": rows,
        "database": runtime.engine.dialect.name,
        "first_import_seconds": round(timings[0], 2),
        "reimport_seconds": round(timings[1], 2),
        "rows_per_second": round(rows / timings[0]),
        "first": {k: reports[0][k] for k in ("created", "updated", "unchanged")},
        "reimport": {k: reports[1][k] for k in ("created", "updated", "unchanged")},
    }
    if as_json:
        emit_json(result)
    else:
        for key, value in result.items():
            click.echo(f"{key}: {value}")
