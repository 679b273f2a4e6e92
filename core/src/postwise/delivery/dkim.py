"""DKIM signing (RFC 6376, RFC 8463 for Ed25519) with ``cryptography``.

dkimpy signs RSA in pure Python (5.5 ms a message on this project's machines); the same
signature through ``cryptography``/OpenSSL costs about 0.2 ms, so signing happens here and
dkimpy is used only to verify, in tests. Canonicalisation is relaxed/relaxed, the only
choice that survives the header refolding and whitespace changes relays make.

Every header in ``h=`` is listed once more than it occurs ("over-signing"), so a header added
in transit (a second ``From`` or ``Subject``) breaks the signature instead of riding along.
"""

from __future__ import annotations

import base64
import hashlib
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Literal

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, padding, rsa

from postwise.errors import ConfigurationError, ValidationError

__all__ = [
    "DEFAULT_SIGNED_HEADERS",
    "DkimKey",
    "DkimSigner",
    "generate_key",
    "sign_message",
]

Algorithm = Literal["rsa-sha256", "ed25519-sha256"]

#: Headers covered by the signature (when present; absent ones are signed as absent).
DEFAULT_SIGNED_HEADERS: Final = (
    "from",
    "reply-to",
    "to",
    "cc",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "content-transfer-encoding",
    "list-unsubscribe",
    "list-unsubscribe-post",
    "x-postwise-message-id",
)

_SPACE_RUN = re.compile(rb"  +")
_LABELS = re.compile(
    r"[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9])?(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]*[A-Za-z0-9])?)*"
)
_MIN_RSA_BITS: Final = 1024


@dataclass(frozen=True, slots=True)
class DkimKey:
    """A new key: the PEM to configure postwise with, and the TXT value to publish."""

    private_key_pem: bytes
    dns_record: str


def generate_key(algorithm: Algorithm = "rsa-sha256", *, bits: int = 2048) -> DkimKey:
    """A fresh private key (PKCS#8 PEM) and the DNS TXT record value announcing it."""
    key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if algorithm == "rsa-sha256":
        if bits < 2048:
            raise ConfigurationError(f"RSA DKIM keys need at least 2048 bits, not {bits}")
        key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    elif algorithm == "ed25519-sha256":
        key = ed25519.Ed25519PrivateKey.generate()
    else:
        raise ConfigurationError(
            f"DKIM algorithm {algorithm!r} is unknown; use 'rsa-sha256' or 'ed25519-sha256'"
        )
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return DkimKey(private_key_pem=pem, dns_record=_dns_record(key))


class DkimSigner:
    """Signs messages for ``domain`` with the key published at ``selector._domainkey.domain``."""

    def __init__(
        self,
        selector: str,
        domain: str,
        private_key_pem: bytes | str,
        algorithm: Algorithm = "rsa-sha256",
        *,
        signed_headers: Sequence[str] = DEFAULT_SIGNED_HEADERS,
    ) -> None:
        for label, value in (("selector", selector), ("domain", domain)):
            if not _LABELS.fullmatch(value):
                raise ConfigurationError(f"DKIM {label} {value!r} is not a valid DNS name")
        if "from" not in (h.lower() for h in signed_headers):
            raise ConfigurationError("DKIM signed headers must include From (RFC 6376 5.4)")
        pem = private_key_pem.encode() if isinstance(private_key_pem, str) else private_key_pem
        try:
            key = serialization.load_pem_private_key(pem, password=None)
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(
                f"DKIM private key for {domain} could not be read ({exc}); give an unencrypted "
                "PEM key, e.g. from postwise.delivery.dkim.generate_key()"
            ) from exc
        if algorithm == "rsa-sha256":
            if not isinstance(key, rsa.RSAPrivateKey):
                raise ConfigurationError("algorithm rsa-sha256 needs an RSA private key")
            if key.key_size < _MIN_RSA_BITS:
                raise ConfigurationError(
                    f"RSA key of {key.key_size} bits is too short for DKIM; use 2048 bits"
                )
        elif algorithm == "ed25519-sha256":
            if not isinstance(key, ed25519.Ed25519PrivateKey):
                raise ConfigurationError("algorithm ed25519-sha256 needs an Ed25519 private key")
        else:
            raise ConfigurationError(
                f"DKIM algorithm {algorithm!r} is unknown; use 'rsa-sha256' or 'ed25519-sha256'"
            )
        self.selector = selector
        self.domain = domain.lower()
        self.algorithm: Algorithm = algorithm
        self._key = key
        self._headers = tuple(h.lower() for h in signed_headers)

    @property
    def record_name(self) -> str:
        """The DNS name of the TXT record holding the public key."""
        return f"{self.selector}._domainkey.{self.domain}"

    def dns_record(self) -> str:
        """The TXT record value publishing this signer's public key."""
        return _dns_record(self._key)

    def sign(self, raw: bytes, *, timestamp: int | None = None) -> bytes:
        """``raw`` (a CRLF message) with a ``DKIM-Signature`` header prepended."""
        return sign_message(raw, [self], timestamp=timestamp)

    def _signature_header(
        self, fields: dict[bytes, list[bytes]], body_hash: str, timestamp: int
    ) -> bytes:
        h_tags: list[str] = []
        signed: list[bytes] = []
        for header in self._headers:
            instances = fields.get(header.encode(), ())
            # Instances are signed from the bottom up (RFC 6376 5.4.2), plus one absent one.
            for field in reversed(instances):
                h_tags.append(header)
                signed.append(_relaxed_header(field))
            h_tags.append(header)
        unsigned = (
            f"DKIM-Signature: v=1; a={self.algorithm}; c=relaxed/relaxed; d={self.domain};"
            f" s={self.selector};\r\n t={timestamp}; bh={body_hash};\r\n"
            f" h={':'.join(h_tags)};\r\n b="
        ).encode("ascii")
        data = b"".join(signed) + _relaxed_header(unsigned)[:-2]
        if isinstance(self._key, rsa.RSAPrivateKey):
            signature = self._key.sign(data, padding.PKCS1v15(), hashes.SHA256())
        else:
            # RFC 8463: Ed25519 signs the SHA-256 hash of the data, not the data itself.
            signature = self._key.sign(hashlib.sha256(data).digest())
        b64 = base64.b64encode(signature).decode("ascii")
        folded = "\r\n ".join(b64[i : i + 72] for i in range(0, len(b64), 72))
        return unsigned + folded.encode("ascii") + b"\r\n"


def sign_message(
    raw: bytes, signers: Sequence[DkimSigner], *, timestamp: int | None = None
) -> bytes:
    """``raw`` signed by every signer (e.g. RSA and Ed25519), hashing the body once."""
    if raw.count(b"\n") != raw.count(b"\r\n") or raw.count(b"\r") != raw.count(b"\r\n"):
        raise ValidationError(
            "message has bare CR or LF line endings; build it with build_message (CRLF only)",
            field="raw",
        )
    split = raw.find(b"\r\n\r\n")
    if split < 0:
        raise ValidationError("message has no blank line between headers and body", field="raw")
    fields: dict[bytes, list[bytes]] = {}
    last: list[bytes] = []
    for line in raw[:split].split(b"\r\n"):
        if line[:1] in (b" ", b"\t") and last:
            last[-1] += b"\r\n" + line
        else:
            last = fields.setdefault(line.split(b":", 1)[0].strip().lower(), [])
            last.append(line)
    body_hash = base64.b64encode(hashlib.sha256(_relaxed_body(raw[split + 4 :])).digest())
    when = int(time.time()) if timestamp is None else timestamp
    headers = [s._signature_header(fields, body_hash.decode("ascii"), when) for s in signers]
    return b"".join(reversed(headers)) + raw


def _relaxed_header(field: bytes) -> bytes:
    name, _, value = field.partition(b":")
    value = _collapse_whitespace(value.replace(b"\r\n", b""))
    return name.strip().lower() + b":" + value.strip(b" ") + b"\r\n"


def _relaxed_body(body: bytes) -> bytes:
    # Bare CR and LF were refused earlier, so stripping CR and LF bytes strips whole empty lines.
    body = _collapse_whitespace(body).replace(b" \r\n", b"\r\n").rstrip(b"\r\n")
    return body + b"\r\n" if body else b""


def _collapse_whitespace(data: bytes) -> bytes:
    """Every run of spaces and tabs as one space.

    Tabs go first, by bytes.replace, so the pattern left starts with a literal two-space
    prefix that the regex engine can search for quickly; matching every single space (as
    ``[ \t]+`` does) made this the slowest step of signing.
    """
    if b"\t" in data:
        data = data.replace(b"\t", b" ")
    if b"  " in data:
        data = _SPACE_RUN.sub(b" ", data)
    return data


def _dns_record(key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey | object) -> str:
    if isinstance(key, rsa.RSAPrivateKey):
        der = key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode('ascii')}"
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return f"v=DKIM1; k=ed25519; p={base64.b64encode(raw).decode('ascii')}"
    raise ConfigurationError(f"no DKIM record format for {type(key).__name__} keys")
