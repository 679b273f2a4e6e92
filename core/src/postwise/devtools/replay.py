"""Replay a public interaction dataset through the product's own front door.

The headline recommendation figures are measured the way a new user would get them: contacts
imported with ``postwise contacts import``, the catalogue sent to ``POST /v1/items``, every
interaction sent to ``POST /v1/events`` as a ``view`` event, ``postwise events collect``, then
``postwise recommend evaluate``. This module does the two HTTP parts and writes the contacts
file; docs/recommendations.md ("Figures on public data") lists the whole sequence::

    python -m postwise.devtools.replay contacts /tmp/ml-100k > /tmp/ml-contacts.csv
    python -m postwise.devtools.replay post /tmp/ml-100k --url http://127.0.0.1:8000 --key KEY

Event times are shifted by one constant so the dataset's latest interaction happens now (the
events API refuses times more than ten years old); their order and spacing are kept. Items get
their title, ``genres`` (a RecBole ``class`` field) and ``year`` (``release_year``); other
fields keep their names. Contacts are ``<dataset>-<user id>@example.com``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
import httpx

from postwise.recommend.datasets import Dataset, load_dataset

__all__ = ["contact_email", "event_batches", "item_batches", "main"]

_RENAMES = {"class": "genres", "release_year": "year"}
_BATCH = 1000


def contact_email(dataset: Dataset, contact_id: int) -> str:
    return f"{dataset.name}-{contact_id}@example.com"


def item_batches(dataset: Dataset) -> Iterator[list[dict[str, Any]]]:
    """``POST /v1/items`` bodies' item lists, 1,000 at a time."""
    batch: list[dict[str, Any]] = []
    for item in dataset.items:
        attributes = {_RENAMES.get(name, name): value for name, value in item.attributes.items()}
        batch.append(
            {
                "id": item.id,
                "title": item.title[:500],
                "url": f"https://films.example.com/{item.id}",
                "attributes": attributes,
            }
        )
        if len(batch) == _BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def event_batches(
    dataset: Dataset, *, now: datetime | None = None, event_type: str = "view"
) -> Iterator[list[dict[str, Any]]]:
    """``POST /v1/events`` batches, times shifted so the latest is ``now``."""
    now = now or datetime.now(UTC)
    times = [i.at for i in dataset.interactions if i.at is not None]
    shift = (now - max(times)) if times else None
    batch: list[dict[str, Any]] = []
    for number, interaction in enumerate(dataset.interactions):
        event: dict[str, Any] = {
            "event_id": f"{dataset.name}-{number}",
            "type": event_type,
            "email": contact_email(dataset, interaction.contact_id),
            "properties": {"item_id": interaction.item_id},
        }
        if interaction.at is not None and shift is not None:
            event["occurred_at"] = (interaction.at + shift).isoformat()
        batch.append(event)
        if len(batch) == _BATCH:
            yield batch
            batch = []
    if batch:
        yield batch


def _post(client: httpx.Client, path: str, body: Any) -> None:
    for _ in range(5):
        response = client.post(path, json=body)
        if response.status_code == 429:
            time.sleep(float(response.headers.get("retry-after", "1")))
            continue
        if response.status_code >= 400:
            raise click.ClickException(f"{path}: {response.status_code} {response.text[:500]}")
        return
    raise click.ClickException(f"{path}: still rate limited after 5 tries")


@click.group()
def main() -> None:
    """Replay a dataset (``--dataset`` format) through the import, items and events APIs."""


@main.command()
@click.argument("dataset_path", type=click.Path(exists=True, path_type=Path))
def contacts(dataset_path: Path) -> None:
    """Print a contacts CSV for ``postwise contacts import``."""
    dataset = load_dataset(dataset_path)
    click.echo("email,first_name")
    for contact_id in sorted({i.contact_id for i in dataset.interactions}):
        click.echo(f"{contact_email(dataset, contact_id)},User {contact_id}")


@main.command()
@click.argument("dataset_path", type=click.Path(exists=True, path_type=Path))
@click.option("--url", default="http://127.0.0.1:8000", show_default=True)
@click.option("--key", required=True, help="An API key with the write scope.")
@click.option("--event-type", default="view", show_default=True)
def post(dataset_path: Path, url: str, key: str, event_type: str) -> None:
    """Send the catalogue to POST /v1/items and every interaction to POST /v1/events."""
    dataset = load_dataset(dataset_path)
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, headers=headers, timeout=120) as client:
        items = 0
        for batch in item_batches(dataset):
            _post(client, "/v1/items", {"items": batch})
            items += len(batch)
        events = 0
        for batch in event_batches(dataset, event_type=event_type):
            _post(client, "/v1/events", batch)
            events += len(batch)
    click.echo(f"posted {items} items and {events} events", err=True)


def run(argv: Sequence[str] | None = None) -> None:
    main.main(args=list(argv) if argv is not None else sys.argv[1:], prog_name="replay")


if __name__ == "__main__":
    run()
