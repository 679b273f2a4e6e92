"""``/v1/experiments``: create, list, show, report on and stop experiments; plan sample sizes.

Bodies are validated by :func:`postwise.experiments.service.validate_definition`, so the API
rejects exactly what the CLI and Python reject, naming the field (``{"error": "weights must
sum to 1, ...", "field": "variants"}``, status 422). ``GET /v1/experiments/{id}/report`` is a
look: while the experiment runs it is recorded (see docs/experiments.md).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from litestar import Controller, get, post
from litestar.params import Parameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED
from sqlmodel import Session

from postwise.errors import ValidationError
from postwise.experiments.service import (
    create_experiment,
    experiment_dict,
    experiment_report,
    get_experiment,
    list_experiments,
    stop_experiment,
)
from postwise.runtime import Runtime

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
    design = plan(
        numbers["baseline"],
        numbers["mde"],
        alpha=numbers.get("alpha", 0.05),
        power=numbers.get("power", 0.8),
        relative=relative,
        **whole,
    )
    return design.to_dict()


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
        status: str | None = None,
        limit: int = Parameter(default=100, ge=1, le=1000),
    ) -> dict[str, Any]:
        """Experiments, newest first; ``status`` filters (running, decided, stopped)."""
        rows = list_experiments(session, status=status, limit=limit)
        return {"experiments": [experiment_dict(session, e) for e in rows]}

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
        self, runtime: Runtime, experiment_id: int, data: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Stop after a last look; ``{"ship": "B"}`` rolls B out when nobody won."""
        body = data or {}
        _only(body, ("ship",))
        ship = body.get("ship")
        if ship is not None and not isinstance(ship, str):
            raise ValidationError(f"must be a variant name, got {ship!r}", field="ship")
        return stop_experiment(runtime, experiment_id, ship=ship)

    @post("/plan", sync_to_thread=True, status_code=HTTP_200_OK, opt={"scope": "read"})
    def plan(self, data: dict[str, Any]) -> dict[str, Any]:
        """Exposures per arm: fixed horizon, and the cap the always-valid test needs."""
        return plan_from(data)
