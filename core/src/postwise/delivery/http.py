"""What providers that send through an ESP's HTTP API share: one request per message over pooled
connections, and what a failed request means.

:class:`HttpApiProvider` sends a batch with up to ``concurrency`` requests in flight and stops
attempting the rest of the batch when an answer says the others would fare no better (a refused
API key, a 429). A subclass builds and classifies one request (:meth:`HttpApiProvider.send_one`)
and calls :meth:`HttpApiProvider.post`, which turns a failed request into a result:

* no connection could be made: ``deferred`` (never sent, so no attempt is used), and the rest
  of the batch waits with it, as mail waits for an SMTP relay that is away;
* the request did not leave completely (the pool or the write timed out): ``transient``, safe
  to send again;
* the request was sent and the answer did not come (read timeout, connection reset or closed
  before the answer): ``unknown``. The ESP may have taken the message, so it is not sent again
  automatically (see :class:`~postwise.delivery.provider.Outcome`).

:func:`retry_after_seconds` (defined in :mod:`postwise.httputil`, shared with the CRM
connectors) reads ``Retry-After`` (seconds or an HTTP date) and, where a vendor sends one, an
epoch-seconds reset header such as SendGrid's ``X-RateLimit-Reset``.
"""

from __future__ import annotations

import abc
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, ClassVar

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from postwise.delivery.provider import (
    BounceKind,
    Outcome,
    OutgoingMessage,
    Provider,
    SendObserver,
    SendResult,
    not_handed_over,
)
from postwise.errors import ConfigurationError
from postwise.httputil import retry_after_seconds
from postwise.options import AbsoluteUrl

__all__ = [
    "CONFIGURATION_STATUSES",
    "MAX_REASON",
    "HttpApiProvider",
    "HttpProviderOptions",
    "Verdict",
    "classify_status",
    "rate_limited",
    "retry_after_seconds",
]

log = logging.getLogger(__name__)

#: Reasons are cut to this many characters (an ESP's error body can be long).
MAX_REASON = 500

# Failures that happen before the request is complete on the wire: the ESP cannot have taken
# the message. Everything else (read timeouts, resets and closes while waiting for the answer)
# leaves it in doubt.
_NOT_SENT: tuple[type[httpx.TransportError], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.WriteError,
    httpx.WriteTimeout,
    httpx.LocalProtocolError,
    httpx.UnsupportedProtocol,
    httpx.ProxyError,
)
_NOT_CONNECTED: tuple[type[httpx.TransportError], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.UnsupportedProtocol,
    httpx.ProxyError,
)


@dataclass(frozen=True, slots=True)
class Verdict:
    """The result of one request, and whether to leave the rest of the batch unattempted."""

    result: SendResult
    #: The other messages would fare no better (a refused key, a 429): do not send them now.
    halt: bool = False


def rate_limited(
    message_id: str,
    status: int,
    headers: Mapping[str, str],
    *,
    service: str,
    reset_header: str | None = None,
) -> Verdict:
    """A 429: ``deferred`` for as long as the ESP asked, and the rest of the batch waits too."""
    wait = retry_after_seconds(headers, reset_header=reset_header)
    after = f"; retry after {wait:.0f} s" if wait is not None else ""
    return Verdict(
        SendResult(
            message_id,
            Outcome.DEFERRED,
            reason=f"rate limited by {service} (HTTP {status}){after}",
            http_status=status,
            retry_after=wait,
        ),
        halt=True,
    )


#: Statuses that mean our configuration is wrong (the key, its permissions, the sender,
#: ``base_url``), not the message: the rest of the batch would fare no better.
CONFIGURATION_STATUSES = {
    401: "the API key was refused",
    403: "the request was forbidden",
    404: "no such endpoint",
    405: "no such endpoint",
}


def classify_status(
    message_id: str,
    status: int,
    headers: Mapping[str, str],
    *,
    service: str,
    detail: str,
    provider_message_id: str | None = None,
    reset_header: str | None = None,
    recipient_refused: bool = False,
) -> Verdict:
    """What an ESP's HTTP status means, for APIs that answer each message with its status.

    2xx ``accepted``; 429 ``deferred`` (:func:`rate_limited`); 401/403/404/405 ``transient``
    and the batch halts; 5xx ``transient`` (waiting at least a ``Retry-After``); a 4xx about
    the recipient's address only (``recipient_refused``) ``permanent`` with ``bounce_kind``
    ``unknown``; any other 4xx ``failed``. ``detail`` is the ESP's error text for the reason.
    """
    if 200 <= status < 300:
        return Verdict(
            SendResult(
                message_id,
                Outcome.ACCEPTED,
                http_status=status,
                provider_message_id=provider_message_id,
            )
        )
    if status == 429:
        return rate_limited(message_id, status, headers, service=service, reset_header=reset_header)
    if status in CONFIGURATION_STATUSES:
        reason = (
            f"{service} answered HTTP {status} ({CONFIGURATION_STATUSES[status]}): {detail}; "
            "check the API key, its permissions, the verified sender and base_url"
        )
        result = SendResult(
            message_id, Outcome.TRANSIENT, reason=reason[:MAX_REASON], http_status=status
        )
        return Verdict(result, halt=True)
    if status >= 500:
        wait = retry_after_seconds(headers, reset_header=reset_header)
        reason = f"{service} server error (HTTP {status}): {detail}"[:MAX_REASON]
        return Verdict(
            SendResult(
                message_id, Outcome.TRANSIENT, reason=reason, http_status=status, retry_after=wait
            )
        )
    if recipient_refused:
        reason = f"{service} refused the recipient's address (HTTP {status}): {detail}"
        return Verdict(
            SendResult(
                message_id,
                Outcome.PERMANENT,
                reason=reason[:MAX_REASON],
                http_status=status,
                bounce_kind=BounceKind.UNKNOWN,
            )
        )
    reason = f"{service} refused the request (HTTP {status}): {detail}"[:MAX_REASON]
    return Verdict(SendResult(message_id, Outcome.FAILED, reason=reason, http_status=status))


class HttpProviderOptions(BaseModel):
    """The options every HTTP-API ESP plugin has; subclass it (redeclare ``base_url`` with the
    vendor's default) and add the vendor's own."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    api_key: SecretStr = Field(default=SecretStr(""), description="The vendor's API key.")
    base_url: AbsoluteUrl = Field(description="API base URL.")
    timeout: float = Field(default=30.0, gt=0, le=600, description="Seconds per request.")
    concurrency: int = Field(
        default=8,
        ge=1,
        le=64,
        description="Requests in flight at once per send_batch call (and pooled connections).",
    )
    vendor_tracking: bool = Field(
        default=False,
        description="Leave the vendor's open/click tracking to the account settings instead of "
        "switching it off per message (postwise tracks opens and clicks itself).",
    )
    webhook_max_age_seconds: int = Field(
        default=86_400,
        ge=60,
        le=7 * 86_400,
        description="Oldest signed webhook accepted; event ids are remembered this long, so a "
        "replayed request is either recognised or refused.",
    )

    def api_key_or_raise(self, setting: str) -> str:
        """The API key; a ConfigurationError naming ``setting`` (the environment variable)
        when it is not set."""
        key = self.api_key.get_secret_value()
        if not key:
            raise ConfigurationError(f"the API key is not set: set {setting}")
        return key


class _Halt:
    """The first verdict that stopped a batch, shared by its threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.verdict: Verdict | None = None

    def set(self, verdict: Verdict) -> None:
        with self._lock:
            if self.verdict is None:
                self.verdict = verdict


class HttpApiProvider(Provider):
    """A provider making one HTTP request per message, up to ``concurrency`` at once.

    The client and the thread pool are made on first use and kept (pooled keep-alive
    connections); :meth:`close` releases them and a later batch makes new ones.
    """

    #: The service as reasons name it ("SendGrid").
    service: ClassVar[str]

    def __init__(
        self, *, base_url: str, timeout: float, concurrency: int, headers: Mapping[str, str]
    ) -> None:
        self.base_url = base_url
        self.timeout = timeout
        self.concurrency = concurrency
        self._headers = dict(headers)
        self._lock = threading.Lock()
        self._client: httpx.Client | None = None
        self._executor: ThreadPoolExecutor | None = None

    @abc.abstractmethod
    def send_one(self, client: httpx.Client, message: OutgoingMessage) -> Verdict:
        """Send ``message`` (usually through :meth:`post`) and classify the answer."""

    def send_batch(self, messages: Sequence[OutgoingMessage]) -> list[SendResult]:
        """One request per message, up to ``concurrency`` at once; results in order."""
        return self.send_observed(messages, None)

    def send_observed(
        self, messages: Sequence[OutgoingMessage], observer: SendObserver | None
    ) -> list[SendResult]:
        """:meth:`send_batch`, telling ``observer`` about each request (see
        :meth:`Provider.send_observed`)."""
        if not messages:
            return []
        client = self._http()
        halt = _Halt()
        refused = threading.Event()

        def attempt(message: OutgoingMessage) -> SendResult:
            stopped = halt.verdict
            if stopped is not None:
                return _not_attempted(message, stopped.result)
            if refused.is_set() or (observer is not None and not observer.handing_over([message])):
                refused.set()
                return not_handed_over(message)
            verdict = self.send_one(client, message)
            if verdict.halt:
                halt.set(verdict)
            if observer is not None:
                observer.answered(verdict.result)
            return verdict.result

        if len(messages) == 1 or self.concurrency == 1:
            return [attempt(message) for message in messages]
        return list(self._pool().map(attempt, messages))

    def post(
        self,
        client: httpx.Client,
        message: OutgoingMessage,
        path: str,
        body: Any,
        classify: Callable[[httpx.Response], Verdict],
    ) -> Verdict:
        """POST ``body`` as JSON to ``path``; ``classify`` judges the answer, a failed request
        is judged here (see the module docs). What is not accepted is logged, without body."""
        try:
            response = client.post(path, json=body)
        except httpx.TransportError as exc:
            verdict = self._failed_request(message.message_id, exc)
        else:
            verdict = classify(response)
        result = verdict.result
        if result.outcome is not Outcome.ACCEPTED:
            log.info("%s: %s %s: %s", self.name, message.message_id, result.outcome, result.reason)
        return verdict

    def _failed_request(self, message_id: str, exc: httpx.TransportError) -> Verdict:
        what = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        if isinstance(exc, _NOT_CONNECTED):
            # Never sent: it waits without using up an attempt, as SMTP mail waits for a relay
            # that is away, and the rest of the batch with it.
            reason = f"cannot connect to {self.base_url}: {what}"[:MAX_REASON]
            return Verdict(SendResult(message_id, Outcome.DEFERRED, reason=reason), halt=True)
        if isinstance(exc, _NOT_SENT):
            reason = f"the request to {self.service} was not sent completely ({what})"
            return Verdict(SendResult(message_id, Outcome.TRANSIENT, reason=reason[:MAX_REASON]))
        if isinstance(exc, httpx.TimeoutException):
            reason = (
                f"no answer from {self.service} within {self.timeout:g} s after the request was "
                f"sent ({type(exc).__name__}); it may have been accepted"
            )
        else:
            reason = (
                f"connection to {self.service} lost before its answer ({what}); it may have "
                "been accepted"
            )
        return Verdict(SendResult(message_id, Outcome.UNKNOWN, reason=reason[:MAX_REASON]))

    def _http(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                size = self.concurrency
                self._client = httpx.Client(
                    base_url=self.base_url,
                    headers=self._headers,
                    timeout=self.timeout,
                    # Retries cover only failures to connect: the request was never sent.
                    transport=httpx.HTTPTransport(
                        retries=1,
                        limits=httpx.Limits(max_connections=size, max_keepalive_connections=size),
                    ),
                )
            return self._client

    def _pool(self) -> ThreadPoolExecutor:
        with self._lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    max_workers=self.concurrency, thread_name_prefix=self.name
                )
            return self._executor

    def close(self) -> None:
        """Close pooled connections and threads; a later send_batch opens new ones."""
        with self._lock:
            client, self._client = self._client, None
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)
        if client is not None:
            client.close()


def _not_attempted(message: OutgoingMessage, cause: SendResult) -> SendResult:
    """A message left out after ``cause`` stopped the batch: deferred (it was never sent, so it
    uses up no attempt), for as long as ``cause`` asked if it did."""
    return SendResult(
        message.message_id,
        Outcome.DEFERRED,
        reason=f"not attempted: {cause.reason}"[:MAX_REASON],
        retry_after=cause.retry_after,
    )
