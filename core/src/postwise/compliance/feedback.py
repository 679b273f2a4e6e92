"""Read machine reports that come back to postwise: ARF feedback reports (RFC 5965) and the
parts every report shares.

A report is a ``multipart/report`` whose parts are a human-readable text, a machine-readable
block of fields (``message/feedback-report`` for complaints, ``message/delivery-status`` for
bounces) and usually the returned original message or its headers. This module walks those
parts, reads the field blocks and looks into the returned message for the recipient and for our
own ``X-Postwise-Message-Id`` header, which ties a report to the send ledger.
:mod:`postwise.compliance.bounces` builds its classification on it.

Nothing here raises on malformed input: missing parts or fields come back as ``None``.
"""

from __future__ import annotations

import base64
import binascii
import email.utils
import quopri
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from email.message import Message
from email.parser import HeaderParser

__all__ = [
    "COMPLAINT_FEEDBACK_TYPES",
    "POSTWISE_MESSAGE_ID_HEADER",
    "FeedbackReport",
    "find_address",
    "find_postwise_message_id",
    "is_feedback_report",
    "parse_feedback_report",
    "parse_field_blocks",
    "report_fields",
    "report_parts",
    "returned_headers",
]

#: The header postwise sets on every outgoing message; its value is the ledger key.
POSTWISE_MESSAGE_ID_HEADER = "X-Postwise-Message-Id"

#: Feedback types (RFC 5965 section 7.3) that mean a recipient complained. ``not-spam`` is the
#: opposite, and ``auth-failure`` (RFC 6591) reports an authentication failure, not a person.
COMPLAINT_FEEDBACK_TYPES = frozenset({"abuse", "fraud", "virus", "other"})

#: Content types whose payload is a returned message (or its headers), never part of the report.
_RETURNED_MESSAGE_TYPES = frozenset({"message/rfc822", "message/global"})
_RETURNED_HEADERS_TYPES = frozenset({"text/rfc822-headers", "message/global-headers"})
_FIELD_PART_TYPES = frozenset(
    {"message/delivery-status", "message/global-delivery-status", "message/feedback-report"}
)

_ADDRESS_RE = re.compile(
    r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*"
    r"@(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)+[A-Za-z]{2,63}(?![A-Za-z0-9-])"
)
_MESSAGE_ID_LINE_RE = re.compile(
    r"^" + re.escape(POSTWISE_MESSAGE_ID_HEADER) + r":[ \t]*<?([^\s<>]+)>?", re.I | re.M
)
_FIELD_NAME_RE = re.compile(r"^([A-Za-z0-9-]+)[ \t]*:(.*)$")


@dataclass(frozen=True, slots=True)
class FeedbackReport:
    """The fields of one ARF report that postwise acts on."""

    #: Lower-cased ``Feedback-Type`` (``abuse``, ``fraud``, ``not-spam``, ...), if present.
    feedback_type: str | None
    #: The address that complained: ``Original-Rcpt-To``, else the returned message's ``To``.
    recipient: str | None
    #: Our ``X-Postwise-Message-Id`` from the returned message, if the reporter kept it.
    message_id: str | None
    user_agent: str | None
    source_ip: str | None
    #: Whether the report had a readable ``message/feedback-report`` part at all.
    has_report_part: bool


def report_parts(message: Message) -> Iterator[Message]:
    """Yield ``message`` and its MIME parts, without entering returned messages or field parts.

    A bounce often carries the original message, which may itself be a report (a bounce of a
    bounce); its parts describe another delivery and must not be read as this one's.
    """
    stack = [message]
    seen = 0
    while stack:
        part = stack.pop()
        seen += 1
        # A hostile message can nest thousands of parts; a real report has a handful.
        if seen > 500:
            return
        yield part
        content_type = part.get_content_type()
        if content_type in _RETURNED_MESSAGE_TYPES or content_type in _FIELD_PART_TYPES:
            continue
        payload = part.get_payload()
        if part.is_multipart() and isinstance(payload, list):
            stack.extend(reversed([p for p in payload if isinstance(p, Message)]))


def parse_field_blocks(text: str) -> list[list[tuple[str, str]]]:
    """Parse header-syntax field blocks separated by blank lines (RFC 3464 section 2.1).

    Returns one list of ``(lower-cased name, unfolded value)`` pairs per block. Lines that are
    neither a field nor a continuation are skipped, so a damaged block yields what it can.
    """
    blocks: list[list[tuple[str, str]]] = []
    current: list[tuple[str, str]] = []
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
                current = []
            continue
        if line[0] in " \t" and current:
            name, value = current[-1]
            current[-1] = (name, f"{value} {line.strip()}".strip())
            continue
        match = _FIELD_NAME_RE.match(line)
        if match:
            current.append((match.group(1).lower(), match.group(2).strip()))
    if current:
        blocks.append(current)
    return blocks


def report_fields(part: Message) -> list[list[tuple[str, str]]]:
    """The field blocks of a ``message/delivery-status`` or ``message/feedback-report`` part.

    The stdlib parser splits these parts into pseudo-messages (or leaves them as text when it
    could not); both shapes are flattened back to text and parsed the same way, after undoing a
    base64 or quoted-printable transfer encoding that some MTAs wrongly apply.
    """
    payload = part.get_payload()
    chunks: list[str] = []
    if isinstance(payload, list):
        for block in payload:
            if not isinstance(block, Message):
                continue
            lines = [f"{name}: {_header_text(value)}" for name, value in block.items()]
            body = block.get_payload()
            if isinstance(body, str) and body.strip():
                lines.append(body)
            chunks.append("\n".join(lines))
    elif isinstance(payload, str):
        chunks.append(payload)
    text = "\n\n".join(chunks)
    encoding = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    if encoding in {"base64", "quoted-printable"}:
        text = _undo_transfer_encoding(text, encoding)
    return parse_field_blocks(text)


def returned_headers(message: Message) -> Message | None:
    """The headers of the original message a report returns, or ``None`` when it returns none.

    Looks for a ``message/rfc822`` (or ``message/global``) part, else a ``text/rfc822-headers``
    part, among the report's own parts.
    """
    headers_part: Message | None = None
    for part in report_parts(message):
        if part is message:
            continue
        content_type = part.get_content_type()
        if content_type in _RETURNED_MESSAGE_TYPES:
            payload = part.get_payload()
            if isinstance(payload, list) and payload and isinstance(payload[0], Message):
                return payload[0]
            if isinstance(payload, str) and payload.strip():
                return HeaderParser().parsestr(payload, headersonly=True)
        elif content_type in _RETURNED_HEADERS_TYPES and headers_part is None:
            payload = part.get_payload(decode=True)
            if isinstance(payload, bytes):
                text = payload.decode("utf-8", "replace")
                headers_part = HeaderParser().parsestr(text, headersonly=True)
    return headers_part


def find_address(value: str | None) -> str | None:
    """The first plausible e-mail address in ``value``, with its domain lower-cased."""
    if not value:
        return None
    match = _ADDRESS_RE.search(value)
    if match is None:
        return None
    local, _, domain = match.group(0).rpartition("@")
    return f"{local}@{domain.lower()}"


def find_postwise_message_id(*sources: Message | str | None) -> str | None:
    """Our ``X-Postwise-Message-Id`` from the first source that has it.

    A source is a parsed message or header block (its header is read) or text (a header line
    in it is searched for, as when a bounce quotes the original message inline).
    """
    for source in sources:
        if source is None:
            continue
        if isinstance(source, Message):
            value = source.get(POSTWISE_MESSAGE_ID_HEADER)
            if value is not None:
                cleaned = _clean_message_id(_header_text(value))
                if cleaned:
                    return cleaned
            continue
        match = _MESSAGE_ID_LINE_RE.search(source)
        if match:
            cleaned = _clean_message_id(match.group(1))
            if cleaned:
                return cleaned
    return None


def is_feedback_report(message: Message) -> bool:
    """Whether ``message`` is an ARF report: ``report-type=feedback-report`` or such a part."""
    if message.get_content_type() == "multipart/report":
        report_type = str(message.get_param("report-type", "") or "").strip().lower()
        if report_type == "feedback-report":
            return True
    return any(p.get_content_type() == "message/feedback-report" for p in report_parts(message))


def parse_feedback_report(message: Message) -> FeedbackReport:
    """Read the fields of an ARF report (RFC 5965) that postwise acts on."""
    fields: dict[str, str] = {}
    has_report_part = False
    for part in report_parts(message):
        if part.get_content_type() == "message/feedback-report":
            for block in report_fields(part):
                has_report_part = True
                for name, value in block:
                    fields.setdefault(name, value)
            break
    original = returned_headers(message)
    recipient = find_address(fields.get("original-rcpt-to"))
    if recipient is None and original is not None:
        recipient = _single_address(original.get_all("To") or [])
    feedback_type = fields.get("feedback-type", "").split(";")[0].strip().lower() or None
    return FeedbackReport(
        feedback_type=feedback_type,
        recipient=recipient,
        message_id=find_postwise_message_id(original, message),
        user_agent=fields.get("user-agent") or None,
        source_ip=fields.get("source-ip") or None,
        has_report_part=has_report_part,
    )


def _single_address(values: Sequence[object]) -> str | None:
    """The address of a ``To`` header when it names exactly one (FBLs often redact it)."""
    pairs = email.utils.getaddresses([_header_text(v) for v in values])
    addresses = {a for a in (find_address(addr) for _, addr in pairs) if a}
    return addresses.pop() if len(addresses) == 1 else None


def _clean_message_id(value: str) -> str | None:
    cleaned = value.strip().strip("<>").strip()
    if not cleaned or len(cleaned) > 255 or not cleaned.isprintable() or " " in cleaned:
        return None
    return cleaned


def _header_text(value: object) -> str:
    """A header value as text, whatever shape the parser left it in."""
    text = str(value)
    try:
        # The parser keeps undecodable bytes as lone surrogates; turn them back into bytes.
        return text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")


def _undo_transfer_encoding(text: str, encoding: str) -> str:
    raw = text.encode("ascii", "replace")
    try:
        decoded = (
            base64.b64decode(b"".join(raw.split()), validate=False)
            if encoding == "base64"
            else quopri.decodestring(raw)
        )
    except (binascii.Error, ValueError):
        return text
    return decoded.decode("utf-8", "replace")
