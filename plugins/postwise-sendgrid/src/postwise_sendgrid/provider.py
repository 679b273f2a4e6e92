"""The ``sendgrid`` provider: each message one ``POST /v3/mail/send`` over pooled connections.

SendGrid's Mail Send answers for the request, never with an SMTP reply, so results carry its
status as ``http_status`` and no ``code``. Outcomes, per message:

=====================================  ===========================================================
SendGrid's answer                      outcome
=====================================  ===========================================================
2xx                                    ``accepted``, keeping ``X-Message-Id``
429                                    ``deferred`` for ``Retry-After`` (or until
                                       ``X-RateLimit-Reset``); the rest of the batch is not
                                       attempted and waits as long
401, 403, 404, 405                     ``transient``, and the rest of the batch is not attempted:
                                       the API key, its permissions, the verified sender or
                                       ``base_url`` are wrong, no fault of the recipient; the
                                       messages wait while the operator fixes it
400 about the recipient's address      ``permanent`` with ``bounce_kind`` ``unknown``: bounced,
only (``personalizations.N.to.N.      but compliance takes no action on the address
email``)
any other 4xx (400 validation, 413     ``failed``: our request cannot succeed as it is; dead-
too large, 415)                        lettered with SendGrid's ``field: message`` errors, never
                                       a bounce
5xx                                    ``transient`` (waiting at least a ``Retry-After``)
no connection                          ``transient``, the rest of the batch is not attempted
request sent, answer lost              ``unknown``: in doubt, never sent again automatically
message not expressible as a request   ``failed``
=====================================  ===========================================================

SendGrid applies its suppression lists after accepting a request: a suppressed recipient is
``accepted`` here and comes back as a ``dropped`` webhook event.

The API key is sent only in the ``Authorization`` header and never logged: no request, header
or body is logged here, and httpx logs request lines only.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

import httpx

from postwise import __version__ as postwise_version
from postwise.delivery.http import (
    MAX_REASON,
    HttpApiProvider,
    Verdict,
    rate_limited,
    retry_after_seconds,
)
from postwise.delivery.provider import BounceKind, Outcome, OutgoingMessage, SendResult
from postwise.errors import ConfigurationError
from postwise_sendgrid.convert import ConversionError, mail_send_body
from postwise_sendgrid.options import SendGridOptions

__all__ = ["MAIL_SEND_PATH", "RESET_HEADER", "SendGridProvider", "classify_response"]

MAIL_SEND_PATH = "/v3/mail/send"
#: SendGrid's rate-limit reset time (epoch seconds), read when ``Retry-After`` is missing.
RESET_HEADER = "x-ratelimit-reset"
#: Statuses that mean the configuration is wrong, not the message.
_CONFIGURATION_STATUSES = {401: "the API key was refused", 403: "the request was forbidden"}
_CONFIGURATION_STATUSES |= {404: "no such endpoint", 405: "no such endpoint"}
_RECIPIENT_FIELD = re.compile(r"personalizations\.\d+\.to\.\d+\.email")


def _errors(body: bytes) -> list[tuple[str | None, str]]:
    """SendGrid's ``{"errors": [{"field", "message"}]}`` as (field, message) pairs."""
    try:
        data = json.loads(body)
    except ValueError:
        text = body.decode("utf-8", "replace").strip()[:200]
        return [(None, text)] if text else []
    errors = data.get("errors") if isinstance(data, dict) else None
    if not isinstance(errors, list):
        return [(None, json.dumps(data)[:200])]
    pairs = []
    for error in errors:
        if isinstance(error, dict):
            field = error.get("field")
            message = str(error.get("message") or "").strip()
            pairs.append((str(field) if field else None, message))
    return pairs


def _describe(errors: list[tuple[str | None, str]]) -> str:
    text = "; ".join(f"{field}: {message}" if field else message for field, message in errors)
    return text or "-"


def classify_response(
    message_id: str, status: int, headers: Mapping[str, str], body: bytes
) -> Verdict:
    """The outcome of one Mail Send response (see the module docs)."""
    if 200 <= status < 300:
        provider_id = headers.get("x-message-id") or None
        return Verdict(
            SendResult(
                message_id, Outcome.ACCEPTED, http_status=status, provider_message_id=provider_id
            )
        )
    if status == 429:
        return rate_limited(
            message_id, status, headers, service="SendGrid", reset_header=RESET_HEADER
        )
    errors = _errors(body)
    detail = _describe(errors)
    if status in _CONFIGURATION_STATUSES:
        reason = (
            f"SendGrid answered HTTP {status} ({_CONFIGURATION_STATUSES[status]}): {detail}; "
            "check the API key, its Mail Send permission, the verified sender and base_url"
        )
        result = SendResult(
            message_id, Outcome.TRANSIENT, reason=reason[:MAX_REASON], http_status=status
        )
        return Verdict(result, halt=True)
    if status >= 500:
        reason = f"SendGrid server error (HTTP {status}): {detail}"[:MAX_REASON]
        wait = retry_after_seconds(headers, reset_header=RESET_HEADER)
        return Verdict(
            SendResult(
                message_id, Outcome.TRANSIENT, reason=reason, http_status=status, retry_after=wait
            )
        )
    if status == 400 and errors and all(f and _RECIPIENT_FIELD.fullmatch(f) for f, _ in errors):
        reason = f"SendGrid refused the recipient's address (HTTP 400): {detail}"[:MAX_REASON]
        return Verdict(
            SendResult(
                message_id,
                Outcome.PERMANENT,
                reason=reason,
                http_status=status,
                bounce_kind=BounceKind.UNKNOWN,
            )
        )
    reason = f"SendGrid refused the request (HTTP {status}): {detail}"[:MAX_REASON]
    return Verdict(SendResult(message_id, Outcome.FAILED, reason=reason, http_status=status))


class SendGridProvider(HttpApiProvider):
    """Sends through SendGrid's v3 Mail Send API; see the module docs for the outcomes."""

    name = "sendgrid"
    service = "SendGrid"

    def __init__(self, options: SendGridOptions) -> None:
        if not options.api_key.get_secret_value():
            raise ConfigurationError(
                "provider_options.sendgrid.api_key is not set: create an API key with the Mail "
                "Send permission and set POSTWISE_PROVIDER_OPTIONS__SENDGRID__API_KEY"
            )
        super().__init__(
            base_url=options.base_url,
            timeout=options.timeout,
            concurrency=options.concurrency,
            headers={
                "Authorization": f"Bearer {options.api_key.get_secret_value()}",
                "User-Agent": f"postwise/{postwise_version} postwise-sendgrid",
                "Accept": "application/json",
            },
        )
        self.options = options

    def send_one(self, client: httpx.Client, message: OutgoingMessage) -> Verdict:
        """Convert ``message`` to a Mail Send request, send it and classify the answer."""
        try:
            body = mail_send_body(message, self.options)
        except ConversionError as exc:
            reason = f"cannot be sent through SendGrid: {exc}"
            return Verdict(SendResult(message.message_id, Outcome.FAILED, reason=reason))
        return self.post(
            client,
            message,
            MAIL_SEND_PATH,
            body,
            lambda response: classify_response(
                message.message_id, response.status_code, response.headers, response.content
            ),
        )
