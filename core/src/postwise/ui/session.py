"""Sessions in signed cookies, CSRF tokens, and the role check every page and action makes.

The session cookie holds a token signed with the installation's secret key (the same mechanism
as tracking links, purpose ``ui-session``): the user id, the user's ``session_version`` and a
random session id, valid for ``ui_session_hours``. Signing out records the session id in Redis
until the cookie would have expired, so a copy of the cookie is refused too. It is
``HttpOnly``, ``SameSite=Lax`` and ``Secure`` when the base URL is https. A password or role
change bumps ``session_version``, which ends every session of that user.

Every form carries a CSRF token, an HMAC of the session id: a token from another session, or
none, is refused with 403 and nothing changes.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Any, Final

from litestar import Request

from postwise import tokens
from postwise.db.models import UiUser
from postwise.errors import PostwiseError
from postwise.runtime import Runtime
from postwise.ui.users import Role

__all__ = [
    "COOKIE",
    "CsrfError",
    "Forbidden",
    "SignedIn",
    "current_user",
    "end_session",
    "new_session_cookie",
    "require",
]

COOKIE: Final = "postwise_session"
#: Sessions signed out before their cookie expires (the cookie itself cannot be taken back).
_ENDED: Final = "postwise:ui:ended-session:"


class Forbidden(PostwiseError):
    """The signed-in user's role does not allow this."""


class CsrfError(PostwiseError):
    """A form arrived without this session's CSRF token."""


@dataclass(frozen=True, slots=True)
class SignedIn:
    """The person behind a request."""

    user: UiUser
    session_id: str
    csrf_token: str

    @property
    def role(self) -> Role:
        return Role(self.user.role)

    def can(self, role: Role | str) -> bool:
        return self.role.allows(Role(role))


def _csrf(runtime: Runtime, session_id: str) -> str:
    key = runtime.settings.signing_keys()[0]
    return hmac.new(key, b"csrf\x00" + session_id.encode(), hashlib.sha256).hexdigest()[:40]


def new_session_cookie(runtime: Runtime, user: UiUser) -> tuple[str, int]:
    """The cookie value for ``user``'s new session, and its lifetime in seconds."""
    ttl = int(runtime.settings.ui_session_hours * 3600)
    payload = {"u": user.id, "v": user.session_version, "s": secrets.token_urlsafe(12)}
    key = runtime.settings.signing_keys()[0]
    return tokens.sign(tokens.Purpose.UI_SESSION, payload, key=key, ttl=ttl), ttl


def current_user(runtime: Runtime, request: Request[Any, Any, Any]) -> SignedIn | None:
    """Who is signed in, or None (no cookie, a bad or expired one, a changed or disabled user)."""
    cookie = request.cookies.get(COOKIE)
    if not cookie or len(cookie) > 512:
        return None
    try:
        payload = tokens.verify(
            tokens.Purpose.UI_SESSION, cookie, keys=runtime.settings.signing_keys()
        )
    except tokens.InvalidToken:
        return None
    user_id, version, session_id = payload.get("u"), payload.get("v"), payload.get("s")
    if not isinstance(user_id, int) or not isinstance(session_id, str):
        return None
    if runtime.redis.exists(_ENDED + session_id[:64]):
        return None
    with runtime.session() as session:
        user = session.get(UiUser, user_id)
        if user is None or user.disabled or user.session_version != version:
            return None
        session.expunge(user)
    return SignedIn(user=user, session_id=session_id, csrf_token=_csrf(runtime, session_id))


def end_session(runtime: Runtime, signed_in: SignedIn) -> None:
    """Sign this session out: its cookie, even a copy of it, opens nothing any more."""
    ttl = max(1, int(runtime.settings.ui_session_hours * 3600))
    runtime.redis.set(_ENDED + signed_in.session_id[:64], b"1", ex=ttl)


def require(signed_in: SignedIn, role: Role, *, form: dict[str, Any] | None = None) -> None:
    """Raise unless ``signed_in`` may act as ``role``; with ``form``, check its CSRF token."""
    if not signed_in.can(role):
        raise Forbidden(f"this needs the {role.value} role; you are {signed_in.role.value}")
    if form is not None:
        given = str(form.get("csrf_token", ""))
        if not hmac.compare_digest(given, signed_in.csrf_token):
            raise CsrfError("the form has expired or came from elsewhere; reload and try again")
