"""Authentication: every route under ``/v1`` needs ``Authorization: Bearer <API key>``.

The guard is applied to the whole application and decides by path, so a plugin cannot publish a
``/v1`` route without authentication by forgetting a guard. Public endpoints (tracking,
unsubscribe, provider and CRM webhooks) live outside ``/v1`` and authenticate by signed tokens or
provider signatures.
"""

from __future__ import annotations

from litestar.connection import ASGIConnection
from litestar.exceptions import NotAuthorizedException
from litestar.handlers.base import BaseRouteHandler

from postwise.apikeys import verify_api_key
from postwise.runtime import Runtime

__all__ = ["require_api_key"]

PROTECTED_PREFIX = "/v1"


def require_api_key(connection: ASGIConnection, _handler: BaseRouteHandler) -> None:
    path = connection.scope["path"]
    if not (path == PROTECTED_PREFIX or path.startswith(PROTECTED_PREFIX + "/")):
        return
    header = connection.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise NotAuthorizedException(
            "this endpoint needs an API key: send 'Authorization: Bearer <key>' "
            "(create one with `postwise apikeys create NAME`)"
        )
    runtime: Runtime = connection.app.state.runtime
    with runtime.session() as session:
        record = verify_api_key(session, key.strip())
        if record is None:
            raise NotAuthorizedException("the API key is invalid or revoked")
        connection.scope["state"]["api_key_name"] = record.name
