"""Turn a rendered, signed RFC 5322 message into a SendGrid v3 Mail Send request body.

SendGrid's ``POST /v3/mail/send`` takes JSON, not MIME, so the message postwise built is parsed
back (stdlib parser, default policy) into its parts: sender, recipient, subject, the text and
HTML bodies, attachments, and the headers worth keeping. SendGrid builds and DKIM-signs its own
MIME from these; the signature postwise added is not carried over (SendGrid signs with the
domain authenticated in the SendGrid account).

postwise's message id travels as the custom argument ``postwise_message_id``: SendGrid echoes
custom arguments in every Event Webhook event, which ties events to the send ledger. Metadata of
the outgoing message travels the same way, each key prefixed ``postwise_`` so it cannot collide
with SendGrid's own event fields (``email``, ``event``, ``timestamp``...).
"""

from __future__ import annotations

import base64
import email.policy
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

from postwise.delivery.provider import OutgoingMessage

__all__ = [
    "CUSTOM_ARG_PREFIX",
    "MESSAGE_ID_ARG",
    "ConversionError",
    "mail_send_body",
]

CUSTOM_ARG_PREFIX = "postwise_"
#: The custom argument carrying postwise's message id (the ledger key).
MESSAGE_ID_ARG = CUSTOM_ARG_PREFIX + "message_id"

#: Headers SendGrid refuses in ``headers`` (its documented reserved list) or builds itself from
#: the JSON fields; everything else the message carries is passed through.
_NOT_PASSED = frozenset(
    {
        "x-sg-id",
        "x-sg-eid",
        "received",
        "dkim-signature",
        "content-type",
        "content-transfer-encoding",
        "content-disposition",
        "to",
        "from",
        "subject",
        "reply-to",
        "cc",
        "bcc",
        "date",
        "mime-version",
        # SendGrid assigns its own Message-ID; the ledger key travels in X-Postwise-Message-Id
        # and in the custom argument instead.
        "message-id",
        "return-path",
        "sender",
    }
)
#: SendGrid's limit on the custom arguments of one message, in bytes of JSON.
_CUSTOM_ARGS_LIMIT = 10_000

_PARSER = BytesParser(policy=email.policy.default)


class ConversionError(ValueError):
    """The message cannot be expressed as a Mail Send request; the text says why."""


def _mailbox(value: Any, name: str) -> dict[str, str]:
    addresses: tuple[Address, ...] = getattr(value, "addresses", ())
    if len(addresses) != 1 or not addresses[0].addr_spec or "@" not in addresses[0].addr_spec:
        raise ConversionError(f"the {name} header must name exactly one address, got {value!r}")
    address = addresses[0]
    box = {"email": address.addr_spec}
    if address.display_name:
        box["name"] = address.display_name
    return box


def _recipient(message: EmailMessage, envelope_recipient: str) -> dict[str, str]:
    """The envelope recipient, with the display name the To header gives it."""
    box = {"email": envelope_recipient}
    header = message.get("To")
    for address in getattr(header, "addresses", ()):
        if address.addr_spec.lower() == envelope_recipient.lower() and address.display_name:
            box["name"] = address.display_name
    return box


def _bodies(message: EmailMessage) -> tuple[str | None, str | None, list[dict[str, str]]]:
    """The text body, the HTML body and the attachments (SendGrid's shape)."""
    text: str | None = None
    html: str | None = None
    attachments: list[dict[str, str]] = []
    if message.is_multipart():
        body_part = message.get_body(preferencelist=("plain",))
        html_part = message.get_body(preferencelist=("html",))
        text = body_part.get_content() if body_part is not None else None
        html = html_part.get_content() if html_part is not None else None
        for part in message.iter_attachments():
            attachments.append(_attachment(part))
    else:
        content_type = message.get_content_type()
        if content_type == "text/plain":
            text = message.get_content()
        elif content_type == "text/html":
            html = message.get_content()
        else:
            raise ConversionError(
                f"a single-part message must be text/plain or text/html, not {content_type}"
            )
    return text, html, attachments


def _attachment(part: EmailMessage) -> dict[str, str]:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        raise ConversionError(f"attachment of type {part.get_content_type()} has no content")
    attachment = {
        "content": base64.b64encode(payload).decode("ascii"),
        "type": part.get_content_type(),
        "filename": part.get_filename() or "attachment",
    }
    content_id = part.get("Content-ID")
    if content_id is not None and part.get_content_disposition() == "inline":
        attachment["disposition"] = "inline"
        attachment["content_id"] = str(content_id).strip().strip("<>")
    else:
        attachment["disposition"] = "attachment"
    return attachment


def _headers(message: EmailMessage) -> dict[str, str]:
    headers: dict[str, str] = {}
    for name, value in message.items():
        if name.lower() in _NOT_PASSED or name in headers:
            continue
        # The parser unfolds and decodes encoded words; SendGrid encodes again as needed.
        headers[name] = str(value)
    return headers


def _custom_args(message: OutgoingMessage) -> dict[str, str]:
    args = {CUSTOM_ARG_PREFIX + key: str(value) for key, value in message.metadata.items()}
    args[MESSAGE_ID_ARG] = message.message_id
    size = sum(len(k.encode()) + len(v.encode()) + 6 for k, v in args.items())
    if size > _CUSTOM_ARGS_LIMIT:
        raise ConversionError(
            f"custom arguments take {size} bytes; SendGrid allows {_CUSTOM_ARGS_LIMIT}. "
            "Keep less metadata on the message"
        )
    return args


def mail_send_body(
    message: OutgoingMessage,
    *,
    vendor_tracking: bool = False,
    sandbox_mode: bool = False,
    ip_pool_name: str = "",
) -> dict[str, Any]:
    """The JSON body of ``POST /v3/mail/send`` for ``message``.

    ``vendor_tracking`` leaves SendGrid's own open and click tracking to the account settings;
    by default it is switched off per message, because postwise tracks opens and clicks itself
    and both together would count every open twice. Raises :class:`ConversionError` when the
    message cannot be expressed (no From, no body, a multi-address From...).
    """
    parsed = _PARSER.parsebytes(message.raw)
    assert isinstance(parsed, EmailMessage)  # the default policy always builds EmailMessage
    if parsed.get("From") is None:
        raise ConversionError("the message has no From header")
    text, html, attachments = _bodies(parsed)
    content: list[dict[str, str]] = []
    # SendGrid requires text/plain first when both are present.
    if text is not None:
        content.append({"type": "text/plain", "value": text})
    if html is not None:
        content.append({"type": "text/html", "value": html})
    if not content or not any(part["value"] for part in content):
        raise ConversionError("the message has neither a text nor an HTML body")
    body: dict[str, Any] = {
        "personalizations": [{"to": [_recipient(parsed, message.recipient)]}],
        "from": _mailbox(parsed["From"], "From"),
        "subject": str(parsed.get("Subject", "")),
        "content": content,
        "custom_args": _custom_args(message),
    }
    if not body["subject"]:
        raise ConversionError("the message has no Subject; SendGrid requires one")
    reply_to = parsed.get("Reply-To")
    if reply_to is not None:
        body["reply_to"] = _mailbox(reply_to, "Reply-To")
    headers = _headers(parsed)
    if headers:
        body["headers"] = headers
    if attachments:
        body["attachments"] = attachments
    if not vendor_tracking:
        body["tracking_settings"] = {
            "click_tracking": {"enable": False, "enable_text": False},
            "open_tracking": {"enable": False},
        }
    if sandbox_mode:
        body["mail_settings"] = {"sandbox_mode": {"enable": True}}
    if ip_pool_name:
        body["ip_pool_name"] = ip_pool_name
    return body
