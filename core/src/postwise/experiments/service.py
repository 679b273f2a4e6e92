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
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Connection
from sqlmodel import Session, col, select

from postwise.db.models import (
    Experiment,
    utcnow,
)
from postwise.errors import ConflictError, NotFoundError, ValidationError
from postwise.experiments.arms import normalised, stopped_arms, variant_for
from postwise.experiments.bandit_runs import bandit_look
from postwise.experiments.data import VariantData
from postwise.experiments.guardrails import GuardrailResult, check_guardrails
from postwise.experiments.holdout import holdout_look

if TYPE_CHECKING:
    from postwise.experiments.stats import AnalysisResult
    from postwise.runtime import Runtime
from postwise.experiments.counting import guardrail_counts, outcome_counts
from postwise.experiments.definitions import (
    INDEX_BY_TARGET,
    METRICS,
    ExperimentDefinition,
    ExperimentStatus,
    create_experiment,
    experiment_dict,
    get_experiment,
    list_experiments,
    stats_tests,
    validate_definition,
)

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

#: Longest text stored in ``experiment.flagged``.
_FLAG_LIMIT = 200

# -- assignment ---------------------------------------------------------------------------------


def assigner_weights(experiment: Experiment) -> tuple[tuple[str, float], ...]:
    """(name, weight) pairs normalised to sum to 1, as delivery hands them to the assigner."""
    return tuple(normalised(experiment.variants or [], f"experiment {experiment.id} "))


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
        tests=stats_tests(runtime),
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
            tests=stats_tests(runtime),
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
        tests=stats_tests(runtime),
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
