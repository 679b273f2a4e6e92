"""Map postwise errors to HTTP answers: a 4xx with a message saying what to fix, never a 500."""

from __future__ import annotations

import logging
from typing import Any

from litestar import MediaType, Request, Response
from litestar.exceptions import HTTPException
from litestar.status_codes import (
    HTTP_404_NOT_FOUND,
    HTTP_409_CONFLICT,
    HTTP_422_UNPROCESSABLE_ENTITY,
    HTTP_500_INTERNAL_SERVER_ERROR,
    HTTP_503_SERVICE_UNAVAILABLE,
)

from postwise.errors import (
    ComplianceError,
    ConfigurationError,
    ConflictError,
    NotFoundError,
    PostwiseError,
    ValidationError,
)

__all__ = ["EXCEPTION_HANDLERS", "error_body"]

log = logging.getLogger(__name__)


def error_body(message: str, *, field: str | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"error": message}
    if field:
        body["field"] = field
    body.update(extra)
    return body


def _status_for(exc: PostwiseError) -> int:
    if isinstance(exc, NotFoundError):
        return HTTP_404_NOT_FOUND
    if isinstance(exc, ConflictError | ComplianceError):
        return HTTP_409_CONFLICT
    if isinstance(exc, ValidationError | ConfigurationError):
        return HTTP_422_UNPROCESSABLE_ENTITY
    return HTTP_422_UNPROCESSABLE_ENTITY


def _postwise_error(_request: Request[Any, Any, Any], exc: PostwiseError) -> Response[Any]:
    field = getattr(exc, "field", None)
    message = str(exc)
    if field and message.startswith(f"{field}: "):
        message = message[len(field) + 2 :]
    return Response(
        error_body(message, field=field), status_code=_status_for(exc), media_type=MediaType.JSON
    )


def _http_error(_request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    body = error_body(exc.detail)
    if exc.extra:
        body["details"] = exc.extra
    return Response(
        body, status_code=exc.status_code, headers=exc.headers, media_type=MediaType.JSON
    )


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from sqlalchemy.exc import OperationalError

    if isinstance(exc, RedisConnectionError | OperationalError):
        log.warning("backing service unavailable on %s: %s", request.url.path, type(exc).__name__)
        return Response(
            error_body("a backing service is unavailable; retry shortly"),
            status_code=HTTP_503_SERVICE_UNAVAILABLE,
            headers={"Retry-After": "5"},
            media_type=MediaType.JSON,
        )
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return Response(
        error_body("internal error; it has been logged"),
        status_code=HTTP_500_INTERNAL_SERVER_ERROR,
        media_type=MediaType.JSON,
    )


EXCEPTION_HANDLERS: dict[Any, Any] = {
    PostwiseError: _postwise_error,
    HTTPException: _http_error,
    Exception: _unexpected,
}
