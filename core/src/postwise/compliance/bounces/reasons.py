"""The reason taxonomy: why a message came back, and the one table that turns a reason into a kind.

Every verdict carries a :class:`BounceReason`. The reasons are those mature bounce parsers share
(Sisimai's list is the model: ``userunknown``, ``hostunknown``, ``hasmoved``, ``mailboxfull``,
...), plus the non-bounce reasons a bounce mailbox also receives. :data:`REASONS` says for each
reason whose problem it is (:class:`Side`) and which :class:`BounceKind` it becomes when the
failure was permanent, temporary, or of unknown permanence. Nothing else decides a kind:
:func:`kind_for` reads this table and only this table.

Rules the table encodes:

* only a *recipient-side permanent* reason (user unknown, host unknown, has moved, not
  accepted) is ``hard``; the same reasons reported as temporary (4xx, ``Action: delayed``)
  are ``soft``;
* a *sender-side* reason (blocked IP/PTR/RBL, policy, DMARC/authentication, spam or virus
  detected, the sender refused, TLS) is ``block`` whatever its code: it says nothing about the
  recipient;
* a reason that concerns this *message* or a passing condition (mailbox full, too big,
  expired, rate limited, network or system error) is ``soft``;
* ``undetermined`` (a failure whose cause nothing recognised) is ``soft`` when its code says
  permanent or temporary, and ``unknown`` with no code at all; actions treat a permanent
  undetermined failure specially (it suppresses only after repeats).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["REASONS", "BounceKind", "BounceReason", "ReasonInfo", "Side", "kind_for"]


class BounceKind(enum.StrEnum):
    """What a returned message means for the address it concerns."""

    HARD = "hard"
    SOFT = "soft"
    BLOCK = "block"
    AUTO_REPLY = "auto_reply"
    COMPLAINT = "complaint"
    UNKNOWN = "unknown"


class BounceReason(enum.StrEnum):
    """Why a message came back (or, for the last few, why it is not a bounce)."""

    USER_UNKNOWN = "user_unknown"
    HOST_UNKNOWN = "host_unknown"
    HAS_MOVED = "has_moved"
    NOT_ACCEPTED = "not_accepted"
    MAILBOX_FULL = "mailbox_full"
    MESSAGE_TOO_BIG = "message_too_big"
    SUSPENDED = "suspended"
    FILTERED = "filtered"
    BLOCKED = "blocked"
    POLICY = "policy"
    SENDER_REJECTED = "sender_rejected"
    SPAM_DETECTED = "spam_detected"
    VIRUS_DETECTED = "virus_detected"
    SECURITY_ERROR = "security_error"
    RELAY_DENIED = "relay_denied"
    RATE_LIMITED = "rate_limited"
    EXPIRED = "expired"
    NETWORK_ERROR = "network_error"
    SYSTEM_ERROR = "system_error"
    CONTENT_ERROR = "content_error"
    SYNTAX_ERROR = "syntax_error"
    UNDETERMINED = "undetermined"
    AUTO_REPLY = "auto_reply"
    DELIVERED = "delivered"
    FEEDBACK = "feedback"
    NOT_A_BOUNCE = "not_a_bounce"
    UNREADABLE = "unreadable"


class Side(enum.StrEnum):
    """Whose problem a reason is: it decides what may be done with the recipient's address."""

    #: The recipient's address or domain: permanent failures suppress it.
    RECIPIENT = "recipient"
    #: The recipient's mailbox, for now (full, suspended, filtering): never suppresses at once.
    MAILBOX = "mailbox"
    #: The sender (IP, domain, authentication, content judged as spam): never the recipient's
    #: fault; counts against the sending stream's reputation.
    SENDER = "sender"
    #: This message, or the path it took (size, expiry, network, a system error).
    TRANSIT = "transit"
    #: Nothing is known about whose problem it is.
    UNKNOWN = "unknown"
    #: Not a failure at all.
    NONE = "none"


@dataclass(frozen=True, slots=True)
class ReasonInfo:
    """One row of the reason table."""

    side: Side
    #: The kind when the failure was permanent (5xx, ``Action: failed``).
    permanent: BounceKind
    #: The kind when it was temporary (4xx, ``Action: delayed``).
    temporary: BounceKind
    #: The kind when nothing said whether it was permanent.
    unspecified: BounceKind
    description: str


_H, _S, _B = BounceKind.HARD, BounceKind.SOFT, BounceKind.BLOCK
_U, _A, _C = BounceKind.UNKNOWN, BounceKind.AUTO_REPLY, BounceKind.COMPLAINT
_R = BounceReason

#: The one table from reason to kind. Documented in docs/compliance.md ("Bounce reasons").
REASONS: dict[BounceReason, ReasonInfo] = {
    _R.USER_UNKNOWN: ReasonInfo(
        Side.RECIPIENT, _H, _S, _H, "the mailbox does not exist at the recipient's domain"
    ),
    _R.HOST_UNKNOWN: ReasonInfo(
        Side.RECIPIENT, _H, _S, _H, "the recipient's domain does not exist or has a null MX"
    ),
    _R.HAS_MOVED: ReasonInfo(
        Side.RECIPIENT, _H, _S, _H, "the recipient has moved to another address"
    ),
    _R.NOT_ACCEPTED: ReasonInfo(
        Side.RECIPIENT, _H, _S, _H, "the recipient's domain accepts no mail at all"
    ),
    _R.MAILBOX_FULL: ReasonInfo(Side.MAILBOX, _S, _S, _S, "the mailbox is full or over quota"),
    _R.SUSPENDED: ReasonInfo(
        Side.MAILBOX, _S, _S, _S, "the mailbox is disabled, suspended or inactive for now"
    ),
    _R.FILTERED: ReasonInfo(
        Side.MAILBOX, _S, _S, _S, "the recipient's own filter or settings refused the message"
    ),
    _R.MESSAGE_TOO_BIG: ReasonInfo(Side.TRANSIT, _S, _S, _S, "the message is too large"),
    _R.CONTENT_ERROR: ReasonInfo(
        Side.TRANSIT, _S, _S, _S, "the message's format or content was not acceptable"
    ),
    _R.BLOCKED: ReasonInfo(
        Side.SENDER, _B, _B, _B, "the sending IP or host was refused (RBL, PTR/rDNS, blocklist)"
    ),
    _R.POLICY: ReasonInfo(
        Side.SENDER, _B, _B, _B, "refused by policy, DMARC, SPF, DKIM or authentication checks"
    ),
    _R.SENDER_REJECTED: ReasonInfo(
        Side.SENDER, _B, _B, _B, "the envelope sender or its domain was refused"
    ),
    _R.SPAM_DETECTED: ReasonInfo(Side.SENDER, _B, _B, _B, "the message was judged to be spam"),
    _R.VIRUS_DETECTED: ReasonInfo(
        Side.SENDER, _B, _B, _B, "the message was judged to carry a virus"
    ),
    _R.SECURITY_ERROR: ReasonInfo(
        Side.SENDER, _B, _B, _B, "a TLS, certificate or SMTP authentication failure"
    ),
    _R.RELAY_DENIED: ReasonInfo(
        Side.SENDER, _B, _B, _B, "the server refused to relay for the sender (route or setup)"
    ),
    _R.RATE_LIMITED: ReasonInfo(
        Side.TRANSIT, _S, _S, _S, "too many messages or connections; greylisting; try later"
    ),
    _R.EXPIRED: ReasonInfo(Side.TRANSIT, _S, _S, _S, "the sending MTA gave up after retrying"),
    _R.NETWORK_ERROR: ReasonInfo(
        Side.TRANSIT, _S, _S, _S, "connection, DNS lookup or routing failure on the way"
    ),
    _R.SYSTEM_ERROR: ReasonInfo(
        Side.TRANSIT, _S, _S, _S, "the receiving system failed, is full or misconfigured"
    ),
    _R.SYNTAX_ERROR: ReasonInfo(Side.TRANSIT, _S, _S, _S, "an SMTP command or protocol error"),
    _R.UNDETERMINED: ReasonInfo(
        Side.UNKNOWN, _S, _S, _U, "a failure whose cause was not recognised"
    ),
    _R.AUTO_REPLY: ReasonInfo(Side.NONE, _A, _A, _A, "an out-of-office or other automatic reply"),
    _R.DELIVERED: ReasonInfo(Side.NONE, _U, _U, _U, "a report of delivery or relaying"),
    _R.FEEDBACK: ReasonInfo(Side.NONE, _C, _C, _C, "a complaint (ARF feedback report)"),
    _R.NOT_A_BOUNCE: ReasonInfo(
        Side.NONE, _U, _U, _U, "not a bounce, complaint or automatic reply"
    ),
    _R.UNREADABLE: ReasonInfo(
        Side.UNKNOWN, _U, _U, _U, "the message could not be parsed or decoded"
    ),
}


def kind_for(reason: BounceReason, permanent: bool | None) -> BounceKind:
    """The kind of a failure with this reason and permanence, from :data:`REASONS`."""
    info = REASONS[reason]
    if permanent is None:
        return info.unspecified
    return info.permanent if permanent else info.temporary
