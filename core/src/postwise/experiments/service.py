"""Experiments as stored: define them, look at them, stop them.

An experiment lives in the ``experiment`` table. Its definition (variants with weights, the
holdout, the metric, the stats test, alpha, the sequential test's index and N*) is validated
once, when it is created, and never changes afterwards: an always-valid test must keep its
settings for its whole life.

**A look** (:func:`experiment_report`) counts, per variant, the contacts exposed (an
``accepted`` message in the ledger) and those among them who converted (an event of the
experiment's metric type, ``open`` and ``click`` without machine opens and scanner clicks),
with one GROUP BY query each, and hands them to :func:`postwise.experiments.stats.analyze`
with the sequential state of the previous looks. While the experiment runs, every look is
recorded: the new :class:`~postwise.experiments.state.SequentialState` goes back into
``experiment.state["sequential"]``, a sample-ratio mismatch sets ``experiment.flagged``, and a
winner is declared once (``winner``, ``decided_at``, status ``decided``). After the decision,
or once stopped, looks still report the numbers (outcomes keep maturing) but change nothing,
and count only contacts exposed before the experiment closed.

**Assignment** happens at send time: delivery (campaign dispatch and ``submit_send`` for
triggers) calls :class:`postwise.experiments.arms.Arms`, the one place that assigns variants;
:func:`variant_for` gives the same answer.

``experiment.holdout`` is the share delivery holds back at send: the holdout proper (contacts
who never get the experiment's email) plus, with automatic rollout, the ``rollout_fraction``
kept for the winner (see :mod:`postwise.experiments.rollout`). ``options`` keeps both shares.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlmodel import Session, col, select

from postwise.db.models import (
    Campaign,
    CampaignStatus,
    Event,
    Experiment,
    Message,
    MessageStatus,
    Template,
    TemplateVersion,
    Trigger,
    utcnow,
)
from postwise.errors import ConflictError, NotFoundError, ValidationError
from postwise.experiments.arms import HOLDOUT, normalised, stopped_arms, variant_for
from postwise.experiments.bandit import BANDIT_COST
from postwise.experiments.bandit_runs import DEFAULT_FLOOR, bandit_look, start_bandit
from postwise.experiments.data import WEIGHT_SUM_TOLERANCE, Covariate, VariantData
from postwise.experiments.guardrails import GUARDRAIL_METRICS, GuardrailResult, check_guardrails
from postwise.experiments.holdout import holdout_look

if TYPE_CHECKING:
    from postwise.experiments.stats import AnalysisResult
    from postwise.runtime import Runtime
    from postwise.settings import Settings

__all__ = [
    "INDEX_BY_TARGET",
    "METRICS",
    "ExperimentDefinition",
    "ExperimentStatus",
    "assigner_weights",
    "create_experiment",
    "experiment_dict",
    "experiment_report",
    "get_experiment",
    "list_experiments",
    "outcome_counts",
    "stop_experiment",
    "validate_definition",
    "variant_for",
]

log = logging.getLogger(__name__)

#: Event types an experiment can be judged on.
METRICS = ("open", "click", "conversion")
#: The sequential test's index for each kind of experiment: a campaign's recipients are fixed at
#: send and its outcomes keep arriving; a trigger's audience grows over time.
INDEX_BY_TARGET = {"campaign": "outcomes", "trigger": "exposures"}
MAX_VARIANTS = 20
#: Pre-exposure covariates for CUPED, over the 30 days before a contact's first exposure: whether
#: they had the experiment's metric, or how many opens and clicks they made.
COVARIATES = ("pre_period", "pre_engagement")
PRE_PERIOD = timedelta(days=30)
_NAME_LIMIT = 200
_VARIANT_NAME_LIMIT = 100  # message.variant and event.variant columns
_FLAG_LIMIT = 200  # experiment.flagged column

_FIELDS = frozenset(
    {
        "name",
        "variants",
        "holdout",
        "metric",
        "method",
        "alpha",
        "target",
        "campaign_id",
        "index",
        "sequential_tuning",
        "baseline",
        "mde",
        "min_exposures",
        "min_conversions",
        "rollout_fraction",
        "allocation",
        "bandit_floor",
        "covariate",
    }
)
_VARIANT_FIELDS = frozenset(
    {"name", "weight", "template_id", "template_version", "subject", "variables", "description"}
)


class ExperimentStatus:
    """The life of an experiment: ``running`` until decided or stopped."""

    RUNNING = "running"
    #: The gate declared a winner; the decision stands.
    DECIDED = "decided"
    #: Stopped by hand; no further look is recorded.
    STOPPED = "stopped"


@dataclass(frozen=True, slots=True)
class ExperimentDefinition:
    """A validated experiment definition (what :func:`create_experiment` stores)."""

    name: str
    variants: list[dict[str, Any]]
    holdout: float
    metric: str
    method: str
    alpha: float
    target: str
    index: str
    sequential_tuning: float
    min_exposures: int
    min_conversions: int
    rollout_fraction: float | None
    campaign_id: int | None
    baseline: float | None
    mde: float | None
    #: "fixed" (the configured weights throughout) or "bandit" (Thompson sampling).
    allocation: str = "fixed"
    bandit_floor: float | None = None
    #: The pre-exposure covariate CUPED adjusts with: "engagement_score", "pre_period" or None.
    covariate: str | None = None


# -- validation ---------------------------------------------------------------------------------


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _number(value: Any, field: str) -> float:
    if not _is_number(value):
        raise ValidationError(f"must be a number, got {value!r}", field=field)
    return float(value)


def _whole(value: Any, field: str, *, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValidationError(f"must be a whole number >= {minimum}, got {value!r}", field=field)
    return value


def _share(value: Any, field: str, *, open_low: bool) -> float:
    share = _number(value, field)
    if not (0.0 < share < 1.0 if open_low else 0.0 <= share < 1.0):
        bounds = "between 0 and 1 (exclusive)" if open_low else "in [0, 1)"
        raise ValidationError(f"must be a share {bounds}, got {share}", field=field)
    return share


def _variant(raw: Any, index: int, seen: set[str]) -> dict[str, Any]:
    where = f"variants[{index}]"
    if not isinstance(raw, Mapping):
        raise ValidationError("must be an object with a name and a weight", field=where)
    unknown = sorted(set(raw) - _VARIANT_FIELDS)
    if unknown:
        raise ValidationError(
            f"unknown field {unknown[0]!r}; a variant has {', '.join(sorted(_VARIANT_FIELDS))}",
            field=f"{where}.{unknown[0]}",
        )
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ValidationError("every variant needs a name", field=f"{where}.name")
    name = name.strip()
    if len(name) > _VARIANT_NAME_LIMIT or name == HOLDOUT:
        raise ValidationError(
            f"must be 1-{_VARIANT_NAME_LIMIT} characters and not {HOLDOUT!r}",
            field=f"{where}.name",
        )
    if name in seen:
        raise ValidationError(
            f"duplicate variant name {name!r}; every variant needs its own name",
            field=f"{where}.name",
        )
    seen.add(name)
    if "weight" not in raw:
        raise ValidationError("every variant needs a weight", field=f"{where}.weight")
    weight = _number(raw["weight"], f"{where}.weight")
    if weight <= 0:
        raise ValidationError(
            f"must be positive, got {weight}; drop the variant rather than weight it 0",
            field=f"{where}.weight",
        )
    spec: dict[str, Any] = {"name": name, "weight": weight}
    for key in ("template_id", "template_version"):
        if raw.get(key) is not None:
            spec[key] = _whole(raw[key], f"{where}.{key}", minimum=1)
    if "template_version" in spec and "template_id" not in spec:
        raise ValidationError(
            "a template_version needs the template_id it belongs to",
            field=f"{where}.template_version",
        )
    subject = raw.get("subject")
    if subject is not None:
        if not isinstance(subject, str) or not subject.strip():
            raise ValidationError("must be a non-empty string", field=f"{where}.subject")
        spec["subject"] = subject
    variables = raw.get("variables")
    if variables is not None:
        if not isinstance(variables, list) or not all(isinstance(v, str) for v in variables):
            raise ValidationError("must be a list of names", field=f"{where}.variables")
        spec["variables"] = list(variables)
    description = raw.get("description")
    if description is not None:
        if not isinstance(description, str) or len(description) > 500:
            raise ValidationError(
                "must be a string of at most 500 characters", field=f"{where}.description"
            )
        spec["description"] = description
    return spec


def validate_definition(
    data: Mapping[str, Any], *, settings: Settings, stats_tests: Collection[str]
) -> ExperimentDefinition:
    """Check an experiment definition; ValidationError names the offending field.

    ``stats_tests`` are the names of the installed stats tests (the plugin registry's). Template
    references are checked by :func:`create_experiment`, which has a database session.
    """
    if not isinstance(data, Mapping):
        raise ValidationError("an experiment definition must be a JSON object")
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise ValidationError(
            f"unknown field {unknown[0]!r}; an experiment has {', '.join(sorted(_FIELDS))}",
            field=unknown[0],
        )
    name = data.get("name")
    if not isinstance(name, str) or not name.strip() or len(name.strip()) > _NAME_LIMIT:
        raise ValidationError(f"must be 1-{_NAME_LIMIT} characters", field="name")

    raw_variants = data.get("variants")
    program = isinstance(raw_variants, list) and len(raw_variants) == 1
    if program:
        # A program holdout: one variant (the program) measured against its holdout.
        held = data.get("holdout", 0.0)
        if not _is_number(held) or not held > 0 or data.get("rollout_fraction") is not None:
            raise ValidationError(
                "a single variant is a program measured against its holdout: give it a "
                "holdout share (e.g. 0.05) and no rollout_fraction, or add a second variant",
                field="variants",
            )
    elif not isinstance(raw_variants, list) or not 2 <= len(raw_variants) <= MAX_VARIANTS:
        count = len(raw_variants) if isinstance(raw_variants, list) else 0
        raise ValidationError(
            f"an experiment needs 2 to {MAX_VARIANTS} variants (the first is the control), "
            f"or one variant with a holdout (a program holdout); got {count}",
            field="variants",
        )
    assert isinstance(raw_variants, list)
    seen: set[str] = set()
    variants = [_variant(raw, i, seen) for i, raw in enumerate(raw_variants)]
    total = math.fsum(v["weight"] for v in variants)
    if abs(total - 1.0) > WEIGHT_SUM_TOLERANCE:
        suggestion = ", ".join(f"{v['weight'] / total:.4g}" for v in variants)
        raise ValidationError(
            f"weights must sum to 1, they sum to {total:.6g}; for example use {suggestion}",
            field="variants",
        )

    holdout = _share(data.get("holdout", 0.0), "holdout", open_low=False)
    metric = data.get("metric", "click")
    if metric not in METRICS:
        raise ValidationError(
            f"must be one of {', '.join(METRICS)}, got {metric!r}", field="metric"
        )
    method = data.get("method", "sequential")
    if not isinstance(method, str) or method not in stats_tests:
        raise ValidationError(
            f"unknown stats test {method!r}; installed: {', '.join(sorted(stats_tests))}",
            field="method",
        )
    alpha = _number(data.get("alpha", settings.experiment_alpha), "alpha")
    if not 0.0 < alpha < 0.5:
        raise ValidationError(
            f"must lie strictly between 0 and 0.5 (0.05 is usual), got {alpha}", field="alpha"
        )

    campaign_id = data.get("campaign_id")
    if campaign_id is not None:
        campaign_id = _whole(campaign_id, "campaign_id", minimum=1)
    target = data.get("target", "campaign")
    if target not in INDEX_BY_TARGET:
        raise ValidationError(f"must be 'campaign' or 'trigger', got {target!r}", field="target")
    if campaign_id is not None and target != "campaign":
        raise ValidationError("campaign_id needs target 'campaign'", field="target")
    index = data.get("index", INDEX_BY_TARGET[target])
    if index not in ("exposures", "outcomes"):
        raise ValidationError(f"must be 'exposures' or 'outcomes', got {index!r}", field="index")

    baseline = mde = None
    if data.get("mde") is not None:
        mde = _number(data["mde"], "mde")
        if not 0.0 < mde <= 10.0:
            raise ValidationError(
                f"the planned effect is relative, in (0, 10] (0.10 = +10%), got {mde}",
                field="mde",
            )
    if data.get("baseline") is not None:
        baseline = _number(data["baseline"], "baseline")
        if not 0.0 < baseline < 1.0:
            raise ValidationError(
                f"must be a rate between 0 and 1, got {baseline}", field="baseline"
            )
        if mde is None:
            raise ValidationError("a baseline needs the planned effect (mde)", field="mde")
    if data.get("sequential_tuning") is not None:
        tuning = _number(data["sequential_tuning"], "sequential_tuning")
        if tuning <= 0:
            raise ValidationError(f"must be positive, got {tuning}", field="sequential_tuning")
    elif baseline is not None and mde is not None:
        from postwise.experiments.planning import plan

        design = plan(baseline, mde, alpha=alpha, variants=len(variants))
        tuning = float(design.outcome_tuning if index == "outcomes" else design.sequential_tuning)
    elif index == "exposures":
        tuning = float(settings.experiment_sequential_tuning)
    else:
        from postwise.experiments.sequential import DEFAULT_TUNING

        tuning = DEFAULT_TUNING["outcomes"]

    min_exposures = _whole(data.get("min_exposures", 100), "min_exposures")
    min_conversions = _whole(data.get("min_conversions", 10), "min_conversions")

    rollout = data.get("rollout_fraction")
    if rollout is not None:
        rollout = _share(rollout, "rollout_fraction", open_low=True)
        if target != "campaign":
            raise ValidationError(
                "automatic rollout holds back part of a campaign's audience; trigger experiments "
                "send the winner to everyone once it is declared",
                field="rollout_fraction",
            )
        if holdout + rollout >= 1.0:
            raise ValidationError(
                f"holdout ({holdout}) and rollout_fraction ({rollout}) together leave nobody "
                "for the test; they must sum to less than 1",
                field="rollout_fraction",
            )
    allocation = data.get("allocation", "fixed")
    floor = None
    if allocation not in ("fixed", "bandit"):
        raise ValidationError(
            f"must be 'fixed' or 'bandit', got {allocation!r}", field="allocation"
        )
    if allocation == "bandit":
        if len(variants) < 2 or rollout is not None or method != "sequential":
            raise ValidationError(
                "a bandit needs 2 or more variants, method 'sequential' and no rollout_fraction "
                f"(it sends the leader more as it goes). Its cost: {BANDIT_COST}",
                field="allocation",
            )
        floor = _number(data.get("bandit_floor", DEFAULT_FLOOR), "bandit_floor")
        if not 0.0 < floor <= 1.0 / len(variants):
            raise ValidationError(
                f"must lie in (0, 1/{len(variants)}] for {len(variants)} variants, got {floor}",
                field="bandit_floor",
            )
    elif data.get("bandit_floor") is not None:
        raise ValidationError("bandit_floor needs allocation 'bandit'", field="bandit_floor")
    covariate = data.get("covariate")
    if covariate is not None and covariate not in COVARIATES:
        raise ValidationError(
            f"must be one of {', '.join(COVARIATES)} (or absent), got {covariate!r}",
            field="covariate",
        )
    return ExperimentDefinition(
        covariate=covariate,
        allocation=allocation,
        bandit_floor=floor,
        name=name.strip(),
        variants=variants,
        holdout=holdout,
        metric=metric,
        method=method,
        alpha=alpha,
        target=target,
        index=index,
        sequential_tuning=tuning,
        min_exposures=min_exposures,
        min_conversions=min_conversions,
        rollout_fraction=rollout,
        campaign_id=campaign_id,
        baseline=baseline,
        mde=mde,
    )


# -- create, read, list -------------------------------------------------------------------------


def _stats_tests(runtime: Runtime) -> dict[str, Any]:
    return {entry.name: entry.component for entry in runtime.plugins.registry("stats_tests")}


def create_experiment(session: Session, runtime: Runtime, data: Mapping[str, Any]) -> Experiment:
    """Validate ``data`` and store a running experiment.

    With ``campaign_id`` the experiment is attached to that draft campaign, whose template
    version is pinned if it was not already. A variant's ``subject`` is saved as a version of
    its template (the variant's ``template_id``, else the campaign's) with only the subject
    changed, and the variant pinned to it, so delivery sends exactly what the variant says.
    That version does not become the template's current one.
    """
    definition = validate_definition(
        data, settings=runtime.settings, stats_tests=list(_stats_tests(runtime))
    )
    taken = session.exec(select(Experiment).where(Experiment.name == definition.name)).first()
    if taken is not None:
        raise ConflictError(
            f"an experiment called {definition.name!r} exists (id {taken.id}); choose another name"
        )
    campaign: Campaign | None = None
    if definition.campaign_id is not None:
        campaign = session.get(Campaign, definition.campaign_id)
        if campaign is None:
            raise ValidationError(
                f"no campaign with id {definition.campaign_id}", field="campaign_id"
            )
        if campaign.status != CampaignStatus.DRAFT or campaign.experiment_id is not None:
            raise ConflictError(
                f"campaign {campaign.id} is {campaign.status}"
                + (f" with experiment {campaign.experiment_id}" if campaign.experiment_id else "")
                + "; an experiment can only be added to a draft campaign without one"
            )
        if campaign.template_version is None:
            # Pinned now, so the control and any subject override share one body even if the
            # template gets a new version before the send.
            template = session.get(Template, campaign.template_id)
            assert template is not None
            campaign.template_version = template.current_version
    variants = [
        _resolve_templates(session, spec, i, campaign) for i, spec in enumerate(definition.variants)
    ]
    experiment = Experiment(
        name=definition.name,
        status=ExperimentStatus.RUNNING,
        variants=variants,
        holdout=definition.holdout + (definition.rollout_fraction or 0.0),
        metric=definition.metric,
        method=definition.method,
        alpha=definition.alpha,
        options={
            "target": definition.target,
            "index": definition.index,
            "sequential_tuning": definition.sequential_tuning,
            "min_exposures": definition.min_exposures,
            "min_conversions": definition.min_conversions,
            "holdout": definition.holdout,
            "rollout_fraction": definition.rollout_fraction,
            "baseline": definition.baseline,
            "mde": definition.mde,
            "allocation": definition.allocation,
            "bandit_floor": definition.bandit_floor,
            "covariate": definition.covariate,
        },
        state=(
            {"bandit": start_bandit(variants, [float(v["weight"]) for v in variants])}
            if definition.allocation == "bandit"
            else {}
        ),
    )
    session.add(experiment)
    session.flush()
    if campaign is not None:
        campaign.experiment_id = experiment.id
        session.add(campaign)
        session.flush()
    return experiment


def _resolve_templates(
    session: Session,
    spec: dict[str, Any],
    index: int,
    campaign: Campaign | None,
) -> dict[str, Any]:
    where = f"variants[{index}]"
    spec = dict(spec)
    template_id = spec.get("template_id")
    if template_id is not None:
        if session.get(Template, template_id) is None:
            raise ValidationError(
                f"no template with id {template_id}", field=f"{where}.template_id"
            )
        if spec.get("template_version") is not None:
            _version(session, template_id, spec["template_version"], f"{where}.template_version")
    subject = spec.get("subject")
    if subject is None:
        return spec
    if template_id is None:
        if campaign is None:
            raise ValidationError(
                "a subject override needs the template it changes: give the variant a "
                "template_id, or create the experiment with the campaign_id it runs on",
                field=f"{where}.subject",
            )
        template_id = campaign.template_id
    template = session.get(Template, template_id)
    assert template is not None
    number = spec.get("template_version")
    if number is None and campaign is not None and template_id == campaign.template_id:
        number = campaign.template_version
    base = _version(
        session, template_id, number or template.current_version, f"{where}.template_version"
    )
    _check_subject(subject, base, template.kind, variables=spec.get("variables", []), where=where)
    latest = session.execute(
        sa.select(sa.func.max(col(TemplateVersion.version))).where(
            col(TemplateVersion.template_id) == template_id
        )
    ).scalar_one()
    version = TemplateVersion(
        template_id=template_id,
        version=int(latest or 0) + 1,
        subject=subject,
        html=base.html,
        text=base.text,
    )
    session.add(version)
    session.flush()
    spec.update(template_id=template_id, template_version=version.version)
    return spec


def _version(session: Session, template_id: int, number: int, field: str) -> TemplateVersion:
    found = session.exec(
        select(TemplateVersion).where(
            TemplateVersion.template_id == template_id, TemplateVersion.version == number
        )
    ).first()
    if found is None:
        raise ValidationError(f"template {template_id} has no version {number}", field=field)
    return found


def _check_subject(
    subject: str,
    base: TemplateVersion,
    kind: str,
    *,
    variables: Sequence[str],
    where: str,
) -> None:
    from postwise.content.templates import Part, known_variables, validate_template

    try:
        known = known_variables(variables)
    except ValidationError as exc:
        message = str(exc).removeprefix(f"{exc.field}: ")
        raise ValidationError(message, field=f"{where}.variables") from None
    # The body was checked when its version was saved; only the new subject can be wrong.
    problems = [
        p
        for p in validate_template(subject, base.html, base.text, known_variables=known, kind=kind)
        if p.part == Part.SUBJECT
    ]
    if problems:
        raise ValidationError(
            "; ".join(str(p) for p in problems)
            + " (declare names beyond the contact fields in the variant's 'variables')",
            field=f"{where}.subject",
        )


def get_experiment(session: Session, ref: int | str) -> Experiment:
    """The experiment with this id or name."""
    if isinstance(ref, int) or str(ref).isdigit():
        experiment = session.get(Experiment, int(ref))
    else:
        experiment = session.exec(select(Experiment).where(Experiment.name == ref)).first()
    if experiment is None:
        raise NotFoundError(f"no experiment {ref!r}")
    return experiment


def list_experiments(
    session: Session, *, status: str | None = None, limit: int = 100
) -> list[Experiment]:
    """Experiments, newest first, optionally only those with ``status``."""
    query = select(Experiment).order_by(col(Experiment.id).desc()).limit(limit)
    if status is not None:
        query = query.where(Experiment.status == status)
    return list(session.exec(query))


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def experiment_dict(session: Session, experiment: Experiment) -> dict[str, Any]:
    """The experiment as the API and CLI show it, with the campaigns and triggers using it."""
    options = experiment.options or {}
    state = experiment.state or {}
    campaigns = session.execute(
        sa.select(col(Campaign.id))
        .where(col(Campaign.experiment_id) == experiment.id)
        .order_by(col(Campaign.id))
    ).scalars()
    triggers = session.execute(
        sa.select(col(Trigger.id))
        .where(col(Trigger.experiment_id) == experiment.id)
        .order_by(col(Trigger.id))
    ).scalars()
    return {
        "id": experiment.id,
        "name": experiment.name,
        "status": experiment.status,
        "target": options.get("target"),
        "variants": experiment.variants,
        "holdout": options.get("holdout", experiment.holdout),
        "rollout_fraction": options.get("rollout_fraction"),
        "held_back": experiment.holdout,
        "metric": experiment.metric,
        "method": experiment.method,
        "alpha": experiment.alpha,
        "index": options.get("index"),
        "sequential_tuning": options.get("sequential_tuning"),
        "min_exposures": options.get("min_exposures"),
        "min_conversions": options.get("min_conversions"),
        "winner": experiment.winner,
        "flagged": experiment.flagged,
        "looks": int(state.get("looks", 0)),
        "decision": state.get("decision"),
        "rollout": state.get("rollout"),
        "stopped_arms": state.get("stopped_arms") or {},
        "mde": options.get("mde"),
        "covariate": options.get("covariate"),
        "allocation": options.get("allocation", "fixed"),
        "campaign_ids": list(campaigns),
        "trigger_ids": list(triggers),
        "created_at": _iso(experiment.created_at),
        "decided_at": _iso(experiment.decided_at),
        "stopped_at": _iso(experiment.stopped_at),
    }


# -- assignment ---------------------------------------------------------------------------------


def assigner_weights(experiment: Experiment) -> tuple[tuple[str, float], ...]:
    """(name, weight) pairs normalised to sum to 1, as delivery hands them to the assigner."""
    return tuple(normalised(experiment.variants or [], f"experiment {experiment.id} "))


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


# -- looks --------------------------------------------------------------------------------------


def _closed_at(experiment: Experiment) -> datetime | None:
    return experiment.decided_at or experiment.stopped_at


def _analyze(
    runtime: Runtime, experiment: Experiment, counts: Sequence[VariantData]
) -> AnalysisResult:
    from postwise.experiments.state import SequentialState
    from postwise.experiments.stats import analyze

    options = experiment.options or {}
    stored = (experiment.state or {}).get("sequential")
    previous = SequentialState.from_dict(stored) if stored else None
    return analyze(
        counts,
        method=experiment.method,
        alpha=experiment.alpha,
        weights=[w for _, w in assigner_weights(experiment)],
        sequential_tuning=options.get("sequential_tuning"),
        index=options.get("index", "exposures"),
        min_exposures=int(options.get("min_exposures", 100)),
        min_conversions=int(options.get("min_conversions", 10)),
        previous=previous,
        tests=_stats_tests(runtime),
        # The mixture is tuned to the planned effect; a state recorded before mde was pinned
        # keeps the N*-tuned mixture it started with.
        mde=options.get("mde") if stored is None or "mde" in stored else None,
        stopped=stopped_arms(experiment),
    )


def _guard(
    connection: Connection | Session, experiment: Experiment, until: datetime | None, record: bool
) -> list[GuardrailResult]:
    """Test the guardrails; while running, stop (in the experiment's state) every harmful arm."""
    options = experiment.options or {}
    results = check_guardrails(
        guardrail_counts(connection, experiment, until=until),
        alpha=experiment.alpha,
        index=options.get("index", "exposures"),
    )
    if not record:
        return results
    state = dict(experiment.state or {})
    stopped = dict(state.get("stopped_arms") or {})
    for result in results:
        if result.harmful and result.variant not in stopped:
            stopped[result.variant] = {
                "reason": result.reason,
                "metric": result.metric,
                "look": int(state.get("looks", 0)) + 1,
                "at": utcnow().isoformat(),
            }
            log.warning("experiment %s: arm stopped: %s", experiment.id, result.reason)
    if stopped != (state.get("stopped_arms") or {}):
        state["stopped_arms"] = stopped
        experiment.state = state
    return results


def _lock(session: Session, ref: int | str) -> Experiment:
    """The experiment, locked against concurrent looks (PostgreSQL; SQLite serialises writes)."""
    if isinstance(ref, int) or str(ref).isdigit():
        where = col(Experiment.id) == int(ref)
    else:
        where = col(Experiment.name) == str(ref)
    experiment = session.exec(select(Experiment).where(where).with_for_update()).first()
    if experiment is None:
        raise NotFoundError(f"no experiment {ref!r}")
    return experiment


@dataclass(slots=True)
class _Look:
    """One look's outcome, before it is turned into the report."""

    analysis: AnalysisResult
    recorded: bool
    decision: str
    reason: str
    rollout_queued: bool = False


def _record(experiment: Experiment, analysis: AnalysisResult, test_is_final: bool) -> _Look:
    """Fold a look of a running experiment into its row; returns what the report says."""
    from postwise.experiments.stats import Decision

    state = dict(experiment.state or {})
    looks = int(state.get("looks", 0)) + 1
    state["looks"] = looks
    state["sequential"] = analysis.state.to_dict() if analysis.state is not None else None
    experiment.flagged = (
        f"sample-ratio mismatch at look {looks}: p = {analysis.srm_p_value:.2g}"[:_FLAG_LIMIT]
        if analysis.srm_flagged
        else None
    )
    decision, reason = analysis.decision.value, analysis.reason
    fixed_horizon = analysis.decision != Decision.DESCRIPTIVE_ONLY and analysis.state is None
    if fixed_horizon and not test_is_final:
        decision = "awaiting_planned_look"
        reason = (
            f"method {experiment.method!r} is valid for one planned look, so it decides only "
            "when the experiment is stopped at its planned sample (postwise experiments plan: "
            f"fixed_per_arm); at this look it would say: {analysis.reason}"
        )
    elif analysis.winner is not None:
        now = utcnow()
        experiment.winner = analysis.winner
        experiment.decided_at = now
        experiment.status = ExperimentStatus.DECIDED
        state["decision"] = {"winner": analysis.winner, "reason": reason, "look": looks}
    experiment.state = state
    return _Look(analysis, True, decision, reason)


def _closed_look(experiment: Experiment, analysis: AnalysisResult) -> _Look:
    if experiment.winner is None:
        return _Look(analysis, False, "stopped", "stopped without a winner")
    decided = (experiment.state or {}).get("decision") or {}
    return _Look(analysis, False, "winner", str(decided.get("reason") or analysis.reason))


def _look(runtime: Runtime, ref: int | str, *, stop: bool, ship: str | None) -> dict[str, Any]:
    from postwise.experiments.rollout import enqueue_rollout, request_rollout

    with runtime.session() as session:
        experiment = _lock(session, ref)
        assert experiment.id is not None
        if stop and experiment.status == ExperimentStatus.STOPPED:
            raise ConflictError(f"experiment {experiment.id} is stopped already")
        if ship is not None and ship not in {v["name"] for v in experiment.variants}:
            raise ValidationError(
                f"no variant {ship!r}; variants: "
                + ", ".join(v["name"] for v in experiment.variants),
                field="ship",
            )
        running = experiment.status == ExperimentStatus.RUNNING
        until = None if running else _closed_at(experiment)
        if len(experiment.variants) == 1:
            return _program_look(session, runtime, experiment, stop=stop)
        if (experiment.options or {}).get("allocation") == "bandit":
            return _bandit_report(session, experiment, stop=stop)
        counts = outcome_counts(session.connection(), experiment, until=until)
        guardrails = _guard(session.connection(), experiment, until, record=running)
        analysis = _analyze(runtime, experiment, counts)
        if running:
            look = _record(experiment, analysis, test_is_final=stop)
        else:
            look = _closed_look(experiment, analysis)
        if stop:
            experiment.status = ExperimentStatus.STOPPED
            experiment.stopped_at = utcnow()
            if ship is not None and experiment.winner not in (None, ship):
                raise ConflictError(
                    f"{experiment.winner} won this experiment; ship the winner or nothing"
                )
        look.rollout_queued = request_rollout(session, experiment, ship=ship)
        session.add(experiment)
        session.flush()
        report = _report(session, experiment, look)
        report["guardrails"] = [asdict(g) for g in guardrails]
        report["holdout"] = holdout_look(
            session.connection(),
            experiment,
            tests=_stats_tests(runtime),
            until=until,
            record=running,
        )
        session.add(experiment)
        experiment_id = experiment.id
    if look.rollout_queued:
        enqueue_rollout(runtime, experiment_id)
    return report


def _bandit_report(session: Session, experiment: Experiment, *, stop: bool) -> dict[str, Any]:
    """A look at a bandit: epoch-stratified comparison, then the next epoch's weights."""
    running = experiment.status == ExperimentStatus.RUNNING
    if running:
        state = dict(experiment.state or {})
        state["looks"] = int(state.get("looks", 0)) + 1
        experiment.state = state
    guardrails = _guard(session.connection(), experiment, None, record=running)
    look = bandit_look(session.connection(), experiment, record=running and not stop)
    winner = look["winner"] if running else experiment.winner
    if running and winner is not None:
        experiment.winner = winner
        experiment.decided_at = utcnow()
        experiment.status = ExperimentStatus.DECIDED
        state = dict(experiment.state or {})
        state["decision"] = {"winner": winner, "reason": look["reason"], "look": state["looks"]}
        experiment.state = state
    if stop:
        experiment.status = ExperimentStatus.STOPPED
        experiment.stopped_at = utcnow()
    session.add(experiment)
    session.flush()
    return {
        "experiment": experiment_dict(session, experiment),
        "decision": "winner" if winner else "not_significant",
        "winner": winner,
        "reason": look["reason"],
        "recorded": running,
        "analysis": look,
        "guardrails": [asdict(g) for g in guardrails],
        "holdout": None,
    }


def _program_look(
    session: Session, runtime: Runtime, experiment: Experiment, *, stop: bool
) -> dict[str, Any]:
    """A look at a program holdout: the program against the contacts it never mails."""
    running = experiment.status == ExperimentStatus.RUNNING
    until = None if running else _closed_at(experiment)
    if running:
        state = dict(experiment.state or {})
        state["looks"] = int(state.get("looks", 0)) + 1
        experiment.state = state
    program = holdout_look(
        session.connection(),
        experiment,
        tests=_stats_tests(runtime),
        until=until,
        record=running,
    )
    assert program is not None  # validated: a program experiment keeps a holdout
    if stop:
        experiment.status = ExperimentStatus.STOPPED
        experiment.stopped_at = utcnow()
    session.add(experiment)
    session.flush()
    return {
        "experiment": experiment_dict(session, experiment),
        "decision": program["analysis"]["decision"],
        "winner": None,
        "reason": program["reason"],
        "recorded": running,
        "analysis": program["analysis"],
        "guardrails": [],
        "holdout": program,
    }


def _report(session: Session, experiment: Experiment, look: _Look) -> dict[str, Any]:
    analysis = look.analysis.to_dict()
    analysis.pop("state", None)
    return {
        "experiment": experiment_dict(session, experiment),
        "decision": look.decision,
        "winner": experiment.winner,
        "reason": look.reason,
        "recorded": look.recorded,
        "analysis": analysis,
    }


def experiment_report(runtime: Runtime, ref: int | str) -> dict[str, Any]:
    """Take a look at an experiment: count, analyse, and record it while the experiment runs.

    Returns the report: the experiment, ``decision`` (the analysis's decision,
    ``awaiting_planned_look`` for a fixed-horizon test still running, ``winner`` or ``stopped``
    once closed), ``winner``, ``reason``, ``recorded`` (whether this look entered the
    experiment's record) and ``analysis`` (the full
    :meth:`~postwise.experiments.stats.AnalysisResult.to_dict`, per variant counts, rates,
    lifts with intervals, p-values and the Bayesian readout). A winner with automatic rollout
    configured queues the rollout (:mod:`postwise.experiments.rollout`).
    """
    return _look(runtime, ref, stop=False, ship=None)


def stop_experiment(runtime: Runtime, ref: int | str, *, ship: str | None = None) -> dict[str, Any]:
    """Stop an experiment after one last look, and return that look's report.

    For a running experiment the last look is recorded: the always-valid test may still
    declare a winner at it, and a fixed-horizon test (``chi2``) takes its one planned decision
    there. ``ship`` names a variant to roll out to the held-back audience when no winner was
    declared (a human decision, recorded as such); with a winner, only the winner can be
    shipped. A stopped experiment cannot be stopped again (ConflictError).
    """
    return _look(runtime, ref, stop=True, ship=ship)
