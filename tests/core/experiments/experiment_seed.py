"""Seeding for the experiments tests: contacts, templates, campaigns, the ledger and events.

Ledger rows go in through the delivery ledger's own bulk insert and events through the SQL
analytics sink, the same writers production uses.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from postwise.analytics.sinks import StoredEvent
from postwise.analytics.sql_sink import SqlSink
from postwise.db.models import Contact, Experiment, MessageStatus, Template, TemplateVersion
from postwise.delivery.campaigns import create_campaign
from postwise.delivery.ledger import campaign_message_id, insert_rows, ledger_row
from postwise.delivery.requests import message_id_for
from postwise.experiments.service import create_experiment, variant_for
from postwise.runtime import Runtime

HTML = (
    "<html><body><p>Hello {{ first_name | default('there') }}</p>"
    '<p><a href="https://www.example.com/offer">offer</a></p>'
    '<p><a href="{{ unsubscribe_url }}">unsubscribe</a> {{ postal_address }}</p></body></html>'
)

_event_ids = itertools.count()


def add_contacts(runtime: Runtime, count: int, *, prefix: str = "person") -> list[int]:
    """Insert ``count`` active contacts; returns their ids in order."""
    with runtime.session() as session:
        contacts = [Contact(email=f"{prefix}{i}@example.org") for i in range(count)]
        session.add_all(contacts)
        session.flush()
        return [c.id for c in contacts if c.id is not None]


def add_template(
    runtime: Runtime, *, name: str = "newsletter", subject: str = "Spring news"
) -> int:
    """A marketing template with one (current) version."""
    with runtime.session() as session:
        template = Template(name=name, kind="marketing", current_version=1)
        session.add(template)
        session.flush()
        assert template.id is not None
        session.add(TemplateVersion(template_id=template.id, version=1, subject=subject, html=HTML))
        return template.id


def add_campaign(runtime: Runtime, template_id: int, *, name: str = "spring") -> int:
    with runtime.session() as session:
        campaign = create_campaign(session, name=name, template=template_id)
        assert campaign.id is not None
        return campaign.id


def new_experiment(runtime: Runtime, **definition: Any) -> int:
    """Create an experiment (A/B at 50/50 on clicks by default); returns its id."""
    data: dict[str, Any] = {
        "name": "subject-test",
        "variants": [{"name": "A", "weight": 0.5}, {"name": "B", "weight": 0.5}],
        "metric": "click",
        "min_exposures": 20,
        "min_conversions": 5,
    }
    data.update(definition)
    with runtime.session() as session:
        experiment = create_experiment(session, runtime, data)
        assert experiment.id is not None
        return experiment.id


def assigned(runtime: Runtime, experiment_id: int, contacts: Iterable[int]) -> dict[int, str]:
    """Contact -> variant under the experiment's assignment (held-back contacts left out)."""
    with runtime.session() as session:
        experiment = session.get(Experiment, experiment_id)
        assert experiment is not None
        result = {}
        for contact in contacts:
            spec = variant_for(experiment, contact)
            if spec is not None:
                result[contact] = spec["name"]
        return result


def expose(
    runtime: Runtime,
    experiment_id: int,
    contact_variants: Mapping[int, str],
    *,
    campaign_id: int | None = None,
    trigger_id: int | None = None,
    template_id: int = 1,
    status: str = MessageStatus.ACCEPTED.value,
    at: datetime | None = None,
    send: int = 0,
) -> None:
    """Ledger rows for ``contact_variants`` (one message each), accepted by default."""
    now = at or datetime.now(UTC)
    rows = []
    for contact, variant in contact_variants.items():
        if campaign_id is not None:
            message_id = campaign_message_id(campaign_id, contact)
        else:
            message_id = message_id_for("experiment-test", experiment_id, contact, send)
        rows.append(
            ledger_row(
                message_id,
                contact_id=contact,
                provider="smtp",
                template_id=template_id,
                template_version=1,
                now=now,
                campaign_id=campaign_id,
                trigger_id=trigger_id,
                experiment_id=experiment_id,
                variant=variant,
                status=status,
            )
        )
    with runtime.session() as session:
        insert_rows(session.connection(), rows)


def record(
    runtime: Runtime,
    experiment_id: int,
    contacts: Sequence[int],
    variant: str,
    kind: str = "click",
    **properties: Any,
) -> None:
    """One ``kind`` event per contact, tagged with the experiment and variant (via the sink)."""
    sink = SqlSink(runtime.engine)
    sink.write_batch(
        [
            StoredEvent(
                f"exp-test-{next(_event_ids)}",
                kind,
                datetime.now(UTC),
                contact_id=contact,
                experiment_id=experiment_id,
                variant=variant,
                properties=properties,
            )
            for contact in contacts
        ]
    )


def split(contact_variants: Mapping[int, str]) -> dict[str, list[int]]:
    """Variant -> its contacts, in contact order."""
    groups: dict[str, list[int]] = {}
    for contact, variant in sorted(contact_variants.items()):
        groups.setdefault(variant, []).append(contact)
    return groups
