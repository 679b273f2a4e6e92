"""``/health`` (readiness, for load balancers and deploys) and ``/health/live`` (liveness)."""

from __future__ import annotations

from typing import Any

from litestar import Response, get
from litestar.datastructures import State
from litestar.openapi import ResponseSpec
from litestar.status_codes import HTTP_200_OK, HTTP_503_SERVICE_UNAVAILABLE

from postwise import __version__
from postwise.ops.health import readiness
from postwise.runtime import Runtime

__all__ = ["health", "live"]


@get(
    "/health",
    sync_to_thread=True,
    tags=["health"],
    security=[],
    responses={
        503: ResponseSpec(
            data_container=dict[str, Any],
            description="Not ready: the same body, listing the problems and what to do.",
            generate_examples=False,
        )
    },
)
def health(state: State) -> Response[dict[str, Any]]:
    """Ready: the database and Redis answer, every required process beats, nothing lags.

    503 lists the problems, each with what to do.
    """
    runtime: Runtime = state.runtime
    result = readiness(runtime)
    body = {"version": __version__, **result.to_dict()}
    return Response(body, status_code=HTTP_200_OK if result.ready else HTTP_503_SERVICE_UNAVAILABLE)


@get("/health/live", sync_to_thread=False, tags=["health"], security=[])
def live() -> dict[str, str]:
    """Alive: this server process answers (nothing else is checked)."""
    return {"status": "ok", "version": __version__}
