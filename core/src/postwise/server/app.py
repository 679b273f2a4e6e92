"""The Litestar application: ``create_app(settings) -> Litestar``.

Routes come from the ``postwise_register_routes`` hook (the built-in subsystems register theirs
exactly as plugins do), plus ``/health``. The OpenAPI document is served at ``/schema``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import sqlalchemy as sa
from litestar import Litestar, get
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.spec import Components, SecurityScheme

from postwise import __version__
from postwise.runtime import Runtime
from postwise.server.auth import require_api_key
from postwise.server.deps import provide_runtime, provide_session
from postwise.server.errors import EXCEPTION_HANDLERS
from postwise.settings import Settings

__all__ = ["create_app"]


@get("/health", sync_to_thread=True, tags=["health"])
def health(state: State) -> dict[str, Any]:
    """Liveness and readiness: the database and Redis answer."""
    runtime: Runtime = state.runtime
    checks: dict[str, str] = {}
    try:
        with runtime.engine.connect() as connection:
            connection.execute(sa.text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        checks["database"] = f"error: {type(exc).__name__}"
    try:
        runtime.redis.ping()
        checks["redis"] = "ok"
    except Exception as exc:
        checks["redis"] = f"error: {type(exc).__name__}"
    ok = all(v == "ok" for v in checks.values())
    return {"status": "ok" if ok else "degraded", "version": __version__, "checks": checks}


def create_app(settings: Settings | None = None, *, runtime: Runtime | None = None) -> Litestar:
    """The postwise server. Pass ``runtime`` to share connections and plugins with a host."""
    owned = runtime is None
    runtime = runtime if runtime is not None else Runtime(settings)

    @asynccontextmanager
    async def lifespan(_app: Litestar) -> AsyncIterator[None]:
        try:
            yield
        finally:
            if owned:
                runtime.close()

    handlers: list[Any] = [health]
    handlers.extend(entry.component for entry in runtime.plugins.registry("routes"))
    return Litestar(
        route_handlers=handlers,
        state=State({"runtime": runtime}),
        dependencies={
            "runtime": Provide(provide_runtime, sync_to_thread=False),
            "session": Provide(provide_session),
        },
        guards=[require_api_key],
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=[lifespan],
        openapi_config=OpenAPIConfig(
            title="postwise",
            version=__version__,
            path="/schema",
            components=Components(
                security_schemes={"apiKey": SecurityScheme(type="http", scheme="bearer")}
            ),
            security=[{"apiKey": []}],
        ),
        debug=False,
    )
