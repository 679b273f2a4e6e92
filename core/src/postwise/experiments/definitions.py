"""Experiment definitions: validate, create, read and list them.

An experiment's definition (variants with weights, the holdout, the metric, the stats test,
alpha, the sequential test's index, N* and planned effect, the covariate, the allocation) is
validated once, when it is created, and never changes afterwards: an always-valid test must keep
its settings for its whole life.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from postwise.content.templates import Part, known_variables, validate_template
from postwise.db.models import (
    Campaign,
    CampaignStatus,
    Experiment,
    Template,
    TemplateVersion,
    Trigger,
)
from postwise.errors import ConflictError, NotFoundError, ValidationError
from postwise.experiments.arms import HOLDOUT
from postwise.experiments.bandit import BANDIT_COST
from postwise.experiments.bandit_runs import DEFAULT_FLOOR, start_bandit
from postwise.experiments.data import WEIGHT_SUM_TOLERANCE

if TYPE_CHECKING:
    from postwise.runtime import Runtime
    from postwise.settings import Settings

__all__ = [
    "COVARIATES",
    "INDEX_BY_TARGET",
    "METRICS",
    "ExperimentDefinition",
    "ExperimentStatus",
    "create_experiment",
    "experiment_dict",
    "get_experiment",
    "list_experiments",
    "stats_tests",
    "validate_definition",
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


def stats_tests(runtime: Runtime) -> dict[str, Any]:
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
        data, settings=runtime.settings, stats_tests=list(stats_tests(runtime))
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
