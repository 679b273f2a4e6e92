"""Holdouts for programs: what a trigger or a recurring campaign adds over not sending it at all.

An experiment with a ``holdout`` share keeps that share of contacts (the lowest buckets of the
assignment hash of the experiment id and contact id) from ever receiving its email, for as long
as it runs: every send of every trigger or campaign that names the experiment assigns the same
way, so the holdout is persistent. A *program holdout* is an experiment with a single variant
(the program) and a holdout; a test of variants may keep one too.

**What is compared** (intent to treat). The population is every contact the program tried to
reach: a ledger row of the experiment, whatever became of it (held back, sent, refused by the
compliance gate, bounced). Each is in the holdout or in the program by the hash alone, so both
groups are random samples of the same population, and contacts the program could not mail stay
in their group rather than dropping out of one side only. A contact converted when an event of
the experiment's metric (any source, not only the program's emails: the holdout gets none)
occurred at or after the contact's first row. Contacts held back for an automatic rollout (the
share between the holdout proper and ``experiment.holdout``) are in neither group.

The comparison is :func:`postwise.experiments.stats.analyze` with the holdout as the control and
the program as the treatment, with the experiment's method, alpha, index and planned effect and
its own sequential state (``experiment.state["holdout_sequential"]``): the same gate, valid at
every look. A significant result is reported (``incremental``) and never ends the holdout.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlmodel import Session

from postwise.db.models import Event, Experiment, Message
from postwise.experiments.assignment import VariantAssigner
from postwise.experiments.data import VariantData
from postwise.experiments.state import SequentialState
from postwise.experiments.stats import StatsTest, analyze

__all__ = ["HOLDOUT_GROUP", "PROGRAM_GROUP", "holdout_counts", "holdout_look"]

HOLDOUT_GROUP = "holdout"
PROGRAM_GROUP = "program"
_SPACE = 1 << 64
_PAGE = 20000

_MESSAGE: sa.Table = Message.__table__  # type: ignore[attr-defined]
_EVENT: sa.Table = Event.__table__  # type: ignore[attr-defined]


def _shares(experiment: Experiment) -> tuple[float, float]:
    """(holdout proper, everything held back) as shares of the hash space."""
    options = experiment.options or {}
    proper = float(options.get("holdout", experiment.holdout) or 0.0)
    return proper, float(experiment.holdout or 0.0)


def holdout_counts(
    connection: Connection | Session, experiment: Experiment, *, until: datetime | None = None
) -> list[VariantData]:
    """[holdout, program]: contacts the program tried to reach, and those who converted."""
    assert experiment.id is not None
    proper, held = _shares(experiment)
    floor, ceiling = round(proper * _SPACE), round(held * _SPACE)
    assigner = VariantAssigner(experiment.id, {"_": 1.0})
    rows = [_MESSAGE.c.experiment_id == experiment.id, _MESSAGE.c.contact_id.is_not(None)]
    if until is not None:
        rows.append(_MESSAGE.c.created_at <= until)
    first = (
        sa.select(
            _MESSAGE.c.contact_id.label("contact_id"),
            sa.func.min(_MESSAGE.c.created_at).label("first_at"),
        )
        .where(*rows)
        .group_by(_MESSAGE.c.contact_id)
        .subquery("reached")
    )
    converted_when = [
        _EVENT.c.contact_id == first.c.contact_id,
        _EVENT.c.type == experiment.metric,
        _EVENT.c.occurred_at >= first.c.first_at,
    ]
    if experiment.metric in ("open", "click"):
        converted_when.append(sa.not_(_EVENT.c.automated))
    if until is not None:
        converted_when.append(_EVENT.c.occurred_at <= until)
    query = sa.select(first.c.contact_id, sa.exists().where(*converted_when)).order_by(
        first.c.contact_id
    )
    exposed = {HOLDOUT_GROUP: 0, PROGRAM_GROUP: 0}
    converted = {HOLDOUT_GROUP: 0, PROGRAM_GROUP: 0}
    result = connection.execute(query)
    while True:
        page = result.fetchmany(_PAGE)
        if not page:
            break
        for contact_id, did in page:
            bucket = assigner.bucket(int(contact_id))
            if bucket < floor:
                group = HOLDOUT_GROUP
            elif bucket < ceiling:
                continue  # kept for an automatic rollout: neither group
            else:
                group = PROGRAM_GROUP
            exposed[group] += 1
            converted[group] += int(bool(did))
    return [
        VariantData(HOLDOUT_GROUP, exposed[HOLDOUT_GROUP], converted[HOLDOUT_GROUP]),
        VariantData(PROGRAM_GROUP, exposed[PROGRAM_GROUP], converted[PROGRAM_GROUP]),
    ]


def holdout_look(
    connection: Connection | Session,
    experiment: Experiment,
    *,
    tests: Mapping[str, StatsTest],
    until: datetime | None,
    record: bool,
) -> dict[str, Any] | None:
    """The program against its holdout at this look; None when the experiment keeps none.

    With ``record`` (a running experiment) the sequential state is stored back in the
    experiment's state, so later looks keep the guarantee.
    """
    proper, held = _shares(experiment)
    if proper <= 0.0:
        return None
    counts = holdout_counts(connection, experiment, until=until)
    options = experiment.options or {}
    state = dict(experiment.state or {})
    stored = state.get("holdout_sequential")
    previous = SequentialState.from_dict(stored) if stored else None
    method = experiment.method if experiment.method in tests else "sequential"
    if not getattr(tests[method], "decides", False) or not getattr(
        tests[method], "always_valid", False
    ):
        method = "sequential"  # a persistent holdout is read at every look: always-valid only
    analysis = analyze(
        counts,
        method=method,
        alpha=experiment.alpha,
        weights=[proper / (1 - held + proper), (1 - held) / (1 - held + proper)],
        sequential_tuning=options.get("sequential_tuning"),
        index=options.get("index", "exposures"),
        min_exposures=int(options.get("min_exposures", 100)),
        min_conversions=int(options.get("min_conversions", 10)),
        previous=previous,
        tests=tests,
        mde=options.get("mde"),
    )
    if record and analysis.state is not None:
        state["holdout_sequential"] = analysis.state.to_dict()
        experiment.state = state
    program = analysis.variant(PROGRAM_GROUP)
    holdout = analysis.variant(HOLDOUT_GROUP)
    incremental = None
    if analysis.winner is not None:
        incremental = analysis.winner == PROGRAM_GROUP
    result = analysis.to_dict()
    result.pop("state", None)
    return {
        "holdout_share": proper,
        "incremental": incremental,
        "incremental_conversions": (program.rate - holdout.rate) * program.exposures,
        "reason": (
            f"the program adds conversions: {analysis.reason}"
            if incremental
            else f"the program does worse than no email: {analysis.reason}"
            if incremental is False
            else analysis.reason
        ),
        "analysis": result,
    }
