"""The ``sendgrid`` provider: each message one ``POST /v3/mail/send`` over pooled connections.

Built on the kit's :class:`~postwise.delivery.http.HttpApiProvider`; SendGrid's answers mean
what :func:`~postwise.delivery.http.classify_status` says (docs/providers.md, "What SendGrid's
answers mean"): a 400 whose every error names the recipient's address is a bounce that
compliance does not act on, a 429 waits for ``Retry-After`` or ``X-RateLimit-Reset``. SendGrid
applies its suppression lists after accepting: a suppressed recipient is ``accepted`` here and
comes back as a ``dropped`` webhook event. The API key goes in the ``Authorization`` header
only; no request, header or body is logged.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

import httpx

from postwise import __version__ as postwise_version
from postwise.delivery.http import HttpApiProvider, Verdict, classify_status
from postwise.delivery.provider import Outcome, OutgoingMessage, SendResult
from postwise_sendgrid.convert import ConversionError, mail_send_body
from postwise_sendgrid.options import SendGridOptions

__all__ = ["MAIL_SEND_PATH", "RESET_HEADER", "SendGridProvider", "classify_response"]

MAIL_SEND_PATH = "/v3/mail/send"
#: SendGrid's rate-limit reset time (epoch seconds), read when ``Retry-After`` is missing.
RESET_HEADER = "x-ratelimit-reset"
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
    return [
        (str(e["field"]) if e.get("field") else None, str(e.get("message") or "").strip())
        for e in errors
        if isinstance(e, dict)
    ]


def classify_response(
    message_id: str, status: int, headers: Mapping[str, str], body: bytes
) -> Verdict:
    """The outcome of one Mail Send response."""
    errors = _errors(body) if status >= 300 else []
    about_recipient = bool(errors) and all(f and _RECIPIENT_FIELD.fullmatch(f) for f, _ in errors)
    return classify_status(
        message_id,
        status,
        headers,
        service="SendGrid",
        detail="; ".join(f"{f}: {m}" if f else m for f, m in errors) or "-",
        provider_message_id=headers.get("x-message-id") or None,
        reset_header=RESET_HEADER,
        recipient_refused=about_recipient,
    )


class SendGridProvider(HttpApiProvider):
    """Sends through SendGrid's v3 Mail Send API."""

    name = "sendgrid"
    service = "SendGrid"

    def __init__(self, options: SendGridOptions) -> None:
        key = options.api_key_or_raise("POSTWISE_PROVIDER_OPTIONS__SENDGRID__API_KEY")
        super().__init__(
            base_url=options.base_url,
            timeout=options.timeout,
            concurrency=options.concurrency,
            headers={
                "Authorization": f"Bearer {key}",
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
            lambda r: classify_response(message.message_id, r.status_code, r.headers, r.content),
        )
