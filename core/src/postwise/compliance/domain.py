"""DNS checks of a sending domain: SPF, DKIM and DMARC, as Gmail and Yahoo require them.

:func:`check_domain` looks the records up with dnspython and says, per check, ``ok``, ``warn``
or ``fail`` with the record found and what to do:

* **SPF** (RFC 7208): exactly one ``v=spf1`` TXT record; it must end in ``-all`` or ``~all``
  (``+all`` authorises the whole internet; ``?all`` says nothing) and stay within the limit of
  10 DNS-querying terms, counted through ``include:`` and ``redirect=``.
* **DKIM** (RFC 6376, RFC 8463): the TXT record at ``<selector>._domainkey.<domain>`` exists,
  is not revoked (empty ``p=``), and holds the public key of the configured private key
  (``dkim_private_key_path``), so signatures made by postwise verify.
* **DMARC** (RFC 7489): a ``v=DMARC1`` record at ``_dmarc.<domain>``, else at the organisational
  domain; ``p=quarantine`` or ``p=reject`` passes, ``p=none`` warns (it monitors, it does not
  protect), and a missing ``rua=`` warns (nobody would see the reports).
"""

from __future__ import annotations

import base64
import binascii
import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dns.exception
import dns.name
import dns.resolver
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from postwise.errors import ConfigurationError, ValidationError

__all__ = [
    "Check",
    "CheckStatus",
    "DomainReport",
    "check_dkim",
    "check_dmarc",
    "check_domain",
    "check_spf",
    "make_resolver",
    "parse_tags",
]

_DOMAIN_RE = re.compile(
    r"^(?=.{1,253}$)(?:[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9])?\.)+[a-z][a-z0-9-]{0,61}[a-z0-9]$"
)
#: Terms that cost a DNS query (RFC 7208 4.6.4); ``exp=`` does not count.
_SPF_LOOKUP_TERMS = frozenset({"include", "a", "mx", "ptr", "exists", "redirect"})
_SPF_MAX_LOOKUPS = 10


class CheckStatus(enum.StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True, slots=True)
class Check:
    """The outcome of one check: its status, the record it looked at and what it means."""

    name: str
    status: CheckStatus
    detail: str
    record: str | None = None
    where: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "status": self.status.value,
            "detail": self.detail,
            "record": self.record,
            "where": self.where,
        }


@dataclass(frozen=True, slots=True)
class DomainReport:
    """Every check of one domain. ``ok`` is true when none failed (warnings allowed)."""

    domain: str
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.status is not CheckStatus.FAIL for c in self.checks)

    def to_dict(self) -> dict[str, Any]:
        return {
            "domain": self.domain,
            "ok": self.ok,
            "checks": [c.to_dict() for c in self.checks],
        }


def _check_domain_name(domain: str) -> str:
    value = domain.strip().rstrip(".").lower()
    try:
        value = value.encode("idna").decode("ascii")
    except UnicodeError:
        raise ValidationError(f"{domain!r} is not a domain name", field="domain") from None
    if not _DOMAIN_RE.match(value):
        raise ValidationError(f"{domain!r} is not a domain name", field="domain")
    return value


class _Lookup:
    """TXT lookups through one resolver; absent names and records are ``[]``, not errors."""

    def __init__(self, resolver: dns.resolver.Resolver) -> None:
        self.resolver = resolver

    def txt(self, name: str) -> list[str]:
        try:
            answer = self.resolver.resolve(name, "TXT", raise_on_no_answer=False)
        except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
            return []
        except (dns.resolver.NoNameservers, dns.exception.Timeout) as exc:
            raise _LookupFailed(f"DNS lookup of {name} TXT failed: {exc}") from exc
        if answer.rrset is None:
            return []
        # A TXT record may be split into several strings of up to 255 bytes; they join
        # without separators (RFC 7208 3.3).
        return [b"".join(rdata.strings).decode("utf-8", "replace") for rdata in answer.rrset]


class _LookupFailed(Exception):
    pass


def parse_tags(record: str) -> dict[str, str]:
    """The ``tag=value`` pairs of a DKIM or DMARC record (names lower-cased, spaces removed)."""
    tags: dict[str, str] = {}
    for chunk in record.split(";"):
        name, sep, value = chunk.partition("=")
        if sep and name.strip():
            tags[name.strip().lower()] = re.sub(r"\s+", "", value)
    return tags


def _spf_records(lookup: _Lookup, domain: str) -> list[str]:
    return [
        r for r in lookup.txt(domain) if r.lower() == "v=spf1" or r.lower().startswith("v=spf1 ")
    ]


def _count_lookups(lookup: _Lookup, record: str, seen: set[str], depth: int) -> int:
    """DNS-querying terms of ``record``, following include and redirect (RFC 7208 4.6.4)."""
    count = 0
    for term in record.split()[1:]:
        term_l = term.lower().lstrip("+-~?")
        if re.split(r"[:/=]", term_l, maxsplit=1)[0] not in _SPF_LOOKUP_TERMS:
            continue
        count += 1
        target = None
        if term_l.startswith("include:"):
            target = term_l.removeprefix("include:")
        elif term_l.startswith("redirect="):
            target = term_l.removeprefix("redirect=")
        if target and target not in seen and depth < _SPF_MAX_LOOKUPS and "%" not in target:
            seen.add(target)
            nested = _spf_records(lookup, target)
            if len(nested) == 1:
                count += _count_lookups(lookup, nested[0], seen, depth + 1)
    return count


def check_spf(lookup: _Lookup, domain: str) -> Check:
    records = _spf_records(lookup, domain)
    if not records:
        return Check(
            "spf",
            CheckStatus.FAIL,
            f"no SPF record: publish a TXT record at {domain} "
            "such as 'v=spf1 include:<your relay> -all'",
            where=domain,
        )
    if len(records) > 1:
        return Check(
            "spf",
            CheckStatus.FAIL,
            "more than one SPF record (a permanent error for receivers): merge them into one",
            record=" | ".join(records),
            where=domain,
        )
    record = records[0]
    terms = [t.lower() for t in record.split()[1:]]
    all_terms = [t for t in terms if t.lstrip("+-~?") == "all"]
    redirect = any(t.startswith("redirect=") for t in terms)
    lookups = _count_lookups(lookup, record, {domain}, 0)
    if lookups > _SPF_MAX_LOOKUPS:
        return Check(
            "spf",
            CheckStatus.FAIL,
            f"{lookups} DNS-querying terms (limit "
            f"{_SPF_MAX_LOOKUPS}): receivers treat this as a permanent error; "
            "flatten some includes",
            record=record,
            where=domain,
        )
    if all_terms and all_terms[-1] in ("all", "+all"):
        return Check(
            "spf",
            CheckStatus.FAIL,
            "'+all' lets any server on the internet send as "
            "this domain: end the record with '-all' or '~all'",
            record=record,
            where=domain,
        )
    if all_terms and all_terms[-1] == "?all":
        return Check(
            "spf",
            CheckStatus.WARN,
            "'?all' (neutral) protects nothing: end the record with '-all' or '~all'",
            record=record,
            where=domain,
        )
    if not all_terms and not redirect:
        return Check(
            "spf",
            CheckStatus.WARN,
            "the record has no 'all' term, so unlisted "
            "servers are neutral: end it with '-all' or '~all'",
            record=record,
            where=domain,
        )
    return Check(
        "spf",
        CheckStatus.OK,
        f"one SPF record, {lookups} DNS-querying terms",
        record=record,
        where=domain,
    )


def _public_key_bytes(private_key_pem: bytes) -> tuple[str, bytes]:
    """The key type (``rsa``/``ed25519``) and public key bytes as DKIM publishes them."""
    try:
        key = serialization.load_pem_private_key(private_key_pem, password=None)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(
            f"the DKIM private key could not be read ({exc}); give an unencrypted PEM key"
        ) from exc
    if isinstance(key, rsa.RSAPrivateKey):
        return "rsa", key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return "ed25519", key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
    raise ConfigurationError(f"DKIM keys must be RSA or Ed25519, not {type(key).__name__}")


def _same_rsa_key(published: bytes, expected_der: bytes) -> bool:
    expected = serialization.load_der_public_key(expected_der)
    try:
        found = serialization.load_der_public_key(published)
    except ValueError:
        # Some publish the bare PKCS#1 RSAPublicKey instead of SubjectPublicKeyInfo.
        try:
            pem = (
                b"-----BEGIN RSA PUBLIC KEY-----\n"
                + base64.encodebytes(published)
                + b"-----END RSA PUBLIC KEY-----\n"
            )
            found = serialization.load_pem_public_key(pem)
        except ValueError:
            return False
    if not isinstance(found, rsa.RSAPublicKey) or not isinstance(expected, rsa.RSAPublicKey):
        return False
    return found.public_numbers() == expected.public_numbers()


def check_dkim(lookup: _Lookup, domain: str, selector: str, private_key_pem: bytes | None) -> Check:
    where = f"{selector}._domainkey.{domain}"
    records = [r for r in lookup.txt(where) if "p=" in r.replace(" ", "")]
    if not records:
        return Check(
            "dkim",
            CheckStatus.FAIL,
            f"no DKIM key at {where}: publish the TXT record "
            "postwise prints for your key (selector from settings.dkim_selector)",
            where=where,
        )
    if len(records) > 1:
        return Check(
            "dkim",
            CheckStatus.FAIL,
            "more than one DKIM key record at the selector: keep one",
            record=" | ".join(records),
            where=where,
        )
    record = records[0]
    tags = parse_tags(record)
    if tags.get("v", "DKIM1") != "DKIM1":
        return Check(
            "dkim", CheckStatus.FAIL, f"v={tags['v']} is not DKIM1", record=record, where=where
        )
    published_b64 = tags.get("p", "")
    if not published_b64:
        return Check(
            "dkim", CheckStatus.FAIL, "the key is revoked (empty p=)", record=record, where=where
        )
    try:
        published = base64.b64decode(published_b64, validate=True)
    except (binascii.Error, ValueError):
        return Check("dkim", CheckStatus.FAIL, "p= is not valid base64", record=record, where=where)
    key_type = tags.get("k", "rsa").lower()
    if private_key_pem is None:
        return Check(
            "dkim",
            CheckStatus.WARN,
            f"a {key_type} key is published, but no private "
            "key is configured (dkim_private_key_path) to compare it with",
            record=record,
            where=where,
        )
    expected_type, expected = _public_key_bytes(private_key_pem)
    if key_type != expected_type:
        return Check(
            "dkim",
            CheckStatus.FAIL,
            f"DNS publishes a {key_type} key but the configured private key is {expected_type}",
            record=record,
            where=where,
        )
    same = _same_rsa_key(published, expected) if key_type == "rsa" else published == expected
    if not same:
        return Check(
            "dkim",
            CheckStatus.FAIL,
            "the published public key does not match the "
            "configured private key: signatures would fail; publish the record for "
            "the current key",
            record=record,
            where=where,
        )
    return Check(
        "dkim",
        CheckStatus.OK,
        f"the published {key_type} key matches the configured private key",
        record=record,
        where=where,
    )


def _organisational(domain: str) -> str:
    # Without the public suffix list, the last two labels are the best cheap guess; it is only
    # used as the fallback when the domain itself publishes no DMARC record.
    return ".".join(domain.split(".")[-2:])


def check_dmarc(lookup: _Lookup, domain: str) -> Check:
    candidates = [domain]
    org = _organisational(domain)
    if org != domain:
        candidates.append(org)
    for name in candidates:
        where = f"_dmarc.{name}"
        records = [
            r for r in lookup.txt(where) if r.replace(" ", "").upper().startswith("V=DMARC1")
        ]
        if not records:
            continue
        if len(records) > 1:
            return Check(
                "dmarc",
                CheckStatus.FAIL,
                "more than one DMARC record: receivers ignore them all; keep one",
                record=" | ".join(records),
                where=where,
            )
        record = records[0]
        tags = parse_tags(record)
        policy = (
            (tags.get("p") or "").lower()
            if name == domain
            else (tags.get("sp") or tags.get("p") or "").lower()
        )
        inherited = "" if name == domain else f" (inherited from {name})"
        if policy not in ("none", "quarantine", "reject"):
            return Check(
                "dmarc",
                CheckStatus.FAIL,
                f"the record has no valid policy p={policy!r}"
                f"{inherited}: use p=none, quarantine or reject",
                record=record,
                where=where,
            )
        if "rua" not in tags:
            return Check(
                "dmarc",
                CheckStatus.WARN,
                f"policy {policy}{inherited}, but no rua= address receives aggregate reports",
                record=record,
                where=where,
            )
        if policy == "none":
            return Check(
                "dmarc",
                CheckStatus.WARN,
                f"policy none{inherited}: enough for the "
                "Gmail and Yahoo sender rules, but it protects nothing; move to "
                "quarantine once reports look clean",
                record=record,
                where=where,
            )
        return Check(
            "dmarc", CheckStatus.OK, f"policy {policy}{inherited}", record=record, where=where
        )
    return Check(
        "dmarc",
        CheckStatus.FAIL,
        f"no DMARC record: publish a TXT record at "
        f"_dmarc.{domain} such as 'v=DMARC1; p=none; rua=mailto:dmarc@{domain}'",
        where=f"_dmarc.{domain}",
    )


def make_resolver(
    nameservers: Sequence[str] = (), *, port: int = 53, timeout: float = 5.0
) -> dns.resolver.Resolver:
    """A resolver: the system's, or one asking ``nameservers`` on ``port``."""
    if nameservers:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = list(nameservers)
        resolver.port = port
    else:
        resolver = dns.resolver.Resolver()
    resolver.lifetime = timeout
    return resolver


def check_domain(
    domain: str,
    *,
    selector: str,
    private_key_pem: bytes | None = None,
    private_key_path: Path | None = None,
    resolver: dns.resolver.Resolver | None = None,
) -> DomainReport:
    """Check SPF, DKIM (at ``selector``) and DMARC of ``domain``.

    The DKIM key is compared with ``private_key_pem`` or the key read from
    ``private_key_path``. A DNS failure (timeout, no server answering) makes the check fail
    with the reason rather than raising.
    """
    name = _check_domain_name(domain)
    if private_key_pem is None and private_key_path is not None:
        try:
            private_key_pem = Path(private_key_path).read_bytes()
        except OSError as exc:
            raise ConfigurationError(
                f"cannot read the DKIM private key {str(private_key_path)!r}: {exc.strerror}"
            ) from None
    lookup = _Lookup(resolver or make_resolver())
    checks: list[Check] = []
    for check_name, run in (
        ("spf", lambda: check_spf(lookup, name)),
        ("dkim", lambda: check_dkim(lookup, name, selector, private_key_pem)),
        ("dmarc", lambda: check_dmarc(lookup, name)),
    ):
        try:
            checks.append(run())
        except _LookupFailed as exc:
            checks.append(Check(check_name, CheckStatus.FAIL, str(exc)))
    return DomainReport(domain=name, checks=checks)
