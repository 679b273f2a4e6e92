"""The ``mailchimp`` provider: each message one ``messages/send-raw`` call over pooled
connections.

``send-raw`` takes the MIME document as it is, so the message goes out as postwise rendered and
DKIM-signed it. One header is added in front: ``X-MC-Metadata`` with postwise's message id
(``postwise_message_id``) and the message's metadata. Mailchimp strips it before delivery and
returns it as ``msg.metadata`` in every webhook event, which ties events to the send ledger. An
added header is not among the signed ones, so the DKIM signature stays valid.

Outcomes, per message:

* 2xx with the recipient ``sent``, ``queued`` or ``scheduled``: ``accepted``, keeping ``_id``;
* 2xx with the recipient ``rejected`` or ``invalid``: ``permanent``, with ``reject_reason``;
* errors (``{"status": "error", "name", "message"}``, which Mailchimp sends with HTTP 500
  whatever the cause) by name: ``ValidationError`` is ``permanent`` (without a ``code``, so
  that the compliance consumer cannot read the HTTP 500 as an SMTP reply); ``Invalid_Key``,
  ``PaymentRequired`` and ``Unknown_Subaccount`` are ``transient`` and stop the batch (the
  configuration is wrong, not the message); ``GeneralError`` is ``transient``;
* 429 (Retry-After in the reason), 5xx, connection errors and timeouts: ``transient``; a 429
  or a failure to connect also stops the rest of the batch.

The API key travels in the JSON body, as the API requires; bodies are never logged.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from email.utils import parsedate_to_datetime
from typing import Any

import httpx

from postwise import __version__ as postwise_version
from postwise.delivery.provider import Outcome, OutgoingMessage, Provider, SendResult
from postwise.errors import ConfigurationError
from postwise_mailchimp.options import MailchimpOptions

__all__ = [
    "MESSAGE_ID_KEY",
    "METADATA_HEADER",
    "SEND_RAW_PATH",
    "MailchimpProvider",
    "classify_response",
    "retry_after_seconds",
    "with_metadata",
]

log = logging.getLogger(__name__)

#: As the vendor's client calls it: the method path plus the output format.
SEND_RAW_PATH = "/messages/send-raw.json"
METADATA_HEADER = "X-MC-Metadata"
#: The metadata key carrying postwise's message id (the ledger key).
MESSAGE_ID_KEY = "postwise_message_id"
_ACCEPTED_STATUSES = frozenset({"sent", "queued", "scheduled"})
_CONFIGURATION_ERRORS = frozenset({"Invalid_Key", "PaymentRequired", "Unknown_Subaccount"})
_HALTING_STATUSES = {401: "unauthorised", 403: "forbidden", 404: "no such endpoint"}
_MAX_REASON = 500


def with_metadata(message: OutgoingMessage) -> bytes:
    """``message.raw`` with ``X-MC-Metadata`` in front: the ledger id and the metadata."""
    metadata = {f"postwise_{key}": str(value) for key, value in message.metadata.items()}
    metadata[MESSAGE_ID_KEY] = message.message_id
    # ensure_ascii keeps the header 7-bit; separators keep it short.
    value = json.dumps(metadata, separators=(",", ":"), ensure_ascii=True)
    return f"{METADATA_HEADER}: {value}\r\n".encode("ascii") + message.raw


def retry_after_seconds(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Seconds to wait according to ``Retry-After`` (seconds or an HTTP date)."""
    value = (headers.get("retry-after") or "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError):
        return None
    return max(0.0, when - (time.time() if now is None else now))


def _recipient_result(
    message_id: str, recipient: str, status: int, entries: list[Any]
) -> SendResult:
    wanted = recipient.lower()
    entry = next(
        (e for e in entries if isinstance(e, dict) and str(e.get("email", "")).lower() == wanted),
        entries[0] if entries and isinstance(entries[0], dict) else None,
    )
    if entry is None:
        return SendResult(
            message_id,
            Outcome.TRANSIENT,
            code=status,
            reason="Mailchimp Transactional answered without a result for the recipient",
        )
    state = str(entry.get("status") or "")
    provider_id = entry.get("_id") if isinstance(entry.get("_id"), str) else None
    if state in _ACCEPTED_STATUSES:
        return SendResult(
            message_id, Outcome.ACCEPTED, code=status, provider_message_id=provider_id
        )
    if state == "rejected":
        why = entry.get("reject_reason") or "no reason given"
        return SendResult(
            message_id,
            Outcome.PERMANENT,
            code=status,
            reason=f"rejected by Mailchimp Transactional: {why}",
            provider_message_id=provider_id,
        )
    if state == "invalid":
        return SendResult(
            message_id,
            Outcome.PERMANENT,
            code=status,
            reason="Mailchimp Transactional says the recipient address is invalid",
            provider_message_id=provider_id,
        )
    return SendResult(
        message_id,
        Outcome.TRANSIENT,
        code=status,
        reason=f"Mailchimp Transactional answered with the unknown status {state!r}",
    )


def classify_response(
    message_id: str, recipient: str, status: int, headers: Mapping[str, str], body: bytes
) -> tuple[SendResult, str | None]:
    """The outcome of one send-raw response, and why to stop the batch (``None``: go on)."""
    try:
        data: Any = json.loads(body)
    except ValueError:
        data = None
    if 200 <= status < 300 and isinstance(data, list):
        return _recipient_result(message_id, recipient, status, data), None
    name = message = ""
    if isinstance(data, dict) and data.get("status") == "error":
        name = str(data.get("name") or "")
        message = str(data.get("message") or "")
    detail = f"{name}: {message}" if name else (message or body.decode("utf-8", "replace")[:200])
    if status == 429:
        wait = retry_after_seconds(headers)
        after = f"; retry after {wait:.0f} s" if wait is not None else ""
        reason = f"rate limited by Mailchimp Transactional (HTTP 429){after}"
        return SendResult(message_id, Outcome.TRANSIENT, code=status, reason=reason), reason
    if name in _CONFIGURATION_ERRORS or status in _HALTING_STATUSES:
        reason = (
            f"Mailchimp Transactional refused the request (HTTP {status}, {detail or '-'}); "
            "check the API key, the account's billing and base_url"
        )[:_MAX_REASON]
        return SendResult(message_id, Outcome.TRANSIENT, code=status, reason=reason), reason
    if name == "ValidationError" or (not name and 400 <= status < 500):
        reason = (f"Mailchimp Transactional refused the message (HTTP {status}, {detail or '-'})")[
            :_MAX_REASON
        ]
        # No code: the core reads a permanent result's code as an SMTP reply when it classifies
        # the bounce, and this HTTP 500 would suppress a recipient who did nothing.
        return SendResult(message_id, Outcome.PERMANENT, reason=reason), None
    reason = f"Mailchimp Transactional failed (HTTP {status}, {detail or '-'})"[:_MAX_REASON]
    return SendResult(message_id, Outcome.TRANSIENT, code=status, reason=reason), None


class _Halt:
    """The first reason to stop attempting the rest of a batch, shared by its threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.reason: str | None = None

    def set(self, reason: str) -> None:
        with self._lock:
            if self.reason is None:
                self.reason = reason


class MailchimpProvider(Provider):
    """Sends through Mailchimp Transactional's ``messages/send-raw``; see the module docs."""

    name = "mailchimp"

    def __init__(self, options: MailchimpOptions) -> None:
        if not options.api_key.get_secret_value():
            raise ConfigurationError(
                "provider_options.mailchimp.api_key is not set: create an API key in "
                "Mailchimp Transactional and set POSTWISE_PROVIDER_OPTIONS__MAILCHIMP__API_KEY"
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
                    headers={"User-Agent": f"postwise/{postwise_version} postwise-mailchimp"},
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
                    max_workers=self.options.concurrency, thread_name_prefix="mailchimp"
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

    def _request_body(self, message: OutgoingMessage) -> dict[str, Any]:
        try:
            raw = with_metadata(message).decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("the message is neither 7-bit nor UTF-8") from None
        body: dict[str, Any] = {
            "key": self.options.api_key.get_secret_value(),
            "raw_message": raw,
            "from_email": message.sender,
            "to": [message.recipient],
            "async": self.options.async_send,
        }
        if self.options.ip_pool:
            body["ip_pool"] = self.options.ip_pool
        if self.options.return_path_domain:
            body["return_path_domain"] = self.options.return_path_domain
        return body

    def _send_one(
        self, client: httpx.Client, message: OutgoingMessage
    ) -> tuple[SendResult, str | None]:
        try:
            body = self._request_body(message)
        except ValueError as exc:
            reason = f"cannot be sent through Mailchimp Transactional: {exc}"
            return SendResult(message.message_id, Outcome.PERMANENT, reason=reason), None
        try:
            response = client.post(SEND_RAW_PATH, json=body)
        except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
            reason = f"cannot connect to {self.options.base_url}: {exc}"[:_MAX_REASON]
            return SendResult(message.message_id, Outcome.TRANSIENT, reason=reason), reason
        except httpx.TimeoutException as exc:
            # The request may have reached Mailchimp: a retry can duplicate the message, as
            # with an SMTP connection lost after DATA.
            reason = (
                f"no answer from Mailchimp Transactional within {self.options.timeout:g} s "
                f"({type(exc).__name__}); it may have been accepted"
            )
            return SendResult(message.message_id, Outcome.TRANSIENT, reason=reason), None
        except httpx.TransportError as exc:
            reason = (f"connection to Mailchimp Transactional lost ({type(exc).__name__}: {exc})")[
                :_MAX_REASON
            ]
            return SendResult(message.message_id, Outcome.TRANSIENT, reason=reason), None
        result, stop = classify_response(
            message.message_id,
            message.recipient,
            response.status_code,
            response.headers,
            response.content,
        )
        if result.outcome is not Outcome.ACCEPTED:
            log.info("mailchimp: %s %s: %s", message.message_id, result.outcome, result.reason)
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
