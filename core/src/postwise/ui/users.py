"""People who sign in to the web interface: roles, scrypt password hashes, sign-in throttling.

Roles, each including the one before:

* ``viewer`` reads every page;
* ``editor`` also creates and edits templates, segments, campaigns, triggers and experiments,
  and sends campaigns;
* ``admin`` also manages users, erases and exports contacts, and resumes or pauses sending.

Passwords are hashed with scrypt (memory-hard: 2^15 x 8 x 128 bytes = 32 MiB per hash) and a
random salt per user. Sign-in is throttled: after :data:`MAX_FAILURES` failures for one address
from one client within :data:`WINDOW_SECONDS`, or four times as many from one client over all
addresses, further attempts from that client are refused until the window passes, whether or
not the password is right. Other clients are not affected, so nobody can lock a user out.
"""

from __future__ import annotations

import base64
import enum
import functools
import hashlib
import hmac
import re
import secrets
from typing import Final

import redis
from sqlmodel import Session, col, select

from postwise.db.models import UiUser, utcnow
from postwise.errors import ConflictError, NotFoundError, ValidationError

__all__ = [
    "MAX_FAILURES",
    "Role",
    "SignInThrottled",
    "authenticate",
    "create_user",
    "hash_password",
    "list_users",
    "set_role",
    "verify_password",
]

MAX_FAILURES: Final = 5
WINDOW_SECONDS: Final = 15 * 60
_N, _R, _P = 2**15, 8, 1
_MIN_PASSWORD: Final = 12
_EMAIL: Final = re.compile(r"^[^@\s]{1,64}@[^@\s]{1,255}\.[^@\s]{2,}$")
_THROTTLE: Final = "postwise:ui:signin-failures:"


class Role(enum.StrEnum):
    VIEWER = "viewer"
    EDITOR = "editor"
    ADMIN = "admin"

    def allows(self, needed: Role) -> bool:
        order = [Role.VIEWER, Role.EDITOR, Role.ADMIN]
        return order.index(self) >= order.index(needed)


class SignInThrottled(ValidationError):
    """Too many failed sign-ins for this address or client; try again later."""


def hash_password(password: str) -> str:
    salt = secrets.token_bytes(16)
    digest = hashlib.scrypt(
        password.encode(), salt=salt, n=_N, r=_R, p=_P, maxmem=64 * 1024 * 1024, dklen=32
    )
    encode = base64.b64encode
    return f"scrypt${_N}${_R}${_P}${encode(salt).decode()}${encode(digest).decode()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
        if scheme != "scrypt":
            return False
        computed = hashlib.scrypt(
            password.encode(),
            salt=base64.b64decode(salt),
            n=int(n),
            r=int(r),
            p=int(p),
            maxmem=64 * 1024 * 1024,
            dklen=32,
        )
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(computed, base64.b64decode(digest))


def _normalise(email: str) -> str:
    email = email.strip().lower()
    if not _EMAIL.match(email):
        raise ValidationError("enter an email address such as ada@example.org", field="email")
    return email


def _check_password(password: str) -> None:
    if len(password) < _MIN_PASSWORD:
        raise ValidationError(
            f"use a password of at least {_MIN_PASSWORD} characters", field="password"
        )
    if len(password) > 1024:
        raise ValidationError("use a password of at most 1,024 characters", field="password")


def _role(role: str) -> Role:
    try:
        return Role(role)
    except ValueError:
        raise ValidationError("role must be admin, editor or viewer", field="role") from None


def create_user(session: Session, *, email: str, password: str, role: str) -> UiUser:
    email = _normalise(email)
    _check_password(password)
    checked = _role(role)
    if session.exec(select(UiUser).where(UiUser.email == email)).first() is not None:
        raise ConflictError(f"a user with the address {email} exists")
    user = UiUser(email=email, password_hash=hash_password(password), role=checked.value)
    session.add(user)
    session.flush()
    return user


def list_users(session: Session) -> list[UiUser]:
    return list(session.exec(select(UiUser).order_by(col(UiUser.email))))


def set_role(session: Session, user_id: int, role: str) -> UiUser:
    user = session.get(UiUser, user_id)
    if user is None:
        raise NotFoundError(f"user {user_id} does not exist")
    new_role = _role(role)
    if user.role == Role.ADMIN and new_role is not Role.ADMIN:
        admins = session.exec(
            select(UiUser).where(UiUser.role == Role.ADMIN.value, col(UiUser.disabled).is_(False))
        ).all()
        if len(admins) <= 1:
            raise ConflictError("this is the last admin: make another user admin first")
    user.role = new_role.value
    user.session_version += 1
    session.add(user)
    session.flush()
    return user


def authenticate(
    session: Session, client: redis.Redis, *, email: str, password: str, remote: str
) -> UiUser:
    """The user whose address and password these are; raises ValidationError otherwise.

    The same message for an unknown address and a wrong password, so the form does not reveal
    who has an account.
    """
    address = email.strip().lower()
    # Per address *from this client*, so nobody can lock a user out of every other machine by
    # guessing wrong five times; and per client over all addresses, so one client cannot try
    # many accounts.
    keys = [_THROTTLE + "a:" + remote[:100] + ":" + address[:320], _THROTTLE + "c:" + remote[:100]]
    counts = [int(v or 0) for v in client.mget(keys)]
    if counts[0] >= MAX_FAILURES or counts[1] >= MAX_FAILURES * 4:
        raise SignInThrottled(
            "too many failed sign-ins: wait 15 minutes and try again", field="password"
        )
    user = session.exec(select(UiUser).where(UiUser.email == address)).first()
    # Hash even for an unknown address, so timing does not tell which addresses exist.
    stored = user.password_hash if user is not None else _dummy_hash()
    if not verify_password(password, stored) or user is None or user.disabled:
        with client.pipeline() as pipe:
            for key in keys:
                pipe.incr(key)
                pipe.expire(key, WINDOW_SECONDS)
            pipe.execute()
        raise ValidationError("that address and password do not match", field="password")
    client.delete(*keys)
    user.last_login_at = utcnow()
    session.add(user)
    session.flush()
    return user


@functools.cache
def _dummy_hash() -> str:
    return hash_password(secrets.token_urlsafe(16))
