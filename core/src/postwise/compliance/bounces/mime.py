"""Reading a returned message safely: its text parts, headers and one-line diagnostics.

Everything here is bounded (bytes read, parts visited) and never raises on broken input: an
unreadable part is reported as a problem, and the caller decides what that means.
"""

from __future__ import annotations

import codecs
import email.errors
import html
import re
from email.header import decode_header, make_header
from email.message import Message

from postwise.compliance.feedback import report_parts

__all__ = [
    "MAX_DIAGNOSTIC_CHARS",
    "MAX_MESSAGE_BYTES",
    "MAX_TEXT_CHARS",
    "clean",
    "decode_header_value",
    "header",
    "readable_text",
    "split_returned",
]

#: Bytes of a message that are read. Reports put their fields first; what follows is the
#: returned original, which can be megabytes of attachments nobody needs to parse.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
#: Characters of decoded text that the wording patterns look at.
MAX_TEXT_CHARS = 256 * 1024
MAX_DIAGNOSTIC_CHARS = 500

_KNOWN_TRANSFER_ENCODINGS = frozenset(
    {"", "7bit", "8bit", "binary", "base64", "quoted-printable", "x-uuencode", "uuencode"}
)

_RETURNED_SEPARATOR_RE = re.compile(
    r"^[ \t]*-{2,}[^\n]*(copy of the (original )?message|original message|unsent message|"
    r"returned message|message headers? follow|undelivered message|header of the original|"
    r"original message header|below this line is a copy)"
    r"[^\n]*$|^[ \t]*(?:-{3,}\s*)?(?:The )?original message (?:follows|headers?)|"
    r"lines of (?:your|the) original message follow:?",
    re.I | re.M,
)


def readable_text(message: Message) -> tuple[str, list[str]]:
    """The decoded text of the message's own text parts, and what could not be read."""
    texts: list[str] = []
    problems: list[str] = []
    size = 0
    for part in report_parts(message):
        if part.get_content_maintype() == "multipart" and not part.is_multipart():
            problems.append("multipart body without a usable boundary could not be split")
            continue
        if part.is_multipart() or (
            part.get_content_maintype() != "text"
            and part.get_content_type() != "application/json"  # an ESP's notification
        ):
            continue
        if part.get_content_type() == "text/rfc822-headers":
            continue
        text, problem = _decode_part(part)
        if problem:
            problems.append(problem)
        if text is None:
            continue
        if part.get_content_subtype() == "html":
            text = html.unescape(re.sub(r"<[^>]*>", " ", re.sub(r"(?i)<br\s*/?>|</p>", "\n", text)))
        # Old Mac mailers end lines with a bare CR; the line-anchored patterns expect LF.
        text = text.replace("\r\n", "\n").replace("\r", "\n")
        texts.append(text[: MAX_TEXT_CHARS - size])
        size += len(texts[-1])
        if size >= MAX_TEXT_CHARS:
            break
    return "\n".join(texts), problems


def _decode_part(part: Message) -> tuple[str | None, str | None]:
    encoding = str(part.get("Content-Transfer-Encoding", "")).strip().lower()
    if encoding not in _KNOWN_TRANSFER_ENCODINGS:
        return None, f"text part in unknown transfer encoding {encoding!r} could not be read"
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return None, "text part without a readable body"
    if any(isinstance(d, email.errors.InvalidBase64LengthDefect) for d in part.defects):
        return None, "text part with broken base64 could not be read"
    charset = str(part.get_content_charset("us-ascii") or "us-ascii")
    try:
        codec = codecs.lookup(charset).name
    except LookupError:
        if payload.isascii():
            return payload.decode("ascii"), None
        return None, f"text part in unknown charset {charset!r} could not be read"
    if codec == "ascii" and not payload.isascii():
        # Declared us-ascii but 8-bit: most likely UTF-8 or Latin-1 sent without a label.
        try:
            return payload.decode("utf-8"), None
        except UnicodeDecodeError:
            return payload.decode("latin-1"), None
    return payload.decode(codec, "replace"), None


def split_returned(text: str) -> tuple[str, str]:
    """Split a bounce text into its diagnostic section and the returned message after it."""
    match = _RETURNED_SEPARATOR_RE.search(text)
    if match is None:
        return text, ""
    return text[: match.start()], text[match.end() :].lstrip("\r\n")


def header(message: Message, name: str) -> str:
    """A header's decoded value, or ``""``."""
    value = message.get(name)
    return "" if value is None else decode_header_value(value)


def decode_header_value(value: object) -> str:
    """A header as text, with RFC 2047 encoded words decoded where their charset is known."""
    try:
        text = str(make_header(decode_header(value)))  # type: ignore[arg-type]
    except (LookupError, UnicodeError, email.errors.HeaderParseError, ValueError, TypeError):
        text = str(value)
    return text.encode("utf-8", "replace").decode("utf-8")


def clean(text: str) -> str:
    """One line of printable text, at most a few hundred characters, safe to print or log."""
    text = text[: MAX_DIAGNOSTIC_CHARS * 8].encode("utf-8", "replace").decode("utf-8")
    text = "".join(c if c.isprintable() else " " for c in text)
    text = re.sub(r"\s+", " ", text).strip()
    if len(text) > MAX_DIAGNOSTIC_CHARS:
        text = text[: MAX_DIAGNOSTIC_CHARS - 1] + "…"
    return text
