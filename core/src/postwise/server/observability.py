"""Per-request observability: a request id, request counts and latencies, and ``/metrics``."""

from __future__ import annotations

import re
import time
import uuid
from typing import Final

from litestar import Response, get
from litestar.datastructures import State
from litestar.types import ASGIApp, Message, Receive, Scope, Send

from postwise.ops.logs import REQUEST_ID
from postwise.ops.metrics import CONTENT_TYPE_LATEST, HTTP_LATENCY, HTTP_REQUESTS, render
from postwise.runtime import Runtime

__all__ = ["metrics", "observe_requests"]

#: A caller's request id is kept when it looks like one (no spaces, no control characters).
_REQUEST_ID: Final = re.compile(r"^[A-Za-z0-9._:-]{1,100}$")


def observe_requests(app: ASGIApp) -> ASGIApp:
    """Litestar middleware: set the request id, count the request and time it, by route."""

    async def middleware(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        given = _header(scope, b"x-request-id")
        request_id = given if given and _REQUEST_ID.match(given) else uuid.uuid4().hex
        token = REQUEST_ID.set(request_id)
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await app(scope, receive, send_with_id)
        finally:
            route = str(scope.get("path_template") or "unmatched")
            method = str(scope.get("method", ""))
            HTTP_REQUESTS.labels(method, route, str(status)).inc()
            HTTP_LATENCY.labels(method, route).observe(time.perf_counter() - started)
            REQUEST_ID.reset(token)

    return middleware


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value).decode("latin-1")
    return None


@get("/metrics", sync_to_thread=True, tags=["operations"], security=[], include_in_schema=False)
def metrics(state: State) -> Response[bytes]:
    """Prometheus metrics: this server's requests, and the shared state read from Redis."""
    runtime: Runtime = state.runtime
    return Response(render(runtime), media_type=CONTENT_TYPE_LATEST)
