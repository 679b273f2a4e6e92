"""The ``sendgrid`` provider: each message one ``POST /v3/mail/send`` over pooled connections.

Outcomes, per message:

* 2xx: ``accepted``, keeping SendGrid's ``X-Message-Id``;
* 429: ``transient`` (the reason carries ``Retry-After``); the rest of the batch is not
  attempted, since SendGrid would refuse it too, and the core re-queues it all with backoff;
* 5xx, connection errors, timeouts: ``transient``;
* 401, 403, 404, 405: ``transient`` and the rest of the batch is not attempted: the API key,
  its permissions, the verified sender or the base URL are wrong, which is no fault of the
  recipient; the messages wait while the operator fixes the configuration;
* any other 4xx (400 validation errors, 413 too large): ``permanent``, with SendGrid's error
  messages (``field: message``) and the HTTP status in the reason and no ``code``, so that the
  compliance consumer cannot mistake the HTTP status for an SMTP reply about the recipient;
* a message that cannot be expressed as a Mail Send request: ``permanent``.

The API key is sent only in the ``Authorization`` header and never logged: no request, header
or body is logged here, and httpx logs request lines only.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from email.utils import parsedate_to_datetime

import httpx

from postwise import __version__ as postwise_version
from postwise.delivery.provider import Outcome, OutgoingMessage, Provider, SendResult
from postwise.errors import ConfigurationError
from postwise_sendgrid.convert import ConversionError, mail_send_body
from postwise_sendgrid.options import SendGridOptions

__all__ = ["MAIL_SEND_PATH", "SendGridProvider", "classify_response", "retry_after_seconds"]

log = logging.getLogger(__name__)

MAIL_SEND_PATH = "/v3/mail/send"
#: Statuses that mean the configuration is wrong, not the message.
_CONFIGURATION_STATUSES = {401: "the API key was refused", 403: "the request was forbidden"}
_CONFIGURATION_STATUSES |= {404: "no such endpoint", 405: "no such endpoint"}
_MAX_REASON = 500


def _error_text(body: bytes) -> str:
    """SendGrid's ``{"errors": [{"field", "message"}]}`` as ``field: message; ...``."""
    try:
        data = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip()[:200]
    errors = data.get("errors") if isinstance(data, dict) else None
    if not isinstance(errors, list):
        return json.dumps(data)[:200]
    parts = []
    for error in errors:
        if not isinstance(error, dict):
            continue
        message = str(error.get("message") or "").strip()
        field = error.get("field")
        parts.append(f"{field}: {message}" if field else message)
    return "; ".join(p for p in parts if p)


def retry_after_seconds(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait according to ``Retry-After`` (seconds or HTTP date) or SendGrid's
    ``X-RateLimit-Reset`` (epoch seconds); ``None`` when neither says."""
    now = time.time() if now is None else now
    value = headers.get("retry-after")
    if value:
        value = value.strip()
        if value.isdigit():
            return float(value)
        try:
            return max(0.0, parsedate_to_datetime(value).timestamp() - now)
        except (TypeError, ValueError):
            pass
    reset = headers.get("x-ratelimit-reset", "").strip()
    if reset.isdigit():
        return max(0.0, float(reset) - now)
    return None


def classify_response(
    message_id: str, status: int, headers: Mapping[str, str], body: bytes
) -> tuple[SendResult, str | None]:
    """The outcome of one Mail Send response, and why to stop the batch (``None``: go on)."""
    if 200 <= status < 300:
        provider_id = headers.get("x-message-id") or None
        accepted = SendResult(
            message_id, Outcome.ACCEPTED, code=status, provider_message_id=provider_id
        )
        return accepted, None
    detail = _error_text(body)
    if status == 429:
        wait = retry_after_seconds(headers)
        after = f"; retry after {wait:.0f} s" if wait is not None else ""
        reason = f"rate limited by SendGrid (HTTP 429){after}"
        return SendResult(message_id, Outcome.TRANSIENT, code=status, reason=reason), reason
    if status in _CONFIGURATION_STATUSES:
        reason = (
            f"SendGrid answered HTTP {status} ({_CONFIGURATION_STATUSES[status]}): "
            f"{detail or '-'}; check the API key, its Mail Send permission, the verified "
            "sender and base_url"
        )[:_MAX_REASON]
        return SendResult(message_id, Outcome.TRANSIENT, code=status, reason=reason), reason
    if status >= 500:
        reason = f"SendGrid server error (HTTP {status}): {detail or '-'}"[:_MAX_REASON]
        return SendResult(message_id, Outcome.TRANSIENT, code=status, reason=reason), None
    reason = f"SendGrid refused the message (HTTP {status}): {detail or '-'}"[:_MAX_REASON]
    # No code: the core reads a permanent result's code as an SMTP reply when it classifies the
    # bounce, and an HTTP 400 would count as a soft bounce against a recipient who did nothing.
    return SendResult(message_id, Outcome.PERMANENT, reason=reason), None


class _Halt:
    """The first reason to stop attempting the rest of a batch, shared by its threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reason: str | None = None

    def set(self, reason: str) -> None:
        with self._lock:
            if self.reason is None:
                self.reason = reason


class SendGridProvider(Provider):
    """Sends through SendGrid's v3 Mail Send API; see the module docs for the outcomes."""

    name = "sendgrid"

    def __init__(self, options: SendGridOptions) -> None:
        if not options.api_key.get_secret_value():
            raise ConfigurationError(
                "provider_options.sendgrid.api_key is not set: create an API key with the Mail "
                "Send permission and set POSTWISE_PROVIDER_OPTIONS__SENDGRID__API_KEY"
            )
        self.options = options
        self._lock = threading.Lock()
        self._client: httpx.Client | None = None
        self._executor: ThreadPoolExecutor | None = None

    def _http(self) -> httpx.Client:
        with self._lock:
            if self._client is None:
                size = self.options.concurrency
                self._client = httpx.Client(
                    base_url=self.options.base_url,
                    headers={
                        "Authorization": f"Bearer {self.options.api_key.get_secret_value()}",
                        "User-Agent": f"postwise/{postwise_version} postwise-sendgrid",
                        "Accept": "application/json",
                    },
                    timeout=self.options.timeout,
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
                    max_workers=self.options.concurrency, thread_name_prefix="sendgrid"
                )
            return self._executor

    def send_batch(self, messages: Sequence[OutgoingMessage]) -> list[SendResult]:
        """One request per message, up to ``concurrency`` at once; results in order."""
        if not messages:
            return []
        client = self._http()
        halt = _Halt()

        def attempt(message: OutgoingMessage) -> SendResult:
            if halt.reason is not None:
                return SendResult(
                    message.message_id, Outcome.TRANSIENT, reason=f"not attempted: {halt.reason}"
                )
            result, stop = self._send_one(client, message)
            if stop is not None:
                halt.set(stop)
            return result

        if len(messages) == 1 or self.options.concurrency == 1:
            return [attempt(message) for message in messages]
        return list(self._pool().map(attempt, messages))

    def _send_one(
        self, client: httpx.Client, message: OutgoingMessage
    ) -> tuple[SendResult, str | None]:
        try:
            body = mail_send_body(
                message,
                vendor_tracking=self.options.vendor_tracking,
                sandbox_mode=self.options.sandbox_mode,
                ip_pool_name=self.options.ip_pool_name,
            )
        except ConversionError as exc:
            reason = f"cannot be sent through SendGrid: {exc}"
            return SendResult(message.message_id, Outcome.PERMANENT, reason=reason), None
        try:
            response = client.post(MAIL_SEND_PATH, json=body)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            reason = f"cannot connect to {self.options.base_url}: {exc}"[:_MAX_REASON]
            return SendResult(message.message_id, Outcome.TRANSIENT, reason=reason), reason
        except httpx.TimeoutException as exc:
            # The request may have reached SendGrid: a retry can duplicate the message, as
            # with an SMTP connection lost after DATA.
            reason = (
                f"no answer from SendGrid within {self.options.timeout:g} s "
                f"({type(exc).__name__}); it may have been accepted"
            )
            return SendResult(message.message_id, Outcome.TRANSIENT, reason=reason), None
        except httpx.TransportError as exc:
            reason = f"connection to SendGrid lost ({type(exc).__name__}: {exc})"[:_MAX_REASON]
            return SendResult(message.message_id, Outcome.TRANSIENT, reason=reason), None
        result, stop = classify_response(
            message.message_id, response.status_code, response.headers, response.content
        )
        if result.outcome is not Outcome.ACCEPTED:
            log.info("sendgrid: %s %s: %s", message.message_id, result.outcome, result.reason)
        return result, stop

    def close(self) -> None:
        """Close pooled connections and threads; a later send_batch opens new ones."""
        with self._lock:
            client, self._client = self._client, None
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)
        if client is not None:
            client.close()
