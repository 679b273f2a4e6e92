"""A rendered, signed RFC 5322 message as a SendGrid v3 Mail Send request body.

SendGrid's ``POST /v3/mail/send`` takes JSON, not MIME: the kit's
:func:`~postwise.delivery.parts.message_parts` takes the message apart, and this module maps
the parts to SendGrid's fields. SendGrid builds and DKIM-signs its own MIME (with the domain
authenticated in the account); postwise's signature is not carried over.

* postwise's message id travels as the custom argument ``postwise_message_id`` (SendGrid echoes
  custom arguments in every Event Webhook event, which ties events to the ledger), and the
  message's metadata as ``postwise_<key>``, so nothing collides with SendGrid's event fields.
* Marketing mail joins the unsubscribe group ``asm_group_id`` (``asm``); transactional mail
  (``stream`` metadata ``transactional``, from a transactional template) bypasses SendGrid's
  list management when ``transactional_bypass_list_management`` is on, so a receipt reaches
  someone who unsubscribed from the newsletter (postwise's own gate still applies).
* Categories: the configured ones and the message's stream, at most 10 of at most 255 chars.
* An image-only HTML message gets a text part from its ``alt`` texts and links.
"""

from __future__ import annotations

import base64
from typing import Any

from postwise.delivery.parts import BUILT_BY_ESP, ConversionError, Mailbox, message_parts
from postwise.delivery.provider import OutgoingMessage
from postwise_sendgrid.options import SendGridOptions

__all__ = ["CUSTOM_ARG_PREFIX", "MESSAGE_ID_ARG", "ConversionError", "mail_send_body"]

CUSTOM_ARG_PREFIX = "postwise_"
#: The custom argument carrying postwise's message id (the ledger key).
MESSAGE_ID_ARG = CUSTOM_ARG_PREFIX + "message_id"
#: SendGrid's documented limits: custom arguments under 10,000 bytes, 10 categories.
CUSTOM_ARGS_LIMIT = 10_000
MAX_CATEGORIES = 10
#: Headers SendGrid refuses in ``headers`` (its reserved list) or builds from the JSON fields;
#: SendGrid assigns its own Message-ID (the ledger key travels in X-Postwise-Message-Id).
_NOT_PASSED = BUILT_BY_ESP | {"x-sg-id", "x-sg-eid"}


def _box(mailbox: Mailbox) -> dict[str, str]:
    return (
        {"email": mailbox.email, "name": mailbox.name} if mailbox.name else {"email": mailbox.email}
    )


def _custom_args(message: OutgoingMessage) -> dict[str, str]:
    args = {CUSTOM_ARG_PREFIX + key: str(value) for key, value in message.metadata.items()}
    args[MESSAGE_ID_ARG] = message.message_id
    size = sum(len(k.encode()) + len(v.encode()) + 6 for k, v in args.items())
    if size >= CUSTOM_ARGS_LIMIT:
        raise ConversionError(
            f"custom arguments take {size} bytes; SendGrid allows less than {CUSTOM_ARGS_LIMIT}. "
            "Keep less metadata on the message"
        )
    return args


def mail_send_body(message: OutgoingMessage, options: SendGridOptions) -> dict[str, Any]:
    """The JSON body of ``POST /v3/mail/send`` for ``message``; raises ConversionError."""
    parts = message_parts(message.raw, message.recipient, not_passed=_NOT_PASSED)
    if not parts.subject:
        raise ConversionError("the message has no Subject; SendGrid requires one")
    content = [{"type": "text/plain", "value": parts.text}] if parts.text else []
    if parts.html:  # SendGrid wants text/plain first
        content.append({"type": "text/html", "value": parts.html})
    body: dict[str, Any] = {
        "personalizations": [{"to": [_box(parts.recipient)]}],
        "from": _box(parts.sender),
        "subject": parts.subject,
        "content": content,
        "custom_args": _custom_args(message),
    }
    if parts.reply_to is not None:
        body["reply_to"] = _box(parts.reply_to)
    if parts.headers:
        body["headers"] = parts.headers
    if parts.attachments:
        body["attachments"] = [
            {
                "content": base64.b64encode(a.content).decode("ascii"),
                "type": a.content_type,
                "filename": a.filename,
                "disposition": "inline" if a.inline else "attachment",
                **({"content_id": a.content_id} if a.inline else {}),
            }
            for a in parts.attachments
        ]
    stream = message.metadata.get("stream", "")
    categories = list(dict.fromkeys([*options.categories, *([stream] if stream else [])]))
    if categories:
        body["categories"] = categories[:MAX_CATEGORIES]
    mail_settings: dict[str, Any] = {}
    if stream == "transactional":
        if options.transactional_bypass_list_management:
            mail_settings["bypass_list_management"] = {"enable": True}
    elif options.asm_group_id is not None:
        body["asm"] = {"group_id": options.asm_group_id}
        if options.asm_groups_to_display:
            body["asm"]["groups_to_display"] = list(options.asm_groups_to_display)
    if not options.vendor_tracking:
        # postwise tracks opens and clicks itself; both would count every open twice.
        body["tracking_settings"] = {
            "click_tracking": {"enable": False, "enable_text": False},
            "open_tracking": {"enable": False},
        }
    if options.sandbox_mode:
        mail_settings["sandbox_mode"] = {"enable": True}
    if mail_settings:
        body["mail_settings"] = mail_settings
    if options.ip_pool_name:
        body["ip_pool_name"] = options.ip_pool_name
    return body
