"""A rendered message taken apart, for ESPs whose API takes JSON fields instead of MIME.

postwise renders and signs an RFC 5322 message; SendGrid, Postmark, Mailgun's or SES's simple
APIs want its parts: sender, recipient, subject, the text and HTML bodies, attachments and the
headers worth passing on. :func:`message_parts` parses the message back (stdlib parser, default
policy) once, so each ESP plugin only maps :class:`MessageParts` to its vendor's JSON.

The text part is never empty when there is HTML: an image-only HTML message (a banner and a
link) gets the text of its ``alt`` attributes and links, or a line saying the message is best
seen as HTML, because ESPs refuse an empty text part (SendGrid answers 400) and a text
alternative is what screen readers and text-only clients show.
"""

from __future__ import annotations

import email.policy
from collections.abc import Collection
from dataclasses import dataclass, field
from email.headerregistry import Address
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

from postwise.content.text import html_to_text

__all__ = ["Attachment", "ConversionError", "Mailbox", "MessageParts", "message_parts"]

#: The text alternative of HTML that has no text at all (only images without ``alt``).
IMAGE_ONLY_TEXT = "This message is made of images: open it in a mail program that shows HTML."
#: Headers an ESP builds itself from the JSON fields (or signs itself): never passed on.
BUILT_BY_ESP = frozenset(
    {
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
        "message-id",
        "return-path",
        "sender",
    }
)

_PARSER = BytesParser(policy=email.policy.default)


class ConversionError(ValueError):
    """The message cannot be expressed as the ESP's request; the text says why."""


@dataclass(frozen=True, slots=True)
class Mailbox:
    """An address and its display name (empty when none)."""

    email: str
    name: str = ""


@dataclass(frozen=True, slots=True)
class Attachment:
    """One attachment (``inline`` ones carry the ``content_id`` the HTML refers to)."""

    filename: str
    content_type: str
    content: bytes
    inline: bool = False
    content_id: str = ""


@dataclass(frozen=True, slots=True)
class MessageParts:
    """What an ESP's JSON API needs of a rendered message."""

    sender: Mailbox
    recipient: Mailbox
    subject: str
    text: str | None
    html: str | None
    reply_to: Mailbox | None = None
    attachments: list[Attachment] = field(default_factory=list)
    #: Headers to pass on (name as written, value unfolded and decoded), in order.
    headers: dict[str, str] = field(default_factory=dict)


def _mailbox(value: Any, name: str) -> Mailbox:
    addresses: tuple[Address, ...] = getattr(value, "addresses", ())
    if len(addresses) != 1 or "@" not in addresses[0].addr_spec:
        raise ConversionError(f"the {name} header must name exactly one address, got {value!r}")
    return Mailbox(addresses[0].addr_spec, addresses[0].display_name or "")


def _recipient(message: EmailMessage, envelope_recipient: str) -> Mailbox:
    """The envelope recipient, with the display name the To header gives it."""
    for address in getattr(message.get("To"), "addresses", ()):
        if address.addr_spec.lower() == envelope_recipient.lower() and address.display_name:
            return Mailbox(envelope_recipient, address.display_name)
    return Mailbox(envelope_recipient)


def _attachment(part: EmailMessage) -> Attachment:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        raise ConversionError(f"attachment of type {part.get_content_type()} has no content")
    content_id = part.get("Content-ID")
    inline = content_id is not None and part.get_content_disposition() == "inline"
    return Attachment(
        filename=part.get_filename() or "attachment",
        content_type=part.get_content_type(),
        content=payload,
        inline=inline,
        content_id=str(content_id).strip().strip("<>") if inline else "",
    )


def _bodies(message: EmailMessage) -> tuple[str | None, str | None, list[Attachment]]:
    if not message.is_multipart():
        kind = message.get_content_type()
        if kind not in ("text/plain", "text/html"):
            raise ConversionError(
                f"a single-part message must be text/plain or text/html, not {kind}"
            )
        content = message.get_content()
        return (content, None, []) if kind == "text/plain" else (None, content, [])
    text_part = message.get_body(preferencelist=("plain",))
    html_part = message.get_body(preferencelist=("html",))
    text = text_part.get_content() if text_part is not None else None
    html = html_part.get_content() if html_part is not None else None
    return text, html, [_attachment(part) for part in message.iter_attachments()]


def _text_alternative(text: str | None, html: str | None) -> str | None:
    if html is None or (text is not None and text.strip()):
        return text
    return html_to_text(html).strip() or IMAGE_ONLY_TEXT


def message_parts(
    raw: bytes, recipient: str, *, not_passed: Collection[str] = BUILT_BY_ESP
) -> MessageParts:
    """Take ``raw`` apart; headers named in ``not_passed`` (lower case) are left out.

    Raises :class:`ConversionError` for a message an ESP cannot take: no From, a From or
    Reply-To with several addresses, no body, an attachment without content.
    """
    parsed = _PARSER.parsebytes(raw)
    assert isinstance(parsed, EmailMessage)  # the default policy always builds EmailMessage
    if parsed.get("From") is None:
        raise ConversionError("the message has no From header")
    text, html, attachments = _bodies(parsed)
    if not (text or "").strip() and not (html or "").strip():
        raise ConversionError("the message has neither a text nor an HTML body")
    headers: dict[str, str] = {}
    for name, value in parsed.items():
        if name.lower() not in not_passed and name not in headers:
            headers[name] = str(value)  # unfolded and decoded; the ESP encodes again
    reply_to = parsed.get("Reply-To")
    return MessageParts(
        sender=_mailbox(parsed["From"], "From"),
        recipient=_recipient(parsed, recipient),
        subject=str(parsed.get("Subject", "")),
        text=_text_alternative(text, html),
        html=html,
        reply_to=_mailbox(reply_to, "Reply-To") if reply_to is not None else None,
        attachments=attachments,
        headers=headers,
    )
