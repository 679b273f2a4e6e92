"""The signed-webhook controller every vendor webhook subclasses (ESPs and CRMs alike).

A vendor posts events to postwise and signs each request; postwise must take the authentic
ones exactly once and refuse the rest without storing anything. :class:`SignedWebhookController`
does everything but the vendor's own parts, in this order:

1. read the raw body and the public URL the vendor called (``base_url`` + path + query: some
   vendors sign the URL);
2. :meth:`~SignedWebhookController.verify` (the subclass): the vendor's signature scheme. It
   raises :class:`WebhookRejected` (401) for a missing or wrong signature and returns a
   :class:`Verified` naming the signature and, when the scheme signs a time, when;
3. the replay window: a request signed more than :meth:`~SignedWebhookController.max_age`
   seconds ago, or more than ``future_tolerance_seconds`` ahead (a skewed clock), is refused;
4. replays: each accepted signature is remembered for the window, and a request carrying one
   again is refused, so a captured request cannot be played back while it is still fresh;
5. :meth:`~SignedWebhookController.process` (the subclass) in a worker thread: parse and store.
   A failure there forgets the signature again, so the vendor's retry is processed.

Every refusal is an RFC 9457 problem whose ``detail`` says what is wrong. A forged, stale or
replayed request is refused with 401 before anything is read from it, so nothing is stored or
queued. A server whose configuration is wrong (an invalid key in the options) answers 503 with
``Retry-After``: the vendor delivers again once the operator fixed it, and no event is lost.

A subclass sets ``path`` and ``source`` and implements the two methods; the route is
``POST {path}/events`` (override ``events`` for another one, as the CRM webhook does)::

    class AcmeWebhookController(SignedWebhookController):
        path = "/hooks/acme"
        source = "acme"

        def verify(self, runtime, request):
            secret = parse_options(...).webhook_secret
            signature = request.header("x-acme-signature")
            if not secret or not hmac.compare_digest(signature, sign(secret, request.body)):
                raise WebhookRejected(401, "the signature does not verify")
            return Verified(signature, signed_at=float(request.header("x-acme-time")))

        def process(self, runtime, request, verified):
            return record_events(runtime, "acme", parse(request.body), ...).to_dict()
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key, load_pem_public_key
from litestar import Controller, MediaType, Request, Response, post
from litestar.concurrency import sync_to_thread
from litestar.datastructures import State

from postwise.errors import ConfigurationError
from postwise.server.errors import problem

if TYPE_CHECKING:
    from postwise.runtime import Runtime

__all__ = [
    "RETRY_AFTER_SECONDS",
    "SignedWebhookController",
    "Verified",
    "WebhookRejected",
    "WebhookRequest",
    "json_body",
    "load_ec_public_key",
    "required_headers",
    "required_secret",
    "verify_ecdsa_sha256",
]

log = logging.getLogger(__name__)

#: Seconds a vendor is asked to wait before delivering again after a 503.
RETRY_AFTER_SECONDS = 60
_SEEN_KEY = "postwise:webhook-seen:{source}:{digest}"


class WebhookRejected(Exception):
    """Refuse the request with ``status`` and ``message`` (what to fix, never a secret)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True, slots=True)
class WebhookRequest:
    """One webhook request as the vendor sent it."""

    method: str
    #: The public URL the vendor called: the server's ``base_url``, the path and the query.
    url: str
    #: Header names in lower case.
    headers: Mapping[str, str]
    body: bytes
    path_params: Mapping[str, Any] = field(default_factory=dict)

    def header(self, name: str) -> str:
        """The header's value (any case of ``name``), stripped; empty when absent."""
        return self.headers.get(name.lower(), "").strip()


@dataclass(frozen=True, slots=True)
class Verified:
    """What :meth:`SignedWebhookController.verify` found."""

    #: The request's signature, remembered for the window to refuse replays; empty for a
    #: scheme with nothing to remember (every request is then processed, idempotently).
    signature: str
    #: When the vendor signed it (Unix seconds), for schemes that sign a time; ``None`` else.
    signed_at: float | None = None
    #: Anything verification already parsed, handed to :meth:`SignedWebhookController.process`.
    payload: Any = None


class SignedWebhookController(Controller):
    """A vendor's webhook endpoint, authenticated by the vendor's signature (see module docs)."""

    tags = ["webhooks"]
    #: The vendor as messages and replay keys name it ("sendgrid").
    source: ClassVar[str]
    #: Oldest signed time accepted, in seconds (see :meth:`max_age`).
    max_age_seconds: ClassVar[float] = 300.0
    #: How far ahead of this server's clock a signed time may be.
    future_tolerance_seconds: ClassVar[float] = 300.0

    def verify(self, runtime: Runtime, request: WebhookRequest) -> Verified:
        """Authenticate ``request`` by the vendor's scheme; raise ``WebhookRejected(401, ...)``
        unless it is signed with the configured secret."""
        raise NotImplementedError

    def process(self, runtime: Runtime, request: WebhookRequest, verified: Verified) -> Any:
        """Parse and store a verified request (in a worker thread); the JSON answer.

        Raise :class:`WebhookRejected` (400 for a body that cannot be read, 503 when the work
        must be delivered again later) to refuse it; the signature is then forgotten.
        """
        raise NotImplementedError

    def max_age(self, runtime: Runtime) -> float:
        """The replay window in seconds; override to read it from the plugin's options."""
        return self.max_age_seconds

    @post("/events", status_code=200, security=[], opt={"problems": [400, 401, 403, 413]})
    async def events(self, state: State, request: Request[Any, Any, Any]) -> Response[Any]:
        """Verify, then record the vendor's events."""
        return await self.receive(state, request)

    async def receive(
        self, state: State, request: Request[Any, Any, Any], **path_params: Any
    ) -> Response[Any]:
        """The whole path of one request: verify, window, replay, process, answer."""
        runtime: Runtime = state.runtime
        query = request.url.query
        webhook = WebhookRequest(
            method=request.method,
            url=runtime.settings.base_url.rstrip("/")
            + request.url.path
            + (f"?{query}" if query else ""),
            headers={k.lower(): v for k, v in request.headers.items()},
            body=await request.body(),
            path_params=path_params,
        )
        claim: str | None = None
        try:
            verified = self.verify(runtime, webhook)
            window = self.max_age(runtime)
            self._check_time(verified, window)
            claim = self._claim(runtime, verified, window)
            answer = await sync_to_thread(self.process, runtime, webhook, verified)
        except WebhookRejected as exc:
            self._release(runtime, claim)
            if exc.status >= 500:
                log.warning("%s webhook: %s", self.source, exc)
            return _error(exc.status, str(exc))
        except ConfigurationError as exc:
            self._release(runtime, claim)
            log.warning("%s webhook: %s", self.source, exc)
            return _error(503, f"the server's {self.source} configuration is wrong: {exc}")
        except BaseException:
            self._release(runtime, claim)
            raise
        return Response(answer, media_type=MediaType.JSON)

    def _check_time(self, verified: Verified, window: float) -> None:
        if verified.signed_at is None:
            return
        age = time.time() - verified.signed_at
        if not math.isfinite(age) or age > window:
            raise WebhookRejected(
                401,
                f"the request was signed {age:.0f} s ago; older than {window:.0f} s is refused "
                "as a possible replay",
            )
        if age < -self.future_tolerance_seconds:
            raise WebhookRejected(
                401, "the signed time is in the future; check this server's clock"
            )

    def _claim(self, runtime: Runtime, verified: Verified, window: float) -> str | None:
        if not verified.signature:
            return None
        digest = hashlib.sha256(verified.signature.encode()).hexdigest()[:40]
        key = _SEEN_KEY.format(source=self.source, digest=digest)
        seconds = math.ceil(window + self.future_tolerance_seconds)
        if not runtime.redis.set(key, b"1", nx=True, ex=seconds):
            raise WebhookRejected(
                401, "this signed request was received before; a replay is refused"
            )
        return key

    @staticmethod
    def _release(runtime: Runtime, claim: str | None) -> None:
        if claim is not None:
            runtime.redis.delete(claim)


def required_headers(request: WebhookRequest, *names: str) -> list[str]:
    """The values of the signature headers ``names``; 401 naming them when one is missing."""
    values = [request.header(name) for name in names]
    if not all(values):
        raise WebhookRejected(401, f"unsigned request: {' and '.join(names)} required")
    return values


def required_secret(value: str, setting: str) -> str:
    """The configured secret (key) of the webhook; 401 saying what to set when it is empty."""
    if not value:
        raise WebhookRejected(
            401, f"signature verification is not configured: set {setting}; nothing is taken"
        )
    return value


def json_body(request: WebhookRequest, *, array: bool = False) -> Any:
    """The body parsed as JSON (with ``array``, a JSON array); 400 otherwise."""
    try:
        body = json.loads(request.body)
    except ValueError:
        raise WebhookRejected(400, "the body is not JSON") from None
    if array and not isinstance(body, list):
        raise WebhookRejected(400, "the body must be a JSON array of events")
    return body


@functools.lru_cache(maxsize=16)
def load_ec_public_key(text: str, setting: str) -> ec.EllipticCurvePublicKey:
    """An elliptic-curve public key from base64 DER (as vendors show it) or PEM; a
    ConfigurationError naming ``setting`` when ``text`` is not one."""
    cleaned = text.strip()
    try:
        if cleaned.startswith("-----BEGIN"):
            key = load_pem_public_key(cleaned.encode())
        else:
            key = load_der_public_key(base64.b64decode("".join(cleaned.split()), validate=True))
    except (ValueError, binascii.Error, UnsupportedAlgorithm) as exc:
        raise ConfigurationError(
            f"{setting} is not a public key: paste the verification key the vendor shows ({exc})"
        ) from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ConfigurationError(f"{setting} is not an elliptic-curve key")
    return key


def verify_ecdsa_sha256(key: ec.EllipticCurvePublicKey, message: bytes, signature: str) -> bool:
    """Whether ``signature`` (base64 DER ECDSA) signs ``message`` with ``key`` and SHA-256."""
    try:
        key.verify(
            base64.b64decode(signature.strip(), validate=True), message, ec.ECDSA(hashes.SHA256())
        )
    except (InvalidSignature, ValueError, binascii.Error):
        return False
    return True


def _error(status: int, message: str) -> Response[Any]:
    headers = {"Retry-After": str(RETRY_AFTER_SECONDS)} if status == 503 else None
    return problem(status, message, headers=headers)
