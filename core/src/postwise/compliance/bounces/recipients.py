"""Finding the address a bounce is about, in every place bounces hide it.

In order of trust: the DSN's ``Original-Recipient`` / ``Final-Recipient`` (read by :mod:`.dsn`),
``X-Failed-Recipients``, the recipient named in the bounce text (each MTA has its wording), and
last the ``To`` of the returned original message when it names exactly one address. Our own
``X-Postwise-Message-Id`` in the returned headers ties a bounce to the send ledger, which knows
the recipient for certain; processing prefers it when it is there.
"""

from __future__ import annotations

import email.utils
import re
from email.message import Message

from postwise.compliance.bounces.mime import decode_header_value, header
from postwise.compliance.feedback import find_address

__all__ = ["dsn_address", "lone_address", "returned_to", "text_recipient"]

_ADDR = r"<?([^\s<>\"'(),;:\[\]]+@[^\s<>\"'(),;:\[\]]+)>?"
_RECIPIENT_PATTERNS = [
    re.compile(p, re.I | re.M)
    for p in (
        r"following (?:e-?mail )?address(?:\(es\))?"
        rf"(?: failed| had permanent fatal errors)?:?\s*{_ADDR}",
        rf"failed permanently:\s*{_ADDR}",
        rf"permanent fatal errors -+\s*{_ADDR}",
        rf"had delivery problems -+\s*{_ADDR}",
        rf"(?:recipients or groups|following recipients?(?:\(s\))?):\s*{_ADDR}",
        rf"(?:was ?n[o']t|could ?n[o']t be|could not be|has not been) delivered to:?\s*{_ADDR}",
        rf"message to {_ADDR} was undeliverable",
        r"^\s*<([^\s<>]+@[^\s<>]+)>:",
        r"RCPT TO:\s*<([^\s<>]+@[^\s<>]+)>",
        # "Your message to bob@example.com couldn't be delivered", and its translations.
        rf"message to {_ADDR},? (?:could|can|was|has)(?:n't| ?not)\b",
        rf"nachricht an {_ADDR} konnte nicht",
        rf"message (?:à|a) {_ADDR} n'a pas pu",
        rf"宛先\s*[:\uff1a]\s*{_ADDR}(?:\s|$)",
        rf"^\s*(?:original |final |failed )?recipient(?: address)?:\s*(?:rfc822;\s*)?{_ADDR}\s*$",
        rf"^\s*to:\s*{_ADDR}\s*$",
        rf"(?:unknown user|user unknown|no such user|mailbox unavailable|invalid recipient)"
        rf"[:\s]+{_ADDR}",
        rf"{_ADDR}[:\s.]+(?:user unknown|unknown user|no such user|mailbox (?:is )?full|"
        rf"does not exist|not found)",
        rf"^\s*Failed address:\s*{_ADDR}",
        rf"(?:delivery of e-?mail to this address|failed to deliver to)\s*[\"']?{_ADDR}",
        rf"(?:delivery to|deliver to|delivering to|sending to)(?: the following recipient)?"
        rf"(?: failed)?:?\s*{_ADDR}",
        # An address alone on its line (qmail style without the colon).
        r"^\s*<([^\s<>]+@[^\s<>]+)>\s*$",
        r"^\s*([^\s<>\"':]+@[\w.-]+\.[a-z]{2,})\s*$",
    )
]


def text_recipient(message: Message, text: str, exclude: set[str] | None = None) -> str | None:
    """The recipient named by ``X-Failed-Recipients`` or by the bounce text."""
    failed = find_address(header(message, "X-Failed-Recipients"))
    if failed:
        return failed
    skip = exclude or set()
    for pattern in _RECIPIENT_PATTERNS:
        for match in pattern.finditer(text):
            address = find_address(match.group(1))
            if address and address.lower() not in skip and not _is_system_address(address):
                return address
    return None


_ANY_ADDRESS_RE = re.compile(r"[\w.+=!%'-]+@[\w-]+(?:\.[\w-]+)+")
# Lines that carry addresses which are not the recipient: trace and identification headers.
_NOT_RECIPIENT_LINE_RE = re.compile(
    r"^\s*(message-id|received|from|return-path|in-reply-to|references|reply-to|sender|"
    r"by|id|with|for|x-[\w-]+|reporting-mta|received-from-mta)\b",
    re.I,
)


def lone_address(text: str, exclude: set[str] | None = None) -> str | None:
    """The only address named in a bounce's diagnostic text, if it names exactly one (besides
    the bounce's own sender and addressee and mail-system mailboxes)."""
    skip = exclude or set()
    found: set[str] = set()
    for line in text.splitlines():
        if _NOT_RECIPIENT_LINE_RE.match(line):
            continue
        for match in _ANY_ADDRESS_RE.finditer(line):
            address = find_address(match.group(0))
            if address and address.lower() not in skip and not _is_system_address(address):
                found.add(address.lower())
                if len(found) > 1:
                    return None
    return found.pop() if found else None


def _is_system_address(address: str) -> bool:
    local = address.split("@", 1)[0].lower()
    return local in {"mailer-daemon", "postmaster", "root", "abuse", "noreply", "no-reply"}


def returned_to(original: Message | None) -> str | None:
    """The returned message's single ``To`` address, when the report names no recipient."""
    if original is None:
        return None
    values = [decode_header_value(str(v)) for v in original.get_all("To") or []]
    addresses = {a for a in (find_address(v) for _, v in email.utils.getaddresses(values)) if a}
    return addresses.pop() if len(addresses) == 1 else None


def dsn_address(value: str | None) -> str | None:
    """The address of a ``Final-Recipient``/``Original-Recipient`` field (``rfc822; a@b``)."""
    if not value:
        return None
    address_type, sep, address = value.partition(";")
    if sep and address_type.strip().lower() not in {"rfc822", "utf-8", "utf8", "x400", ""}:
        return None
    return find_address(address if sep else value)
