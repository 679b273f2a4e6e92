"""Bandit experiments as stored: epochs of fixed weights, counted and compared per epoch.

An experiment created with ``allocation: "bandit"`` keeps in ``experiment.state["bandit"]`` its
epochs: when each began and the weights delivery assigned with during it
(:class:`postwise.experiments.arms.Arms` reads the latest). Every look of a running bandit:

1. counts each contact once, at its first exposure in the experiment: the epoch that exposure
   fell in, its variant, and whether the contact converted on that variant's messages;
2. compares every arm with the control by :func:`postwise.experiments.bandit.compare_epochs`
   (Holm over the arms, the running minimum of each always-valid p-value kept in the state);
3. checks the split of every epoch against its weights (Pearson, as for fixed splits, the
   statistics summed over epochs): a mismatch withholds the decision;
4. while nothing is decided, starts a new epoch with Thompson weights from all counts so far.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import numpy as np
import sqlalchemy as sa
from scipy import special
from sqlalchemy.engine import Connection
from sqlmodel import Session

from postwise.db.models import Event, Experiment, Message, MessageStatus, as_utc, utcnow
from postwise.experiments.bandit import BANDIT_COST, compare_epochs, thompson_weights
from postwise.experiments.data import VariantData
from postwise.experiments.multiple import holm
from postwise.experiments.srm import SRM_THRESHOLD

__all__ = ["DEFAULT_FLOOR", "bandit_look", "current_weights", "start_bandit"]

#: Share of traffic no arm falls below, unless the experiment sets ``bandit_floor``.
DEFAULT_FLOOR = 0.1

_MESSAGE: sa.Table = Message.__table__  # type: ignore[attr-defined]
_EVENT: sa.Table = Event.__table__  # type: ignore[attr-defined]


def start_bandit(variants: Sequence[dict[str, Any]], weights: Sequence[float]) -> dict[str, Any]:
    """The initial bandit state: one epoch, starting now, at the configured weights."""
    return {"epochs": [{"start": utcnow().isoformat(), "weights": list(weights)}], "p_min": {}}


def current_weights(experiment: Experiment) -> list[float] | None:
    """The weights of the running epoch of a bandit; None for a fixed split."""
    bandit = (experiment.state or {}).get("bandit")
    if not bandit or not bandit.get("epochs"):
        return None
    return [float(w) for w in bandit["epochs"][-1]["weights"]]


def _epoch_counts(
    connection: Connection | Session, experiment: Experiment, starts: list[datetime]
) -> list[list[VariantData]]:
    names = [str(v["name"]) for v in experiment.variants]
    exposures = np.zeros((len(starts), len(names)), dtype=np.int64)
    conversions = np.zeros_like(exposures)
    converted_when = [
        _EVENT.c.type == experiment.metric,
        _EVENT.c.experiment_id == experiment.id,
        _EVENT.c.contact_id == _MESSAGE.c.contact_id,
        _EVENT.c.variant == _MESSAGE.c.variant,
    ]
    if experiment.metric in ("open", "click"):
        converted_when.append(sa.not_(_EVENT.c.automated))
    rows = connection.execute(
        sa.select(
            _MESSAGE.c.contact_id,
            _MESSAGE.c.variant,
            _MESSAGE.c.created_at,
            sa.exists().where(*converted_when),
        )
        .where(
            _MESSAGE.c.experiment_id == experiment.id,
            _MESSAGE.c.status == MessageStatus.ACCEPTED.value,
            _MESSAGE.c.variant.is_not(None),
            _MESSAGE.c.contact_id.is_not(None),
        )
        .order_by(_MESSAGE.c.contact_id, _MESSAGE.c.created_at)
    )
    index = {name: i for i, name in enumerate(names)}
    seen = None
    for contact_id, variant, created_at, did in rows:
        if contact_id == seen or variant not in index:
            continue
        seen = contact_id
        at = as_utc(created_at)
        epoch = max(0, sum(1 for s in starts if s <= at) - 1)
        exposures[epoch, index[variant]] += 1
        conversions[epoch, index[variant]] += int(bool(did))
    return [
        [
            VariantData(name, int(exposures[e, i]), int(conversions[e, i]))
            for i, name in enumerate(names)
        ]
        for e in range(len(starts))
    ]


def _srm(epochs: list[list[VariantData]], weights: list[list[float]]) -> float:
    statistic, dof = 0.0, 0
    for epoch, share in zip(epochs, weights, strict=True):
        observed = np.array([v.exposures for v in epoch], dtype=np.float64)
        total = observed.sum()
        if total == 0:
            continue
        expected = np.asarray(share) / np.sum(share) * total
        statistic += float(np.sum((observed - expected) ** 2 / expected))
        dof += len(observed) - 1
    return 1.0 if dof == 0 else float(special.chdtrc(dof, statistic))


def bandit_look(
    connection: Connection | Session, experiment: Experiment, *, record: bool
) -> dict[str, Any]:
    """Count, compare and (with ``record``) reallocate; returns the look's report fields."""
    state = dict(experiment.state or {})
    bandit = dict(state.get("bandit") or {})
    epochs_meta = list(bandit.get("epochs") or [])
    starts = [as_utc(datetime.fromisoformat(e["start"])) for e in epochs_meta]
    epochs = _epoch_counts(connection, experiment, starts)
    options = experiment.options or {}
    names = [str(v["name"]) for v in experiment.variants]
    totals = [
        VariantData(
            name,
            sum(e[i].exposures for e in epochs),
            sum(e[i].conversions for e in epochs),
        )
        for i, name in enumerate(names)
    ]
    comparisons = compare_epochs(
        epochs,
        alpha=experiment.alpha,
        mde=options.get("mde"),
        sequential_tuning=float(options.get("sequential_tuning") or 5000.0),
    )
    p_min = dict(bandit.get("p_min") or {})
    for c in comparisons:
        if c.p_value < p_min.get(c.variant, {}).get("p", 1.0):
            p_min[c.variant] = {"p": c.p_value, "direction": int(np.sign(c.absolute.estimate))}
    running_p = [p_min.get(c.variant, {}).get("p", 1.0) for c in comparisons]
    adjusted = list(holm(running_p))
    srm_p = _srm(epochs, [[float(w) for w in e["weights"]] for e in epochs_meta])
    minimum = int(options.get("min_exposures", 100))
    short = [v.name for v in totals if v.exposures < minimum]
    winner = None
    if srm_p < SRM_THRESHOLD:
        reason = f"sample-ratio mismatch across epochs (p = {srm_p:.2g}); no decision"
    elif short:
        reason = f"below the minimum sample ({minimum} exposures): {', '.join(short)}"
    else:
        better = [
            (c, p)
            for c, p in zip(comparisons, adjusted, strict=True)
            if p < experiment.alpha and p_min[c.variant]["direction"] > 0
        ]
        if better:
            best = max(better, key=lambda item: item[0].absolute.estimate)[0]
            winner = best.variant
            reason = (
                f"{winner} beats control {names[0]} over {best.epochs_used} epochs: absolute lift "
                f"{best.absolute.estimate * 100:+.3f} points (always-valid interval "
                f"{best.absolute.lower * 100:+.3f} to {best.absolute.upper * 100:+.3f}), "
                f"Holm-adjusted p = {min(p for _, p in better):.3g} < {experiment.alpha:g}"
            )
        else:
            reason = (
                "not significant: no arm beats the control yet "
                f"(smallest Holm-adjusted p = {min(adjusted):.3g})"
            )
    weights = None
    if record and winner is None:
        floor = float(options.get("bandit_floor") or DEFAULT_FLOOR)
        weights = list(thompson_weights(totals, floor=floor))
        epochs_meta.append({"start": utcnow().isoformat(), "weights": weights})
    if record:
        bandit.update(epochs=epochs_meta, p_min=p_min)
        state["bandit"] = bandit
        experiment.state = state
    return {
        "winner": winner,
        "reason": reason,
        "cost": BANDIT_COST,
        "guarantees": (
            "always-valid under changing weights: each epoch of fixed weights is a fair "
            "comparison, and the epochs are combined with weights that ignore outcomes "
            "(a martingale under the null); false winners <= alpha"
        ),
        "srm_p_value": srm_p,
        "next_weights": dict(zip(names, weights, strict=True)) if weights else None,
        "variants": [
            {"name": v.name, "exposures": v.exposures, "conversions": v.conversions} for v in totals
        ],
        "comparisons": [
            {
                "variant": c.variant,
                "p_value": running,
                "p_value_holm": p,
                "absolute_lift": {
                    "estimate": c.absolute.estimate,
                    "lower": c.absolute.lower,
                    "upper": c.absolute.upper,
                },
                "effective_per_arm": c.effective_per_arm,
            }
            for c, running, p in zip(comparisons, running_p, adjusted, strict=True)
        ],
        "epochs": len(epochs),
    }
