"""API keys: shown once at creation, stored only as a SHA-256 hash.

Keys are 256-bit random tokens, so a fast hash is the right choice (no password stretching is
needed for secrets that cannot be guessed); lookup is by the hash's unique index.
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

__all__ = ["CreatedKey", "create_api_key", "list_api_keys", "revoke_api_key", "verify_api_key"]

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_KEY_RE = re.compile(r"^pw_([A-Za-z0-9]{8})_([A-Za-z0-9_-]{20,})$")


@dataclass(frozen=True, slots=True)
class CreatedKey:
    name: str
    key: str
    prefix: str


def _hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(session: Session, name: str) -> CreatedKey:
    """Create a key called ``name``; the returned secret is never stored or shown again."""
    if not _NAME_RE.match(name):
        raise ValidationError(
            "use 1-100 letters, digits, '.', '_' or '-', starting with a letter or digit",
            field="name",
        )
    if session.exec(select(ApiKey).where(ApiKey.name == name)).first() is not None:
        raise ConflictError(f"an API key called {name!r} exists already; pick another name")
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
    prefix = "".join(secrets.choice(alphabet) for _ in range(8))
    key = f"pw_{prefix}_{secrets.token_urlsafe(32)}"
    session.add(ApiKey(name=name, prefix=prefix, key_hash=_hash(key)))
    session.flush()
    return CreatedKey(name=name, key=key, prefix=prefix)


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
