"""Classify what comes back after postwise sends: bounces, complaints and auto-replies.

Two entry points:

* :func:`classify_smtp_reply` for a reply the receiving server gave during the SMTP session
  (``550 5.1.1 user unknown``);
* :func:`classify_message` for a message that arrived later in the bounce mailbox: a delivery
  status notification (RFC 3464, :mod:`.dsn`), an ARF complaint (RFC 5965, :mod:`.arf`), a
  non-standard bounce text (qmail, Exim, Exchange, Domino, carriers..., :mod:`.text`), an ESP's
  JSON notification (Amazon SES, SendGrid, Mailgun, Postmark, :mod:`.esp`) or an automatic
  reply (:mod:`.autoreply`).

Every verdict has a :class:`BounceReason` from the taxonomy in :mod:`.reasons`, and its
:class:`BounceKind` follows from the reason through the one table there:

* ``hard``: a recipient-side permanent reason (user unknown, host unknown, has moved, not
  accepted): the address cannot receive mail; suppress it.
* ``soft``: temporary, or a permanent failure of this message or mailbox rather than the
  address (mailbox full, too big, suspended, expired, network or system error, or a failure
  whose cause was not recognised).
* ``block``: refused for the sender's sake (IP/PTR/RBL, policy, DMARC/authentication, spam or
  virus, the sender refused, TLS): never the recipient's fault.
* ``complaint``: the recipient reported the message (ARF ``abuse``...); unsubscribe them.
* ``auto_reply``: an out-of-office or vacation answer; not a bounce, nothing to do.
* ``unknown``: no verdict (not a bounce, a delivery report, or unreadable input); the
  ``explanation`` says why. :func:`classify_message` never raises and never guesses.
"""

from __future__ import annotations

from postwise.compliance.bounces.classify import classify_message, classify_smtp_reply
from postwise.compliance.bounces.corpus import evaluate_corpus
from postwise.compliance.bounces.mime import MAX_MESSAGE_BYTES
from postwise.compliance.bounces.model import BounceClassification
from postwise.compliance.bounces.reasons import (
    REASONS,
    BounceKind,
    BounceReason,
    ReasonInfo,
    Side,
    kind_for,
)
from postwise.compliance.bounces.status import parse_status

__all__ = [
    "MAX_MESSAGE_BYTES",
    "REASONS",
    "BounceClassification",
    "BounceKind",
    "BounceReason",
    "ReasonInfo",
    "Side",
    "classify_message",
    "classify_smtp_reply",
    "evaluate_corpus",
    "kind_for",
    "parse_status",
]
