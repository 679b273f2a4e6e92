"""Counting a look: exposures, conversions, guardrail harms and covariate sums per variant.

Exposures are the distinct contacts with an ``accepted`` message of the variant; conversions and
harms the distinct ones among them with an event of the metric attributed to the same variant.
Contacts are the unit because assignment is by contact: a trigger may mail one several times,
and it counts once.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlmodel import Session

from postwise.db.models import (
    Event,
    Experiment,
    Message,
    MessageStatus,
)
from postwise.experiments.data import Covariate, VariantData
from postwise.experiments.guardrails import GUARDRAIL_METRICS

__all__ = ["PRE_PERIOD", "guardrail_counts", "outcome_counts"]

#: The window before a contact's first exposure that the pre-exposure covariates look at.
PRE_PERIOD = timedelta(days=30)

# -- counting -----------------------------------------------------------------------------------

_MESSAGE: sa.Table = Message.__table__  # type: ignore[attr-defined]
_EVENT: sa.Table = Event.__table__  # type: ignore[attr-defined]


def _exposed(experiment: Experiment, until: datetime | None) -> list[Any]:
    exposed = [
        _MESSAGE.c.experiment_id == experiment.id,
        _MESSAGE.c.status == MessageStatus.ACCEPTED.value,
        _MESSAGE.c.variant.is_not(None),
        _MESSAGE.c.contact_id.is_not(None),
    ]
    if until is not None:
        exposed.append(_MESSAGE.c.created_at <= until)
    return exposed


def _contacts_with(
    connection: Connection | Session,
    experiment: Experiment,
    until: datetime | None,
    *event_filter: Any,
) -> dict[str, int]:
    """Per variant, distinct exposed contacts with an event matching ``event_filter``."""
    ledger = _MESSAGE.alias("exposure")
    was_exposed = sa.exists().where(
        ledger.c.experiment_id == experiment.id,
        ledger.c.status == MessageStatus.ACCEPTED.value,
        ledger.c.variant == _EVENT.c.variant,
        ledger.c.contact_id == _EVENT.c.contact_id,
        *([ledger.c.created_at <= until] if until is not None else []),
    )
    return {
        str(variant): int(count)
        for variant, count in connection.execute(
            sa.select(_EVENT.c.variant, sa.func.count(sa.distinct(_EVENT.c.contact_id)))
            .where(
                *event_filter,
                _EVENT.c.experiment_id == experiment.id,
                _EVENT.c.variant.is_not(None),
                _EVENT.c.contact_id.is_not(None),
                was_exposed,
            )
            .group_by(_EVENT.c.variant)
        )
    }


def _exposures(
    connection: Connection | Session, experiment: Experiment, until: datetime | None
) -> dict[str, int]:
    return {
        str(variant): int(count)
        for variant, count in connection.execute(
            sa.select(_MESSAGE.c.variant, sa.func.count(sa.distinct(_MESSAGE.c.contact_id)))
            .where(*_exposed(experiment, until))
            .group_by(_MESSAGE.c.variant)
        )
    }


def outcome_counts(
    connection: Connection | Session, experiment: Experiment, *, until: datetime | None = None
) -> list[VariantData]:
    """Exposures and conversions per variant, in the experiment's variant order.

    Exposures are the distinct contacts with an ``accepted`` message of the variant (created by
    ``until`` when given); conversions the distinct ones among them with an event of the
    experiment's metric for the same variant, machine opens and scanner clicks left out.
    Contacts are the unit because assignment is by contact: a trigger may mail one several
    times, and it counts once.
    """
    exposures = _exposures(connection, experiment, until)
    converted = [_EVENT.c.type == experiment.metric]
    if experiment.metric in ("open", "click"):
        # ``automated`` is set at ingestion from properties.machine_open / properties.scanner.
        converted.append(sa.not_(_EVENT.c.automated))
    conversions = _contacts_with(connection, experiment, until, *converted)
    kind = (experiment.options or {}).get("covariate")
    sums = _covariate_sums(connection, experiment, until, kind, converted) if kind else {}
    return [
        VariantData(
            str(v["name"]),
            exposures=exposures.get(v["name"], 0),
            conversions=conversions.get(v["name"], 0),
            covariate=sums.get(v["name"], Covariate(0, 0.0, 0.0, 0.0, 0)) if kind else None,
        )
        for v in experiment.variants
    ]


def _covariate_sums(
    connection: Connection | Session,
    experiment: Experiment,
    until: datetime | None,
    kind: str,
    converted: list[Any],
) -> dict[str, Covariate]:
    """Per variant, the CUPED sums of the covariate over exposed contacts that have one.

    ``pre_period``: 1 when the contact had the experiment's metric in the 30 days before its
    first exposure, else 0. ``pre_engagement``: the contact's opens and clicks (machine opens
    and scanner clicks left out) in those 30 days. Both are known for every contact and are
    fixed before exposure. The stored ``engagement_score`` is not offered: the events the
    experiment causes update it, so a score read at a look is not pre-exposure, and leaving
    out the contacts it moved would leave out exactly the converters (a biased estimate).
    """
    first = (
        sa.select(
            _MESSAGE.c.contact_id.label("contact_id"),
            _MESSAGE.c.variant.label("variant"),
            sa.func.min(_MESSAGE.c.created_at).label("first_at"),
        )
        .where(*_exposed(experiment, until))
        .group_by(_MESSAGE.c.contact_id, _MESSAGE.c.variant)
        .subquery("first_exposure")
    )
    did = sa.exists().where(
        *converted,
        _EVENT.c.experiment_id == experiment.id,
        _EVENT.c.contact_id == first.c.contact_id,
        _EVENT.c.variant == first.c.variant,
    )
    converted_flag = sa.case((did, 1), else_=0)
    window = [
        _EVENT.c.contact_id == first.c.contact_id,
        _EVENT.c.occurred_at < first.c.first_at,
        _EVENT.c.occurred_at >= first.c.first_at - PRE_PERIOD,
    ]
    value: Any
    if kind == "pre_period":
        before = sa.exists().where(_EVENT.c.type == experiment.metric, *window)
        value = sa.case((before, 1.0), else_=0.0)
    else:
        value = (
            sa.select(sa.func.count())
            .where(_EVENT.c.type.in_(("open", "click")), sa.not_(_EVENT.c.automated), *window)
            .scalar_subquery()
        )
    valid: Any = sa.true()
    source: Any = first
    rows = (
        sa.select(
            first.c.variant.label("variant"),
            sa.case((valid, 1), else_=0).label("has"),
            sa.case((valid, value), else_=0.0).label("x"),
            converted_flag.label("y"),
        )
        .select_from(source)
        .subquery("per_contact")
    )
    query = sa.select(
        rows.c.variant,
        sa.func.sum(rows.c.has),
        sa.func.sum(rows.c.x),
        sa.func.sum(rows.c.x * rows.c.x),
        sa.func.sum(rows.c.x * rows.c.y),
        sa.func.sum(rows.c.has * rows.c.y),
    ).group_by(rows.c.variant)
    return {
        str(variant): Covariate(
            int(has or 0), float(x or 0.0), float(xx or 0.0), float(xy or 0.0), int(ys or 0)
        )
        for variant, has, x, xx, xy, ys in connection.execute(query)
    }


def guardrail_counts(
    connection: Connection | Session, experiment: Experiment, *, until: datetime | None = None
) -> dict[str, list[VariantData]]:
    """Per guardrail metric, exposed contacts and those among them with the harm event.

    ``unsubscribe`` and ``complaint`` events, and ``bounce`` events whose ``kind`` is ``hard``,
    attributed to the variant's messages (as conversions are).
    """
    exposures = _exposures(connection, experiment, until)
    filters: dict[str, list[Any]] = {
        "unsubscribe": [_EVENT.c.type == "unsubscribe"],
        "complaint": [_EVENT.c.type == "complaint"],
        "hard_bounce": [
            _EVENT.c.type == "bounce",
            _EVENT.c.properties["kind"].as_string() == "hard",
        ],
    }
    counts = {}
    for metric in GUARDRAIL_METRICS:
        harmed = _contacts_with(connection, experiment, until, *filters[metric])
        counts[metric] = [
            VariantData(
                str(v["name"]),
                exposures=exposures.get(v["name"], 0),
                conversions=min(harmed.get(v["name"], 0), exposures.get(v["name"], 0)),
            )
            for v in experiment.variants
        ]
    return counts
