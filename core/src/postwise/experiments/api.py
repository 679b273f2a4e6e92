"""``/v1/experiments``: create, list, show, report on and stop experiments; plan sample sizes.

Bodies are validated by :func:`postwise.experiments.service.validate_definition`, so the API
rejects exactly what the CLI and Python reject, naming the field (``{"detail": "weights must
sum to 1, ...", "field": "variants"}``, status 422). ``GET /v1/experiments/{id}/report`` is a
look: while the experiment runs it is recorded (see docs/experiments.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, get, post
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED
from sqlmodel import Session, col, select

from postwise.db.models import Experiment
from postwise.errors import ValidationError
from postwise.experiments.service import (
    create_experiment,
    experiment_dict,
    experiment_report,
    get_experiment,
    stop_experiment,
)
from postwise.runtime import Runtime
from postwise.server.dto import Body
from postwise.server.pagination import After, Limit, next_after

__all__ = ["ExperimentsController", "plan_from"]

_PLAN_FIELDS = ("baseline", "mde", "alpha", "power", "variants", "looks", "relative")


def _only(data: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise ValidationError(
            f"unknown field {unknown[0]!r}; expected {', '.join(allowed)}", field=unknown[0]
        )


def plan_from(data: Mapping[str, Any]) -> dict[str, Any]:
    """The sample-size plan for a JSON body (``baseline`` and ``mde`` required)."""
    from postwise.experiments.planning import plan

    _only(data, _PLAN_FIELDS)
    numbers: dict[str, float] = {}
    for key in ("baseline", "mde", "alpha", "power"):
        value = data.get(key)
        if value is None:
            if key in ("baseline", "mde"):
                raise ValidationError("is required", field=key)
            continue
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise ValidationError(f"must be a number, got {value!r}", field=key)
        numbers[key] = float(value)
    whole: dict[str, int] = {}
    for key in ("variants", "looks"):
        value = data.get(key)
        if value is not None:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValidationError(f"must be a whole number, got {value!r}", field=key)
            whole[key] = value
    relative = data.get("relative", True)
    if not isinstance(relative, bool):
        raise ValidationError(f"must be true or false, got {relative!r}", field="relative")
    try:
        design = plan(
            numbers["baseline"],
            numbers["mde"],
            alpha=numbers.get("alpha", 0.05),
            power=numbers.get("power", 0.8),
            relative=relative,
            **whole,
        )
    except (ArithmeticError, ValueError) as exc:
        # Extreme inputs (alpha near 0, power near 1) leave the numeric range of the solver.
        raise ValidationError(
            f"cannot plan for these inputs ({exc}); use an alpha and power in the usual ranges "
            "(alpha 0.001-0.2, power 0.5-0.99)"
        ) from None
    return design.to_dict()


class PlanIn(Body):
    """What to plan for: a baseline rate and the smallest lift worth detecting."""

    #: The control's conversion rate (0 < baseline < 1).
    baseline: Annotated[float, msgspec.Meta(gt=0, lt=1, examples=[0.04])]
    #: The smallest lift worth detecting: relative (0.10 = +10%) unless ``relative`` is false.
    mde: Annotated[float, msgspec.Meta(gt=0, le=1e6, examples=[0.1])]
    alpha: Annotated[float, msgspec.Meta(gt=0, lt=0.5)] | None = None
    power: Annotated[float, msgspec.Meta(ge=0.5, lt=1)] | None = None
    variants: Annotated[int, msgspec.Meta(ge=2, le=1000)] | None = None
    #: Evenly spaced looks the sequential cap assumes (at most 100 here: the planner's time
    #: grows with them, about 15 ms each; the CLI plans for up to 500).
    looks: Annotated[int, msgspec.Meta(ge=1, le=100)] | None = None
    relative: bool = True


class StopIn(Body):
    """Optionally, the variant to roll out when nobody won."""

    ship: Annotated[str, msgspec.Meta(min_length=1, max_length=100, examples=["B"])] | None = None


class ExperimentsController(Controller):
    path = "/v1/experiments"
    tags = ["experiments"]

    @post("/", sync_to_thread=True, status_code=HTTP_201_CREATED)
    def create(self, session: Session, runtime: Runtime, data: dict[str, Any]) -> dict[str, Any]:
        """Create a running experiment (see docs/experiments.md for the definition)."""
        experiment = create_experiment(session, runtime, data)
        return experiment_dict(session, experiment)

    @get("/", sync_to_thread=True)
    def list_all(
        self,
        session: Session,
        status: Literal["running", "decided", "stopped"] | None = None,
        after: After = 0,
        limit: Limit = 100,
    ) -> dict[str, Any]:
        """Experiments in id order, paged by ``after``; ``status`` filters."""
        query = select(Experiment).where(col(Experiment.id) > after)
        if status is not None:
            query = query.where(Experiment.status == status)
        rows = list(session.exec(query.order_by(col(Experiment.id)).limit(limit)))
        return {
            "experiments": [experiment_dict(session, e) for e in rows],
            "next_after": next_after(rows, limit),
        }

    @get("/{experiment_id:int}", sync_to_thread=True)
    def show(self, session: Session, experiment_id: int) -> dict[str, Any]:
        """The experiment's definition, status, winner and rollout (no look is taken)."""
        return experiment_dict(session, get_experiment(session, experiment_id))

    @get("/{experiment_id:int}/report", sync_to_thread=True)
    def report(self, runtime: Runtime, experiment_id: int) -> dict[str, Any]:
        """Take a look: counts, lifts, p-values, the decision; recorded while running."""
        return experiment_report(runtime, experiment_id)

    @post("/{experiment_id:int}/stop", sync_to_thread=True, status_code=HTTP_200_OK)
    def stop(
        self, runtime: Runtime, experiment_id: int, data: StopIn | None = None
    ) -> dict[str, Any]:
        """Stop after a last look; ``{"ship": "B"}`` rolls B out when nobody won."""
        return stop_experiment(runtime, experiment_id, ship=data.ship if data else None)

    @post("/plan", sync_to_thread=True, status_code=HTTP_200_OK, opt={"scope": "read"})
    def plan(self, data: PlanIn) -> dict[str, Any]:
        """Exposures per arm: fixed horizon, and the cap the always-valid test needs."""
        return plan_from({k: v for k, v in msgspec.structs.asdict(data).items() if v is not None})
