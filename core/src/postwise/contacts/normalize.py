"""Email address normalisation and the hash suppressions are kept under; the names of consent
purposes.

Normalising: trim, lower-case the domain (IDNA-encoded), keep the local part as written except
that it is compared case-insensitively by every mailbox provider that matters, so it is
lower-cased too. Addresses are validated for shape, not deliverability.
"""

from __future__ import annotations

import hashlib
import re

from postwise.errors import ValidationError

__all__ = ["check_purpose", "email_domain", "email_hash", "normalize_email"]

_PURPOSE_RE = re.compile(r"^[a-z][a-z0-9_.-]{0,49}$")
_LOCAL_RE = re.compile(r"^[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+$")
_LABEL_RE = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
# The common case (an ASCII dot-atom address) in one match; anything else takes the careful path.
_FAST_RE = re.compile(rf"{_ATOM}(?:\.{_ATOM})*@{_LABEL}(?:\.{_LABEL})+")


def normalize_email(value: str) -> str:
    """The normalised form of ``value``; a malformed address raises ValidationError."""
    if not isinstance(value, str):
        raise ValidationError("must be a string", field="email")
    address = value.strip()
    if _FAST_RE.fullmatch(address) and address.index("@") <= 64 and len(address) <= 254:
        return address.lower()
    if any(ch in address for ch in "\r\n\t\0 "):
        raise ValidationError(f"{value!r} contains whitespace or control characters", field="email")
    local, sep, domain = address.rpartition("@")
    if not sep or not local or not domain:
        raise ValidationError(f"{value!r} is not an email address (no user@domain)", field="email")
    if (
        len(local) > 64
        or not _LOCAL_RE.match(local)
        or local.startswith(".")
        or local.endswith(".")
        or ".." in local
    ):
        raise ValidationError(f"{value!r} has an invalid local part", field="email")
    if domain.isascii():
        ascii_domain = domain.lower()
    else:
        try:
            ascii_domain = domain.encode("idna").decode("ascii").lower()
        except UnicodeError:
            raise ValidationError(f"{value!r} has an invalid domain", field="email") from None
    labels = ascii_domain.rstrip(".").split(".")
    if len(labels) < 2 or not all(_LABEL_RE.match(label) for label in labels):
        raise ValidationError(f"{value!r} has an invalid domain", field="email")
    result = f"{local.lower()}@{'.'.join(labels)}"
    if len(result) > 254:
        raise ValidationError(f"{value!r} is longer than 254 characters", field="email")
    return result


def email_domain(normalized: str) -> str:
    return normalized.rpartition("@")[2]


def email_hash(value: str) -> str:
    """SHA-256 of the normalised address: how suppressions remember an erased address."""
    return hashlib.sha256(normalize_email(value).encode()).hexdigest()


def check_purpose(purpose: object, *, field: str = "purpose") -> str:
    """``purpose`` if it is a consent purpose name the ledger can record, else ValidationError.

    Everything that names a purpose (a grant, a list's required consent, a send request) uses
    this one rule, so a list can never require a purpose no record could ever have.
    """
    if not isinstance(purpose, str) or not _PURPOSE_RE.match(purpose):
        shown = repr(purpose)
        if len(shown) > 60:
            shown = shown[:57] + "..."
        raise ValidationError(
            f"{shown} is not a consent purpose; start with a lower-case letter and use "
            "lower-case letters, digits, '_', '.', '-' (at most 50 characters), for example "
            "'marketing' or 'newsletter'",
            field=field,
        )
    return purpose
