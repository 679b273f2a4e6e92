"""Bounces without a DSN part: the plain-text reports of qmail, Exim, old Sendmail, Courier,
Domino, GroupWise, Exchange 2003, Yahoo, AOL, carriers' own formats and the like.

What they share: a sender that is a mail system (``MAILER-DAEMON``, ``postmaster``), a subject
that says the mail was not delivered, a diagnostic section that names the recipient and quotes
the remote server's reply, and the returned message after a separator. Each MTA's wording for
the recipient is in :mod:`.recipients`; what the wording means is in :mod:`.wording`.
"""

from __future__ import annotations

import email
import email.policy
import re
from email.message import Message

from postwise.compliance.bounces.mime import clean, header
from postwise.compliance.bounces.model import BounceClassification
from postwise.compliance.bounces.reasons import BounceKind, BounceReason
from postwise.compliance.bounces.recipients import lone_address, returned_to, text_recipient
from postwise.compliance.bounces.status import join_reply_lines, parse_status
from postwise.compliance.bounces.wording import decide, matched_line, patterns, reason_from_text
from postwise.compliance.feedback import find_address, find_postwise_message_id, returned_headers

__all__ = ["bounce_markers", "classify_text_bounce"]


_BOUNCE_FROM_RE = re.compile(
    r"mailer[-_]daemon|postmaster|mail delivery (subsystem|system|service)|"
    r"mail administrator|internet mail delivery|mail ?delivery ?system",
    re.I,
)
_BOUNCE_SUBJECT_RE = patterns(
    r"undeliver",
    r"delivery (status notification|failure|failed|has failed|problem|notification|report)",
    r"returned mail",
    r"mail delivery failed",
    r"failure notice",
    r"non-?delivery",
    r"could not be delivered|not delivered|nicht zustellbar|non recapitabile",
    r"returned to sender",
    r"delivery error",
    r"mail (system )?error|warning: could not send|unable to deliver",
    r"delayed mail|delivery delayed|message delayed",
    r"rejected|bounce|failed delivery|message status",
    r"unzustellbar|non remis|no entregado|配信(エラー|失敗|不能)|未送信|"
    r"не доставлено|недоставлен",
)
# Reply and forward prefixes (English, German, French, Nordic, Spanish, Portuguese).
_REPLY_OR_FORWARD_RE = re.compile(r"\s*(re|fwd?|aw|wg|tr|sv|vs|antw|rv|enc)\s*(\[\d+\])?\s*:", re.I)
_BOUNCE_BODY_RE = patterns(
    r"could ?n[o']t be delivered",
    r"was ?n[o']t delivered",
    r"delivery (to the following recipients? )?(has )?failed",
    r"permanent (fatal )?errors?",
    r"unable to deliver",
    r"did not reach the following recipient",
    r"qmail-send program",
    r"mail delivery software",
    r"transcript of session follows",
    r"failed permanently",
    r"undeliverable",
    r"returned mail",
)
_PERMANENT_TEXT_RE = patterns(
    r"permanent (fatal )?error",
    r"failed permanently",
    r"permanent failure",
    r"unrecoverable error",
    r"I've given up",
    r"could not be delivered",
    r"undeliverable",
)
_TEMPORARY_TEXT_RE = patterns(
    r"temporar(y|ily)",
    r"will (be )?retr(y|ied)",
    r"still trying",
    r"delivery (status notification \()?delay",
    r"do not need to resend",
    r"has been delayed|not yet been delivered|has not yet been",
    r"warning: message",
)
_REPLY_IN_TEXT_RE = re.compile(
    r"(?:^|(?<=[\s:'\"(<\[#]))([45][0-5]\d)(?![\d.]|\.\d)(?:[ -]+|:\s*)(\S[^\n]*)$", re.M
)


def bounce_markers(message: Message, text: str) -> tuple[bool, bool]:
    """(strong, weak) evidence that a message is a bounce rather than a person's mail."""
    sender = header(message, "From")
    subject = header(message, "Subject")
    strong = bool(message.get("X-Failed-Recipients")) or bool(
        _BOUNCE_FROM_RE.search(sender) and not _REPLY_OR_FORWARD_RE.match(subject)
    )
    return_path = header(message, "Return-Path").strip()
    # "Fwd: Undelivered Mail Returned to Sender" is a person passing a bounce on, not a bounce.
    weak = not _REPLY_OR_FORWARD_RE.match(subject) and (
        bool(_BOUNCE_SUBJECT_RE.search(subject))
        or (return_path in {"<>", ""} and bool(_BOUNCE_BODY_RE.search(text)))
    )
    return strong, weak


def _first_reply(text: str) -> tuple[int, str] | None:
    """The first SMTP reply quoted in a bounce text, with its continuation lines joined."""
    for match in _REPLY_IN_TEXT_RE.finditer(text):
        line_start = text.rfind("\n", 0, match.start()) + 1
        if text[line_start : match.start()].lstrip().startswith(">>>"):
            continue  # our own command echoed in a session transcript
        code = match.group(1)
        parts = [f"{code} {match.group(2).strip()}"]
        rest = text[match.end() :].split("\n")[1:6]
        for line in rest:
            stripped = line.strip()
            if re.match(rf"{code}[ -]", stripped):
                parts.append(stripped[4:].strip())
            elif line[:1] in {" ", "\t"} and stripped and not _REPLY_IN_TEXT_RE.match(stripped):
                parts.append(stripped)  # a wrapped reply (Exim, Postfix indent the rest)
            else:
                break
        return int(code), join_reply_lines(" ".join(parts))
    return None


def classify_text_bounce(
    message: Message,
    text: str,
    returned_text: str,
    problems: list[str],
    *,
    weak_evidence: bool = False,
) -> BounceClassification:
    """A bounce without a DSN part. ``weak_evidence``: only its subject or a null return path
    with bounce wording says it is a bounce (no mail-system sender, no X-Failed-Recipients);
    then a verdict also needs an SMTP reply, a status code or a recognised reason."""
    original = returned_headers(message)
    if original is None and returned_text:
        original = email.message_from_string(returned_text[:65536], policy=email.policy.compat32)
    message_id = find_postwise_message_id(original, message, returned_text)
    own = {a.lower() for a in (find_address(header(message, "To")),) if a}
    own |= {a.lower() for a in (find_address(header(message, "From")),) if a}
    recipient = (
        text_recipient(message, text, exclude=own)
        or returned_to(original)
        or lone_address(text, exclude=own)
    )

    smtp_code: int | None = None
    diagnostic = ""
    reply = _first_reply(text)
    if reply is not None:
        smtp_code, diagnostic = reply
    status = parse_status(diagnostic) or parse_status(text)
    if smtp_code is not None and status is not None and status[0] != str(smtp_code)[0]:
        status = None
    if smtp_code is not None:
        permanent: bool | None = smtp_code >= 500
    elif status is not None:
        permanent = status[0] == "5"
    elif _TEMPORARY_TEXT_RE.search(text):
        permanent = False
    elif _PERMANENT_TEXT_RE.search(text):
        permanent = True
    else:
        permanent = None
    # The reply's words first; when they say nothing recognisable, the whole section's.
    wording = diagnostic if diagnostic and reason_from_text(diagnostic) else text
    if diagnostic and wording is text:
        wording = f"{diagnostic}\n{text}"
    coded = smtp_code is not None or status is not None
    # A mail system that names the failed recipient and says the delivery failed has reported
    # a failure, even when nothing says why: a bounce of undetermined cause, not "no verdict".
    # Unreadable parts or no recipient leave it without a verdict: nothing is done on a guess.
    evidence = coded or (
        not weak_evidence
        and recipient is not None
        and not problems
        and (permanent is not None or bool(_BOUNCE_SUBJECT_RE.search(header(message, "Subject"))))
    )
    reason, kind, explanation = decide(permanent, status, wording, coded=evidence)
    if weak_evidence and not coded:
        # A shop's "Delivery failed: your parcel..." mail reads like a bounce; a bounce that
        # no mail system signed must at least quote what a mail server said.
        kind = BounceKind.UNKNOWN
        reason = BounceReason.NOT_A_BOUNCE
        explanation = (
            "only the subject or wording suggests a bounce, and it quotes no SMTP reply "
            "or recognisable reason"
        )
    if not diagnostic:
        diagnostic = matched_line(text, reason)
    if kind is BounceKind.UNKNOWN:
        explanation = f"bounce message without a status code or recognisable cause: {explanation}"
        if problems:
            explanation += "; " + "; ".join(problems)
    return BounceClassification(
        kind=kind,
        reason=reason,
        recipient=recipient,
        status=status,
        diagnostic=clean(diagnostic),
        explanation=f"bounce text: {explanation}",
        smtp_code=smtp_code,
        message_id=message_id,
        permanent=permanent,
    )
