"""Authentication, scopes and per-key rate limits for every route under ``/v1``.

Every ``/v1`` route needs ``Authorization: Bearer <API key>``. The guard is applied to the
whole application and decides by path, so a plugin cannot publish a ``/v1`` route without
authentication by forgetting a guard. Public endpoints (tracking, unsubscribe, consent links,
provider and CRM webhooks) live outside ``/v1`` and authenticate by signed tokens or provider
signatures.

Scopes (:data:`postwise.apikeys.SCOPES`): a route needs ``read`` for GET and ``write`` for
anything else unless its handler says otherwise with ``opt={"scope": "send"}`` (or a tuple of
scopes, any of which will do). A key without it gets 403 naming the scope.

Rate limits: each key may make ``ApiKey.rate_limit`` (or ``Settings.api_rate_limit_per_minute``)
requests per minute, counted in Redis so every server process shares the count; beyond it the
answer is 429 with ``Retry-After``.
"""

from __future__ import annotations

import time
from typing import Any

from litestar.connection import ASGIConnection
from litestar.handlers.base import BaseRouteHandler

from postwise.apikeys import granted_scopes, verify_api_key
from postwise.runtime import Runtime
from postwise.server.errors import ProblemError

__all__ = ["PROTECTED_PREFIX", "is_protected", "require_api_key", "required_scopes"]

PROTECTED_PREFIX = "/v1"
_READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_WINDOW_SECONDS = 60


def is_protected(path: str) -> bool:
    return path == PROTECTED_PREFIX or path.startswith(PROTECTED_PREFIX + "/")


def required_scopes(handler: BaseRouteHandler, method: str) -> tuple[str, ...]:
    """The scopes (any one of them) ``handler`` needs for ``method``."""
    declared: Any = handler.opt.get("scope")
    if isinstance(declared, str):
        return (declared,)
    if declared:
        return tuple(declared)
    return ("read",) if method.upper() in _READ_METHODS else ("write",)


def _check_rate(runtime: Runtime, key_id: int, limit: int) -> None:
    now = time.time()
    window = int(now // _WINDOW_SECONDS)
    name = f"postwise:api-rate:{key_id}:{window}"
    pipe = runtime.redis.pipeline(transaction=False)
    pipe.incr(name)
    pipe.expire(name, _WINDOW_SECONDS + 5)
    count = int(pipe.execute()[0])
    if count > limit:
        retry = max(1, int((window + 1) * _WINDOW_SECONDS - now) + 1)
        raise ProblemError(
            429,
            f"this API key may make {limit} requests per minute; retry in {retry} s "
            "(ask for a higher limit: postwise apikeys create --rate-limit)",
            headers={"Retry-After": str(retry)},
        )


def require_api_key(
    connection: ASGIConnection[Any, Any, Any, Any], handler: BaseRouteHandler
) -> None:
    path = connection.scope["path"]
    if not is_protected(path):
        return
    header = connection.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise ProblemError(
            401,
            "this endpoint needs an API key: send 'Authorization: Bearer <key>' "
            "(create one with `postwise apikeys create NAME --scope ...`)",
            headers={"WWW-Authenticate": 'Bearer realm="postwise"'},
        )
    runtime: Runtime = connection.app.state.runtime
    with runtime.session() as session:
        record = verify_api_key(session, key.strip())
        if record is None:
            raise ProblemError(
                401,
                "the API key is invalid or revoked",
                headers={"WWW-Authenticate": 'Bearer realm="postwise", error="invalid_token"'},
            )
        assert record.id is not None
        key_id, name, limit = record.id, record.name, record.rate_limit
        held = granted_scopes(record)
    connection.scope["state"]["api_key_name"] = name
    connection.scope["state"]["api_key_scopes"] = held
    needed = required_scopes(handler, str(connection.scope.get("method", "GET")))
    if not held.intersection(needed):
        raise ProblemError(
            403,
            f"the API key {name!r} lacks the {' or '.join(repr(s) for s in needed)} scope this "
            f"needs; it holds {', '.join(sorted(held))}",
        )
    if limit is None:
        limit = runtime.settings.api_rate_limit_per_minute
    if limit:
        _check_rate(runtime, key_id, limit)
