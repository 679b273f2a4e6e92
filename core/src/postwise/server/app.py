"""The Litestar application: ``create_app(settings) -> Litestar``.

Routes come from the ``postwise_register_routes`` hook (the built-in subsystems register theirs
exactly as plugins do), plus ``/health``. The OpenAPI document is served at ``/schema``; every
operation in it lists the problem answers (RFC 9457) it can give, and only ``/v1`` operations
need an API key (:func:`document_problems`).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from litestar import Litestar, Request, Response
from litestar.datastructures import State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig, ResponseSpec
from litestar.openapi.spec import Components, SecurityScheme
from litestar.routes import HTTPRoute

from postwise import __version__
from postwise.plugins import ROUTES
from postwise.runtime import Runtime
from postwise.server.auth import is_protected, require_api_key, required_scopes
from postwise.server.deps import provide_runtime, provide_session
from postwise.server.errors import EXCEPTION_HANDLERS, KINDS, PROBLEM_MEDIA_TYPE, Problem
from postwise.server.health import health, live
from postwise.server.observability import metrics, observe_requests
from postwise.server.openapi import refine_openapi
from postwise.server.validation import check_request
from postwise.settings import Settings

__all__ = ["create_app", "document_problems"]

_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
_WHEN: dict[int, str] = {
    400: "The body is not valid JSON or UTF-8, or is nested too deeply.",
    401: "No API key, or one that is invalid or revoked.",
    403: "The API key lacks the scope this operation needs.",
    404: "The object named in the path does not exist.",
    409: "The request conflicts with the current state.",
    413: "The body is larger than the server accepts.",
    415: "The body is not sent as application/json.",
    422: "A field or parameter is invalid; ``field`` names it.",
    429: "The API key made too many requests; retry after ``Retry-After`` seconds.",
    503: "The database or Redis is unavailable; retry after ``Retry-After`` seconds.",
}


def _problem_statuses(route: HTTPRoute, method: str, handler: Any) -> list[int]:
    statuses = [503]
    declared: tuple[int, ...] = tuple(handler.opt.get("problems", ()))
    statuses.extend(declared)
    if route.path_parameters:
        statuses += [404, 422]
    if handler.parsed_fn_signature.parameters:
        statuses.append(422)
    if is_protected(route.path):
        statuses += [401, 403, 429]
        if method in _BODY_METHODS:
            # 404: a body can name an object (a template, an experiment) that does not exist.
            statuses += [400, 404, 409, 413, 415, 422]
        elif method == "DELETE":
            statuses.append(409)
    return sorted(set(statuses))


def document_problems(app: Litestar) -> None:
    """Document on every operation the problems it answers, and the key only ``/v1`` needs.

    Runs once on the finished app: the handlers' ``responses`` and ``security`` are read when the
    OpenAPI document is first built."""
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            if not handler.include_in_schema:
                continue
            method = sorted(handler.http_methods)[0]
            responses = dict(handler.responses or {})
            for status in _problem_statuses(route, method, handler):
                if str(status) in {str(k) for k in responses} or status == handler.status_code:
                    continue
                description = _WHEN.get(status, KINDS.get(status, ("", "Error"))[1])
                if status == 403:
                    scopes = " or ".join(required_scopes(handler, method))
                    description = f"The API key lacks the {scopes} scope."
                responses[status] = ResponseSpec(
                    data_container=Problem,
                    description=description,
                    media_type=PROBLEM_MEDIA_TYPE,
                    generate_examples=False,
                )
            handler.responses = responses
            if is_protected(route.path):
                handler.security = [{"apiKey": []}]


async def _before_request(request: Request[Any, Any, Any]) -> Response[None] | None:
    if request.method == "OPTIONS":
        # Litestar's automatic OPTIONS answer lists the methods of the first handler registered
        # on a path; answer with every method the path has.
        allow: dict[str, str] = request.app.state.allow
        handler_paths = request.scope["route_handler"].paths
        methods = allow.get(next(iter(handler_paths), ""), "")
        if methods:
            return Response(None, status_code=204, headers={"Allow": methods})
    await check_request(request)
    return None


def _allow_by_path(app: Litestar) -> dict[str, str]:
    return {
        route.path: ", ".join(sorted(route.methods))
        for route in app.routes
        if isinstance(route, HTTPRoute)
    }


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

    handlers: list[Any] = [health, live, metrics]
    handlers.extend(entry.component for entry in runtime.plugins.registry(ROUTES))
    app = Litestar(
        route_handlers=handlers,
        state=State({"runtime": runtime}),
        dependencies={
            "runtime": Provide(provide_runtime, sync_to_thread=False),
            "session": Provide(provide_session),
        },
        guards=[require_api_key],
        middleware=[observe_requests],
        before_request=_before_request,
        request_max_body_size=runtime.settings.api_max_body_bytes,
        exception_handlers=EXCEPTION_HANDLERS,
        lifespan=[lifespan],
        openapi_config=OpenAPIConfig(
            title="postwise",
            version=__version__,
            path="/schema",
            components=Components(
                security_schemes={"apiKey": SecurityScheme(type="http", scheme="bearer")}
            ),
        ),
        debug=False,
    )
    document_problems(app)
    refine_openapi(app)
    app.state.allow = _allow_by_path(app)
    return app
