"""Which arm a contact gets at send time: the one place that assigns variants.

Delivery (campaign dispatch and single sends) calls :meth:`Arms.load` once per send or page and
:meth:`Arms.assign` per recipient; the experiments service uses the same :func:`normalised`
weights for its sample-ratio check and :func:`variant_for`. Nothing else turns an experiment's
variants into an assignment.

``Arms.assign`` returns ``(variant, template_id, version)``:

- ``HOLDOUT``: the contact is held back (the holdout proper, or the share kept for an automatic
  rollout); delivery records a skipped message with that reason and sends nothing.
- a variant name: send that arm's template version; the message counts as an exposure.
- ``None``: send the given template version outside the experiment (the message carries the
  experiment id but no variant, so it counts for no arm). This is what a contact hashed into an
  arm that was stopped (a guardrail found it harmful) receives: the control's email, so nobody
  gets the harmful arm and no arm's counts move.

After a decision every contact gets the winner (or the shipped variant, else the control).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlmodel import Session

from postwise.db.models import Experiment, Template
from postwise.errors import NotFoundError, ValidationError
from postwise.experiments.assignment import VariantAssigner
from postwise.experiments.bandit_runs import current_weights

__all__ = ["HOLDOUT", "Arm", "Arms", "normalised", "stopped_arms", "variant_for"]

#: The ``variant`` of a held-back contact (never a variant name).
HOLDOUT = "holdout"


@dataclass(frozen=True, slots=True)
class Arm:
    """A variant with the template version it sends."""

    name: str
    template_id: int
    version: int


def normalised(variants: Sequence[Mapping[str, Any]], where: str = "") -> list[tuple[str, float]]:
    """(name, weight) pairs scaled to sum to 1; ValidationError on a broken definition.

    Definitions are validated when created; this catches rows edited by hand since.
    """
    pairs: list[tuple[str, float]] = []
    for index, spec in enumerate(variants):
        name, weight = spec.get("name"), spec.get("weight", 1.0)
        place = f"{where}variant {index}"
        if not isinstance(name, str) or not name or name == HOLDOUT:
            raise ValidationError(f"{place} needs a name (not {HOLDOUT!r})", field="variants")
        if (
            isinstance(weight, bool)
            or not isinstance(weight, int | float)
            or not math.isfinite(weight)
            or weight <= 0
        ):
            raise ValidationError(f"{place} needs a positive weight", field="variants")
        pairs.append((name, float(weight)))
    if not pairs:
        raise ValidationError(f"{where}has no variants to assign", field="variants")
    total = math.fsum(w for _, w in pairs)
    return [(name, weight / total) for name, weight in pairs]


def stopped_arms(experiment: Experiment) -> dict[str, str]:
    """Arms stopped while the experiment runs (name -> reason), e.g. by a guardrail."""
    stopped = (experiment.state or {}).get("stopped_arms") or {}
    return {str(name): str((info or {}).get("reason", "stopped")) for name, info in stopped.items()}


def _assigner(experiment: Experiment) -> VariantAssigner:
    where = f"experiment {experiment.id} "
    return VariantAssigner(
        experiment.id or 0, normalised(experiment.variants or [], where), holdout=experiment.holdout
    )


def variant_for(experiment: Experiment, contact_id: int | str) -> dict[str, Any] | None:
    """The variant definition ``contact_id`` is assigned in ``experiment``; None when held back.

    The hash assignment delivery applies (same key, weights and held-back share), whatever was
    decided or stopped since: it says which arm the contact is in.
    """
    name = _assigner(experiment).assign(contact_id)
    if name is None:
        return None
    return dict(next(v for v in experiment.variants if v["name"] == name))


class Arms:
    """The arms of one experiment at send time, each with its template version."""

    def __init__(
        self,
        arms: list[Arm],
        assigner: VariantAssigner,
        winner: Arm | None,
        stopped: Mapping[str, str],
    ) -> None:
        self.arms = {arm.name: arm for arm in arms}
        self.control = arms[0]
        self.assigner = assigner
        self.winner = winner
        self.stopped = dict(stopped)

    @classmethod
    def load(cls, session: Session, experiment: Experiment, template_id: int, version: int) -> Arms:
        """The arms of ``experiment`` for a send whose own template is ``template_id``/``version``.

        A variant without a template uses the send's; one without a version its template's
        current version. ValidationError / NotFoundError when the definition cannot be sent.
        """
        where = f"experiment {experiment.id} "
        weights = normalised(experiment.variants or [], where)
        bandit = current_weights(experiment)
        if bandit is not None and len(bandit) == len(weights):
            # A bandit assigns with its running epoch's weights (floors keep them positive).
            total = math.fsum(bandit)
            weights = [(name, w / total) for (name, _), w in zip(weights, bandit, strict=True)]
        arms: list[Arm] = []
        for index, spec in enumerate(experiment.variants or []):
            arm_template = int(spec.get("template_id") or template_id)
            arm_version = spec.get("template_version")
            if arm_version is None:
                if arm_template == template_id:
                    arm_version = version
                else:
                    template = session.get(Template, arm_template)
                    if template is None:
                        raise NotFoundError(
                            f"{where}variant {index}: template {arm_template} does not exist"
                        )
                    arm_version = template.current_version
            arms.append(Arm(str(spec["name"]), arm_template, int(arm_version)))
        assigner = VariantAssigner(experiment.id or 0, weights, holdout=experiment.holdout)
        winner = next((a for a in arms if a.name == experiment.winner), None)
        if winner is None and experiment.status != "running":
            # Stopped without a winner: the test is over, so nobody is assigned a variant or
            # held back any more. Everyone gets the shipped variant if one was named, else the
            # control (the first variant).
            shipped = ((experiment.state or {}).get("rollout") or {}).get("variant")
            winner = next((a for a in arms if a.name == shipped), arms[0])
        return cls(arms, assigner, winner, stopped_arms(experiment))

    def assign(self, contact_id: int) -> tuple[str | None, int, int]:
        """(variant, template id, version): see the module docstring for HOLDOUT and None."""
        if self.winner is not None:
            return self.winner.name, self.winner.template_id, self.winner.version
        name = self.assigner.assign(contact_id)
        if name is None:
            return HOLDOUT, self.control.template_id, self.control.version
        if name in self.stopped:
            return None, self.control.template_id, self.control.version
        arm = self.arms[name]
        return arm.name, arm.template_id, arm.version
