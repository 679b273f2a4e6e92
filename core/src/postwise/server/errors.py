"""Every error answer is an RFC 9457 problem (``application/problem+json``), never a traceback.

A problem body has ``type`` (a URN naming the kind of problem, listed in docs/api.md),
``title`` (the kind in words), ``status`` (the HTTP status), ``detail`` (what was wrong and what
to do about it) and, when one field is at fault, ``field`` (its path in the body, query or path:
``conditions.all[1].config.hours``, ``contact_id``). ``errors`` lists every fault when there
are several (``[{"field": ..., "detail": ...}]``).

Controllers raise :class:`~postwise.errors.PostwiseError` subclasses (or litestar's HTTP
exceptions); the handlers here turn them into problems. :func:`problem` builds one by hand for
an answer that is not an exception.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException

from postwise.errors import (
    ComplianceError,
    ConfigurationError,
    ConflictError,
    NotFoundError,
    PostwiseError,
    ValidationError,
)

__all__ = [
    "EXCEPTION_HANDLERS",
    "PROBLEM_MEDIA_TYPE",
    "FieldProblem",
    "Problem",
    "ProblemError",
    "error_body",
    "problem",
    "problem_body",
]

log = logging.getLogger(__name__)

PROBLEM_MEDIA_TYPE = "application/problem+json"

#: status -> (type slug, title) of the problems postwise answers.
KINDS: dict[int, tuple[str, str]] = {
    400: ("malformed-request", "Malformed request"),
    401: ("unauthenticated", "API key missing or invalid"),
    403: ("forbidden", "The API key lacks the scope this needs"),
    404: ("not-found", "Not found"),
    405: ("method-not-allowed", "Method not allowed"),
    409: ("conflict", "Conflict with the current state"),
    413: ("payload-too-large", "Request body too large"),
    415: ("unsupported-media-type", "Unsupported media type"),
    422: ("validation-error", "Invalid request"),
    429: ("rate-limited", "Too many requests"),
    500: ("internal-error", "Internal error"),
    503: ("unavailable", "A backing service is unavailable"),
}


def problem_type(status: int) -> str:
    slug = KINDS.get(status, ("http-error", ""))[0]
    return f"urn:postwise:problem:{slug}"


class FieldProblem(msgspec.Struct, omit_defaults=True):
    """One invalid field."""

    detail: str
    field: str | None = None
    #: The position in a batch (``POST /v1/events`` with an array).
    index: int | None = None


class Problem(msgspec.Struct, omit_defaults=True):
    """An RFC 9457 problem: what went wrong and what to do about it."""

    type: str
    title: str
    status: int
    detail: str
    #: The path of the offending field (body, query or path parameter), when one is at fault.
    field: str | None = None
    #: Every fault, when there are several.
    errors: list[FieldProblem] | None = None


def problem_body(
    status: int,
    detail: str,
    *,
    field: str | None = None,
    errors: Sequence[Mapping[str, Any]] | None = None,
    title: str | None = None,
    kind: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The JSON object of a problem (extension members in ``extra``)."""
    body: dict[str, Any] = {
        "type": f"urn:postwise:problem:{kind}" if kind else problem_type(status),
        "title": title or KINDS.get(status, ("", "Error"))[1] or "Error",
        "status": status,
        "detail": detail,
    }
    if field:
        body["field"] = field
    if errors:
        body["errors"] = [dict(e) for e in errors]
    body.update({k: v for k, v in extra.items() if v is not None})
    return body


def problem(
    status: int,
    detail: str,
    *,
    field: str | None = None,
    errors: Sequence[Mapping[str, Any]] | None = None,
    headers: Mapping[str, str] | None = None,
    title: str | None = None,
    kind: str | None = None,
    **extra: Any,
) -> Response[Any]:
    """An ``application/problem+json`` response."""
    return Response(
        problem_body(status, detail, field=field, errors=errors, title=title, kind=kind, **extra),
        status_code=status,
        headers=dict(headers or {}),
        media_type=PROBLEM_MEDIA_TYPE,
    )


def error_body(message: str, *, field: str | None = None, **extra: Any) -> dict[str, Any]:
    """A 422 problem body (kept for callers that build their own ``Response``)."""
    return problem_body(422, message, field=field, **extra)


class ProblemError(HTTPException):
    """Raise to answer with a problem of any status (``field`` names the culprit)."""

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        field: str | None = None,
        headers: Mapping[str, str] | None = None,
        errors: Sequence[Mapping[str, Any]] | None = None,
    ) -> None:
        super().__init__(detail=detail, status_code=status, headers=dict(headers or {}))
        self.field = field
        self.errors = list(errors or [])


def _status_for(exc: PostwiseError) -> int:
    if isinstance(exc, NotFoundError):
        return 404
    if isinstance(exc, ConflictError | ComplianceError):
        return 409
    if isinstance(exc, ValidationError | ConfigurationError):
        return 422
    return 422


def _postwise_error(_request: Request[Any, Any, Any], exc: PostwiseError) -> Response[Any]:
    field = getattr(exc, "field", None)
    message = str(exc)
    if field and message.startswith(f"{field}: "):
        message = message[len(field) + 2 :]
    status = _status_for(exc)
    kind = "compliance" if isinstance(exc, ComplianceError) else None
    title = "Blocked by a compliance rule" if kind else None
    return problem(status, message, field=field, kind=kind, title=title)


_UNKNOWN_FIELD = re.compile(r"unknown field `([^`]*)`")
_AT_PATH = re.compile(r" - at `\$(\.?[^`]*)`$")


_PLAIN: list[tuple[re.Pattern[str], str]] = [
    (re.compile(r"^Expected `str` matching regex '(.*)'$"), "must match the pattern {0}"),
    (re.compile(r"^Expected `str` of length <= (\d+)$"), "must be at most {0} characters"),
    (re.compile(r"^Expected `str` of length >= (\d+)$"), "must be at least {0} characters"),
    (re.compile(r"^Expected `(?:int|float|number)` <= (\S+)$"), "must be at most {0}"),
    (re.compile(r"^Expected `(?:int|float|number)` >= (\S+)$"), "must be at least {0}"),
    (re.compile(r"^Expected `array` of length <= (\d+)$"), "must have at most {0} items"),
    (re.compile(r"^Expected `object` of length <= (\d+)$"), "must have at most {0} entries"),
]
_MISSING = re.compile(r"^Object missing required field `([^`]*)`$")


def _plain(message: str) -> str:
    for pattern, template in _PLAIN:
        match = pattern.match(message)
        if match:
            return template.format(*match.groups())
    return message


def _field_of(item: Mapping[str, Any]) -> tuple[str | None, str]:
    """The field path and message of one of litestar's validation ``extra`` entries."""
    message = str(item.get("message", "invalid value"))
    key = item.get("key")
    source = item.get("source")
    path = ""
    at = _AT_PATH.search(message)
    if at:
        message = message[: at.start()]
        path = at.group(1).lstrip(".")
    missing = _MISSING.match(message)
    if missing:
        name = missing.group(1)
        return (f"{path}.{name}" if path else name), "is required"
    message = _plain(message)
    unknown = _UNKNOWN_FIELD.search(message)
    if unknown:
        name = unknown.group(1)
        path = f"{path}.{name}" if path else name
        return path, "unknown field; remove it (see the OpenAPI document for the fields allowed)"
    if source == "body":
        if key and key != "data":
            path = f"{key}.{path}" if path else str(key)
        return path or None, message
    return (str(key) if key else None), message


def _validation_problem(exc: ValidationException) -> Response[Any]:
    extra = exc.extra if isinstance(exc.extra, list) else []
    if not extra:
        # Litestar raises this without details for bodies it cannot decode.
        return problem(400, _decode_detail(exc.detail), headers=exc.headers)
    errors = []
    for item in extra:
        if isinstance(item, Mapping):
            field, message = _field_of(item)
            errors.append({"field": field, "detail": message} if field else {"detail": message})
    first = errors[0] if errors else {"detail": exc.detail}
    return problem(
        422,
        str(first["detail"]),
        field=first.get("field"),
        errors=errors if len(errors) > 1 else None,
        headers=exc.headers,
    )


def _decode_detail(detail: str) -> str:
    if "UTF-8" in detail:
        return "the body is not valid UTF-8; send UTF-8 encoded JSON"
    if "JSON" in detail or "malformed" in detail.lower():
        return f"the body is not valid JSON: {detail}"
    return detail


def _http_error(_request: Request[Any, Any, Any], exc: HTTPException) -> Response[Any]:
    if isinstance(exc, ProblemError):
        return problem(
            exc.status_code, exc.detail, field=exc.field, errors=exc.errors, headers=exc.headers
        )
    if isinstance(exc, ValidationException):
        return _validation_problem(exc)
    detail = exc.detail
    if exc.status_code == 413:
        detail = "the request body is larger than this endpoint accepts; send less per request"
    elif exc.status_code == 404 and detail in ("Not Found", ""):
        detail = "no such endpoint or object"
    elif exc.status_code == 405:
        detail = f"{detail}; see the OpenAPI document at /schema for the methods allowed"
    errors = exc.extra if isinstance(exc.extra, list) else None
    return problem(exc.status_code, detail, errors=errors, headers=exc.headers)


def _unexpected(request: Request[Any, Any, Any], exc: Exception) -> Response[Any]:
    from redis.exceptions import ConnectionError as RedisConnectionError
    from sqlalchemy.exc import DataError, IntegrityError, OperationalError

    if isinstance(exc, RedisConnectionError | OperationalError):
        log.warning("backing service unavailable on %s: %s", request.url.path, type(exc).__name__)
        return problem(
            503, "a backing service is unavailable; retry shortly", headers={"Retry-After": "5"}
        )
    if isinstance(exc, RecursionError):
        return problem(400, "the body is nested too deeply")
    if isinstance(exc, DataError):
        # A value the database cannot store (an integer out of range, a NUL character) that
        # validation let through: the transaction was rolled back, nothing was written.
        log.warning("database refused a value on %s %s", request.method, request.url.path)
        return problem(422, "a value is out of range or contains characters that cannot be stored")
    if isinstance(exc, IntegrityError):
        log.warning("integrity conflict on %s %s", request.method, request.url.path)
        return problem(
            409, "the change conflicts with data written at the same time; retry the request"
        )
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return problem(500, "internal error; it has been logged")


EXCEPTION_HANDLERS: dict[Any, Any] = {
    PostwiseError: _postwise_error,
    HTTPException: _http_error,
    Exception: _unexpected,
}
