"""API keys: shown once at creation, stored only as a SHA-256 hash.

Keys are 256-bit random tokens, so a fast hash is the right choice (no password stretching is
needed for secrets that cannot be guessed); lookup is by the hash's unique index.

Each key has scopes (:data:`SCOPES`) that decide which routes it may call, and optionally its own
rate limit (requests per minute; ``None`` means ``Settings.api_rate_limit_per_minute``). Keys made
before scopes existed are ``admin``.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

from sqlmodel import Session, select

from postwise.db.models import ApiKey, utcnow
from postwise.errors import ConflictError, NotFoundError, ValidationError

__all__ = [
    "SCOPES",
    "CreatedKey",
    "create_api_key",
    "granted_scopes",
    "list_api_keys",
    "parse_scopes",
    "revoke_api_key",
    "verify_api_key",
]

#: What each scope allows. ``admin`` allows everything; ``write`` includes ``read``.
SCOPES: dict[str, str] = {
    "read": "read contacts, segments, templates, campaigns, triggers, experiments and metrics",
    "write": "create and change them (contacts, segments, templates, campaigns, triggers, ...)",
    "send": "send messages (POST /v1/sends, campaign sends) and read their status",
    "privacy": "consent, suppressions, export and erasure of personal data",
    "admin": "everything, including pausing delivery and CRM syncs",
}
_IMPLIED: dict[str, frozenset[str]] = {
    "admin": frozenset(SCOPES),
    "write": frozenset({"write", "read"}),
}

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_KEY_RE = re.compile(r"^pw_([A-Za-z0-9]{8})_([A-Za-z0-9_-]{20,})$")


@dataclass(frozen=True, slots=True)
class CreatedKey:
    name: str
    key: str
    prefix: str
    scopes: tuple[str, ...] = ("admin",)


def parse_scopes(scopes: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Scope names, checked and sorted (``"read,send"`` or a list)."""
    names = scopes.split(",") if isinstance(scopes, str) else list(scopes)
    cleaned = sorted({n.strip().lower() for n in names if n.strip()})
    if not cleaned:
        raise ValidationError("name at least one scope: " + ", ".join(SCOPES), field="scopes")
    for name in cleaned:
        if name not in SCOPES:
            raise ValidationError(
                f"unknown scope {name!r}; scopes: {', '.join(SCOPES)}", field="scopes"
            )
    return tuple(cleaned)


def granted_scopes(record: ApiKey) -> frozenset[str]:
    """Every scope ``record`` holds, implied ones included."""
    held: set[str] = set()
    for name in record.scopes.split(","):
        held |= _IMPLIED.get(name, frozenset({name}))
    return frozenset(held)


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(
    session: Session,
    name: str,
    *,
    scopes: str | list[str] | tuple[str, ...] = ("admin",),
    rate_limit: int | None = None,
) -> CreatedKey:
    """Create a key called ``name``; the returned secret is never stored or shown again.

    ``rate_limit`` is requests per minute (``None``: the server's default)."""
    if not _NAME_RE.match(name):
        raise ValidationError(
            "use 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit",
            field="name",
        )
    if session.exec(select(ApiKey).where(ApiKey.name == name)).first() is not None:
        raise ConflictError(f"an API key called {name!r} exists already; pick another name")
    granted = parse_scopes(scopes)
    if rate_limit is not None and not 1 <= rate_limit <= 10_000_000:
        raise ValidationError("must be 1 to 10000000 requests per minute", field="rate_limit")
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    prefix = "".join(secrets.choice(alphabet) for _ in range(8))
    key = f"pw_{prefix}_{secrets.token_urlsafe(32)}"
    session.add(
        ApiKey(
            name=name,
            prefix=prefix,
            key_hash=_hash(key),
            scopes=",".join(granted),
            rate_limit=rate_limit,
        )
    )
    session.flush()
    return CreatedKey(name=name, key=key, prefix=prefix, scopes=granted)


def verify_api_key(session: Session, key: str) -> ApiKey | None:
    """The active key record matching ``key``, or ``None``."""
    if not _KEY_RE.match(key):
        return None
    digest = _hash(key)
    record = session.exec(select(ApiKey).where(ApiKey.key_hash == digest)).first()
    if record is None or record.revoked_at is not None:
        return None
    # The index lookup already matched; compare again in constant time for defence in depth.
    if not hmac.compare_digest(record.key_hash, digest):
        return None
    return record


def list_api_keys(session: Session) -> list[ApiKey]:
    return list(session.exec(select(ApiKey).order_by(ApiKey.name)))


def revoke_api_key(session: Session, name: str) -> None:
    record = session.exec(select(ApiKey).where(ApiKey.name == name)).first()
    if record is None:
        raise NotFoundError(f"no API key called {name!r}")
    record.revoked_at = utcnow()
    session.add(record)
