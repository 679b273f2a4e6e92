"""RFC 3463 enhanced status codes and SMTP reply codes: parsing, and the reason a code implies.

A status code is weaker evidence than words: reporting MTAs infer codes (Sendmail reports 5.1.1
for any refused RCPT, Exim 5.0.0 for anything), so :mod:`.wording` is consulted first and
:func:`reason_from_status` only when the words said nothing recognisable.
"""

from __future__ import annotations

import re

from postwise.compliance.bounces.reasons import BounceReason

__all__ = [
    "REPLY_CODE_RE",
    "STATUS_RE",
    "describe",
    "join_reply_lines",
    "parse_status",
    "reason_from_status",
]

# Three numbers, the first 2, 4 or 5; not part of an IP address or a longer dotted number.
STATUS_RE = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?!\.?\d)")
# A basic reply code as it starts an SMTP reply: x0z..x5z.
REPLY_CODE_RE = re.compile(r"^\s*([2-5][0-5]\d)(?:[ -]|$)")

_SUBJECTS = {
    "0": "other or undefined status",
    "1": "addressing status",
    "2": "mailbox status",
    "3": "mail system status",
    "4": "network or routing status",
    "5": "mail delivery protocol status",
    "6": "message content or media status",
    "7": "security or policy status",
}
_DETAILS = {
    "1.1": "bad destination mailbox address",
    "1.2": "bad destination system address",
    "1.3": "bad destination mailbox address syntax",
    "1.6": "destination mailbox has moved",
    "1.7": "bad sender's mailbox address syntax",
    "1.8": "bad sender's system address",
    "1.10": "recipient address has a null MX, or (Exchange Online) recipient not found",
    "2.1": "mailbox disabled, not accepting messages",
    "2.2": "mailbox full",
    "2.3": "message length exceeds administrative limit",
    "3.4": "message too big for system",
    "4.1": "no answer from host, or (Exchange Online) recipient not found",
    "4.4": "unable to route",
    "4.7": "delivery time expired",
    "7.1": "delivery not authorized, message refused",
}

_R = BounceReason
# What a code says by itself (subject.detail). Codes missing here say nothing more than their
# class. 1.10 is Exchange Online's "recipient not found" far more often than a null MX.
_STATUS_REASONS: dict[str, BounceReason] = {
    "1.1": _R.USER_UNKNOWN,
    "1.2": _R.HOST_UNKNOWN,
    "1.3": _R.USER_UNKNOWN,
    "1.4": _R.USER_UNKNOWN,
    "1.5": _R.DELIVERED,
    "1.6": _R.HAS_MOVED,
    "1.7": _R.SENDER_REJECTED,
    "1.8": _R.SENDER_REJECTED,
    "1.9": _R.SYSTEM_ERROR,
    "1.10": _R.USER_UNKNOWN,
    "2.1": _R.SUSPENDED,
    "2.2": _R.MAILBOX_FULL,
    "2.3": _R.MESSAGE_TOO_BIG,
    "2.4": _R.SYSTEM_ERROR,
    "3.1": _R.SYSTEM_ERROR,
    "3.2": _R.SYSTEM_ERROR,
    "3.3": _R.SYSTEM_ERROR,
    "3.4": _R.MESSAGE_TOO_BIG,
    "3.5": _R.SYSTEM_ERROR,
    "4.0": _R.NETWORK_ERROR,
    "4.1": _R.NETWORK_ERROR,
    "4.2": _R.NETWORK_ERROR,
    "4.3": _R.NETWORK_ERROR,
    "4.4": _R.HOST_UNKNOWN,
    "4.5": _R.RATE_LIMITED,
    "4.6": _R.NETWORK_ERROR,
    "4.7": _R.EXPIRED,
    "5.0": _R.SYNTAX_ERROR,
    "5.1": _R.SYNTAX_ERROR,
    "5.2": _R.SYNTAX_ERROR,
    "5.3": _R.RATE_LIMITED,
    "5.4": _R.SYNTAX_ERROR,
    "5.5": _R.SYNTAX_ERROR,
    "6.0": _R.CONTENT_ERROR,
    "6.1": _R.CONTENT_ERROR,
    "6.2": _R.CONTENT_ERROR,
    "6.3": _R.CONTENT_ERROR,
    "6.4": _R.CONTENT_ERROR,
    "6.5": _R.CONTENT_ERROR,
    "6.6": _R.CONTENT_ERROR,
    "7.0": _R.POLICY,
    "7.1": _R.POLICY,
    "7.2": _R.POLICY,
    "7.3": _R.SECURITY_ERROR,
    "7.4": _R.SECURITY_ERROR,
    "7.5": _R.SECURITY_ERROR,
    "7.6": _R.SECURITY_ERROR,
    "7.7": _R.SECURITY_ERROR,
    "7.8": _R.SECURITY_ERROR,
    "7.9": _R.SECURITY_ERROR,
    "7.10": _R.SECURITY_ERROR,
    "7.11": _R.SECURITY_ERROR,
    "7.13": _R.SUSPENDED,
    "7.14": _R.POLICY,
    "7.15": _R.SECURITY_ERROR,
    "7.16": _R.MESSAGE_TOO_BIG,
    "7.17": _R.SUSPENDED,
    "7.18": _R.SUSPENDED,
    "7.19": _R.POLICY,
    "7.20": _R.POLICY,
    "7.21": _R.POLICY,
    "7.22": _R.POLICY,
    "7.23": _R.POLICY,
    "7.24": _R.POLICY,
    "7.25": _R.BLOCKED,
    "7.26": _R.POLICY,
    "7.27": _R.SENDER_REJECTED,
    "7.28": _R.SPAM_DETECTED,
    "7.29": _R.POLICY,
    "7.30": _R.POLICY,
}


def parse_status(text: str) -> str | None:
    """The first RFC 3463 enhanced status code in ``text`` (``"5.1.1"``), or ``None``."""
    for match in STATUS_RE.finditer(text):
        klass, subject, detail = match.groups()
        if int(subject) <= 7:
            return f"{klass}.{int(subject)}.{int(detail)}"
    return None


def describe(status: str) -> str:
    """RFC 3463's words for a status code."""
    _, subject, detail = status.split(".")
    return _DETAILS.get(f"{subject}.{detail}", _SUBJECTS.get(subject, "unknown status"))


def reason_from_status(status: str | None) -> BounceReason | None:
    """The reason a status code implies by itself, or ``None`` for a generic one (x.0.0)."""
    if status is None:
        return None
    return _STATUS_REASONS.get(status.split(".", 1)[1])


def join_reply_lines(text: str) -> str:
    """Drop the code prefixes a multi-line SMTP reply repeats (``550-5.1.1 ... 550 5.1.1 ...``)."""
    match = re.match(r"([245]\d\d)[ -](?:([245]\.\d{1,3}\.\d{1,3})\s)?", text)
    if match is None:
        return text
    code, status = match.groups()
    repeated = re.escape(code) + r"[ -]" + (r"(?:" + re.escape(status) + r"\s+)?" if status else "")
    head, rest = text[: match.end()], text[match.end() :]
    return head + re.sub(r"\s" + repeated, " ", rest)
