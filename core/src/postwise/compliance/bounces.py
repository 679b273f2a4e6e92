"""Classify what comes back after postwise sends: bounces, complaints and auto-replies.

Two entry points:

* :func:`classify_smtp_reply` for a reply the receiving server gave during the SMTP session
  (``550 5.1.1 user unknown``);
* :func:`classify_message` for a message that arrived later in the bounce mailbox: a delivery
  status notification (RFC 3464, with RFC 3463 status codes), an ARF complaint (RFC 5965), a
  non-standard bounce text (Exim, qmail, old Sendmail and Exchange, Gmail, Yahoo...), an Amazon
  SES notification, or an out-of-office reply.

The kinds say what to do with the address, not how the failure was worded:

* ``hard``: the address cannot receive mail (unknown user, disabled mailbox, no such domain);
  suppress it.
* ``soft``: a temporary failure, or a permanent one of this message rather than the address
  (mailbox full, message too large, delivery time expired); retry or send later.
* ``block``: refused for policy, reputation, spam or authentication reasons; the sender is at
  fault, not the address, so it feeds the reputation pause rather than suppression.
* ``complaint``: the recipient reported the message (ARF ``abuse``, ``fraud``, ``virus``,
  ``other``); unsubscribe them.
* ``auto_reply``: an out-of-office or vacation answer; not a bounce, nothing to do.
* ``unknown``: not enough evidence for any of the above; ``reason`` says why. Malformed,
  truncated or undecodable input lands here: a hard/soft decision is never a guess, and
  :func:`classify_message` never raises.
"""

from __future__ import annotations

import codecs
import email
import email.errors
import email.policy
import email.utils
import enum
import html
import json
import logging
import re
from collections import Counter
from dataclasses import dataclass
from email.header import decode_header, make_header
from email.message import Message
from pathlib import Path
from typing import Any

from postwise.compliance.feedback import (
    COMPLAINT_FEEDBACK_TYPES,
    POSTWISE_MESSAGE_ID_HEADER,
    find_address,
    find_postwise_message_id,
    is_feedback_report,
    parse_feedback_report,
    parse_field_blocks,
    report_fields,
    report_parts,
    returned_headers,
)
from postwise.errors import NotFoundError, ValidationError

__all__ = [
    "BounceClassification",
    "BounceKind",
    "classify_message",
    "classify_smtp_reply",
    "evaluate_corpus",
    "parse_status",
]

logger = logging.getLogger(__name__)

#: Bytes of a message that are read. Reports put their fields first; what follows is the
#: returned original, which can be megabytes of attachments nobody needs to parse.
MAX_MESSAGE_BYTES = 4 * 1024 * 1024
_MAX_DIAGNOSTIC_CHARS = 500


class BounceKind(enum.StrEnum):
    """What a returned message means for the address it concerns."""

    HARD = "hard"
    SOFT = "soft"
    BLOCK = "block"
    AUTO_REPLY = "auto_reply"
    COMPLAINT = "complaint"
    UNKNOWN = "unknown"


@dataclass(frozen=True, slots=True)
class BounceClassification:
    """The verdict on one returned message or SMTP reply."""

    kind: BounceKind
    #: The address the bounce or complaint is about, when it could be found.
    recipient: str | None = None
    #: RFC 3463 enhanced status code such as ``"5.1.1"``.
    status: str | None = None
    #: The remote side's own words (the SMTP reply or diagnostic line), trimmed.
    diagnostic: str = ""
    #: Why this kind was chosen, or why no kind could be.
    reason: str = ""
    #: The basic SMTP reply code (550, 421, ...) when there is one.
    smtp_code: int | None = None
    #: Our ``X-Postwise-Message-Id`` when the returned message or headers carry it.
    message_id: str | None = None
    #: ARF ``Feedback-Type`` of a complaint (``abuse``, ...).
    feedback_type: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; ``kind`` is its string value."""
        return {
            "kind": self.kind.value,
            "recipient": self.recipient,
            "status": self.status,
            "diagnostic": self.diagnostic,
            "reason": self.reason,
            "smtp_code": self.smtp_code,
            "message_id": self.message_id,
            "feedback_type": self.feedback_type,
        }


# --- SMTP replies and RFC 3463 status codes -------------------------------------------------

# Three numbers, the first 2, 4 or 5; not part of an IP address or a longer dotted number.
_STATUS_RE = re.compile(r"(?<![\d.])([245])\.(\d{1,3})\.(\d{1,3})(?!\.?\d)")
# A basic reply code as it starts an SMTP reply: x0z..x5z.
_REPLY_CODE_RE = re.compile(r"^\s*([2-5][0-5]\d)(?:[ -]|$)")

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
# Statuses that condemn the address itself.
_HARD_DETAILS = frozenset({"1.1", "1.2", "1.3", "1.6", "1.10", "2.1", "4.1", "4.4"})
# Statuses that reject the sender rather than the recipient.
_SENDER_DETAILS = frozenset({"1.7", "1.8"})
# Statuses about this message, not the address: retrying another message may well work.
_MESSAGE_DETAILS = frozenset({"2.2", "2.3", "3.4", "4.7"})


def _patterns(*alternatives: str) -> re.Pattern[str]:
    return re.compile("|".join(f"(?:{a})" for a in alternatives), re.I)


_QUOTA_RE = _patterns(
    r"mail ?box (is )?full",
    r"over (the |its |their )?(allowed |storage |disk )?quota",
    r"quota (exceeded|full)",
    r"exceed(s|ed)? (the |its |their |his |her )?(storage |mailbox |disk )?quota",
    r"storage quota",
    r"insufficient (system )?storage",
    r"mailbox size limit",
    r"not enough (disk )?space",
    # German, French, Spanish, Japanese providers word it in their own language.
    r"postfach (des empf(ä|ae)ngers )?(ist )?(voll|(ü|ue)berf(ü|ue)llt)",
    r"bo[iî]te (aux lettres )?(du destinataire )?(est )?pleine|quota d[ée]pass[ée]",
    r"buz[oó]n (est[aá] )?lleno",
    r"容量[^\n。]{0,15}(オーバー|超過|いっぱい|一杯)",
)
_HARD_RE = _patterns(
    r"user unknown",
    r"unknown (user|recipient|address|mailbox|local ?part)",
    r"no such (user|mailbox|recipient|address|account|person)",
    r"(user|mailbox|recipient|address|account)( name)? (is )?(unknown|not found|invalid)",
    r"(mailbox|account|address|user|recipient)\b[^.;\n]{0,40}\b"
    r"(does not|doesn't|no longer) exists?",
    r"(address|mailbox|recipient) (could|can)(n't| ?not) be found",
    r"invalid (recipient|mailbox|address|user)",
    r"not a valid (user|mailbox|recipient|address)",
    r"doesn't have an? [\w.-]+ account",
    r"recipient (name )?is not recognized",
    r"recip(ient)?notfound",
    r"unrouteable address",
    r"(account|mailbox) (has been |is )?(disabled|deactivated|inactive|closed|discontinued)",
    r"mailbox (is )?disabled",
    r"no mailbox here by that name",
    r"not listed in (the )?(domino directory|public name (&|and) address book)",
    r"address not found",
    r"bad destination mailbox",
    r"(domain|host) (name )?(not found|does not exist)",
    r"non-?existent (host|domain|user|mailbox)",
    r"no mx (record|host)",
    r"all relevant mx records point to non-existent hosts",
    r"empf(ä|ae)nger (ist )?unbekannt|unbekannte[rn]? (empf(ä|ae)nger|benutzer)",
    r"benutzer (ist )?unbekannt|(postfach|adresse)[^.\n]{0,40}(existiert nicht|nicht vorhanden)",
    r"(utilisateur|destinataire|adresse) inconnue?",
    r"(adresse|bo[iî]te|compte|utilisateur|destinataire)[^.\n]{0,40}n'existe pas",
    r"usuario desconocido|(direcci[oó]n|buz[oó]n|cuenta|usuario)[^.\n]{0,40} no existe",
    r"(メールアドレス|アドレス|宛先|ユーザー?|アカウント)[^\n。]{0,12}(存在しません|存在しない|見つかりません)",
    r"宛先不明",
)
# Characters between a sender word and its verdict, none of them starting a recipient word:
# "sender ok, recipient unknown" is about the recipient.
_NOT_RECIPIENT = r"(?:(?!recipient|rcpt|destinat|empf|adressat|user|mailbox|usuario)[^.\n])"
# The *sender* refused (sender verification, an unknown envelope sender): said in words that
# would otherwise read as "the address does not exist". Checked before _HARD_RE, so a refusal
# of our sender never suppresses the recipient.
_SENDER_RE = _patterns(
    r"(sender|return[- ]path|envelope[- ]from|mail from)( address| domain)?"
    rf"{_NOT_RECIPIENT}{{0,30}}"
    r"(does not exist|doesn't exist|not found|unknown|invalid|unverifiable|not verified|"
    r"could not be verified|rejected)",
    rf"absender\w*{_NOT_RECIPIENT}{{0,40}}"
    r"(existiert nicht|unbekannt|nicht vorhanden|abgelehnt|ung(ü|ue)ltig)",
    rf"exp(é|e)diteur{_NOT_RECIPIENT}{{0,40}}(n'existe pas|inconnue?|refus(é|e)e?|invalide)",
    rf"remitente{_NOT_RECIPIENT}{{0,40}}(no existe|desconocido|rechazad[oa]|no v(á|a)lid[oa])",
)
# Sender verification failed: unambiguous, and checked before any status code, because the
# refusal quotes the callout's reply about *our* address ("550 5.1.1 User unknown").
_SENDER_VERIFY_RE = _patterns(
    r"sender (address )?verif\w* failed|unverified sender|sender verify failed",
    r"verification failed for <",
)
_BLOCK_RE = _patterns(
    r"spam",
    r"black ?list",
    r"block ?list",
    r"\bblocked\b",
    r"\bbanned\b",
    r"reputation",
    r"\b(rbl|dnsbl|rbls)\b",
    r"spamhaus|spamcop|barracuda|sorbs",
    r"(?<!not )listed (at|on|in|by)",
    r"unsolicited",
    r"\bjunk\b",
    r"complaints",
    r"\bpolicy\b",
    r"\b(dmarc|spf|dkim)\b",
    r"not authenticated|unauthenticated|authentication (required|failed)",
    r"\bTSS\d\d\b",
    r"content (was )?rejected|message (content )?rejected",
    r"relay(ing)? (access )?(denied|not permitted)",
    r"access denied, banned",
)
_GREYLIST_RE = _patterns(r"gr[ae]y ?list")
_EXPIRED_RE = _patterns(
    r"retry time(out)? (not reached|exceeded)",
    r"delivery time expired",
    r"message expired",
    r"(cannot|could not) (send|deliver) (the )?message for \d+ (days|hours)",
    r"could not be delivered for \d+ (days|hours)",
    r"connection timed out",
)


def parse_status(text: str) -> str | None:
    """The first RFC 3463 enhanced status code in ``text`` (``"5.1.1"``), or ``None``."""
    for match in _STATUS_RE.finditer(text):
        klass, subject, detail = match.groups()
        if int(subject) <= 7:
            return f"{klass}.{int(subject)}.{int(detail)}"
    return None


def _describe(status: str) -> str:
    _, subject, detail = status.split(".")
    return _DETAILS.get(f"{subject}.{detail}", _SUBJECTS.get(subject, "unknown status"))


def _decide(permanent: bool | None, status: str | None, text: str) -> tuple[BounceKind, str]:
    """Pick a kind from the failure's permanence, status code and wording.

    ``permanent`` is ``None`` when nothing said whether the failure was permanent; then only
    the wording can decide, and without clear wording the answer is ``unknown``.
    """
    detail = status.split(".", 1)[1] if status else None
    subject = detail.split(".")[0] if detail else None

    if detail == "2.2" or _QUOTA_RE.search(text):
        return BounceKind.SOFT, f"mailbox full or over quota{_suffix(status)}"
    if permanent is False:
        if _GREYLIST_RE.search(text):
            return BounceKind.SOFT, f"temporary failure (greylisting or deferral){_suffix(status)}"
        if _BLOCK_RE.search(text):
            reason = f"temporarily refused for policy or reputation{_suffix(status)}"
            return BounceKind.BLOCK, reason
        return BounceKind.SOFT, f"temporary failure{_suffix(status)}"
    if _SENDER_VERIFY_RE.search(text):
        return BounceKind.BLOCK, "sender verification failed: the sender was refused"
    if detail in _HARD_DETAILS:
        return BounceKind.HARD, f"{status}: {_describe(status or '')}"
    if detail in _SENDER_DETAILS:
        return BounceKind.BLOCK, f"{status}: {_describe(status or '')}; the sender was refused"
    if _BLOCK_RE.search(text):
        return BounceKind.BLOCK, f"refused for policy, spam or reputation{_suffix(status)}"
    if _SENDER_RE.search(text):
        return BounceKind.BLOCK, f"the sender was refused, not the recipient{_suffix(status)}"
    if _HARD_RE.search(text):
        return BounceKind.HARD, f"the recipient address does not exist{_suffix(status)}"
    if subject == "7":
        return BounceKind.BLOCK, f"{status}: {_describe(status or '')}"
    if detail in _MESSAGE_DETAILS or subject == "6" or _EXPIRED_RE.search(text):
        return BounceKind.SOFT, (
            f"this message failed, not the address{_suffix(status)}"
            if status
            else "delivery gave up after retrying; the address was never refused"
        )
    if permanent:
        return BounceKind.HARD, f"permanent failure{_suffix(status)}"
    return BounceKind.UNKNOWN, "no status code and no recognizable failure wording"


def _suffix(status: str | None) -> str:
    return f" ({status}: {_describe(status)})" if status else ""


def classify_smtp_reply(code: int, text: str) -> BounceClassification:
    """Classify a reply an SMTP server gave while postwise was sending.

    ``code`` is the basic reply code (550); ``text`` the rest of the reply, which may begin
    with an enhanced status code (``5.1.1 <bob@example.com>: user unknown``). 4xx replies are
    ``soft`` unless they cite a reputation or policy block; 5xx are ``hard``, ``block`` or (for
    a full mailbox or an oversized message) ``soft``. A code outside 400-599 is not a failure
    and comes back ``unknown``.
    """
    diagnostic = _clean(f"{code} {text}".strip())
    if not 400 <= code <= 599:
        return BounceClassification(
            kind=BounceKind.UNKNOWN,
            diagnostic=diagnostic,
            reason=f"SMTP code {code} is not a failure (only 4xx and 5xx are)",
            smtp_code=code if 100 <= code <= 599 else None,
        )
    status = parse_status(text)
    if status is not None and status[0] != str(code)[0]:
        # A reply whose enhanced code contradicts its basic code: trust the basic code.
        status = None
    kind, reason = _decide(code >= 500, status, text)
    return BounceClassification(
        kind=kind, status=status, diagnostic=diagnostic, reason=reason, smtp_code=code
    )


# --- messages ------------------------------------------------------------------------------


def classify_message(raw: bytes) -> BounceClassification:
    """Classify one message from the bounce mailbox (raw RFC 5322 bytes).

    Never raises: input that cannot be parsed or understood comes back ``unknown`` with a
    ``reason``.
    """
    if not raw or not raw.strip():
        return BounceClassification(kind=BounceKind.UNKNOWN, reason="empty message")
    try:
        message = email.message_from_bytes(raw[:MAX_MESSAGE_BYTES], policy=email.policy.compat32)
        return _classify(message)
    except Exception as exc:
        # The contract is "never raises": mail from the Internet is hostile or broken in more
        # ways than any parser anticipates, and one bad message must not stop a mailbox run.
        logger.debug("could not classify a returned message", exc_info=True)
        return BounceClassification(
            kind=BounceKind.UNKNOWN,
            reason=f"message could not be parsed ({type(exc).__name__}: {_clean(str(exc))})",
        )


def _classify(message: Message) -> BounceClassification:
    if is_feedback_report(message):
        return _classify_feedback(message)
    for part in report_parts(message):
        if part.get_content_type() in {
            "message/delivery-status",
            "message/global-delivery-status",
        }:
            return _classify_dsn(message, report_fields(part), structured=True)

    text, problems = _readable_text(message)
    diagnostic_text, returned_text = _split_returned(text)
    if "Final-Recipient:" in diagnostic_text or "Original-Recipient:" in diagnostic_text:
        # A DSN whose MIME structure was lost (flattened, truncated or mislabelled).
        blocks = parse_field_blocks(diagnostic_text)
        if any(_recipient_block(b) for b in blocks):
            return _classify_dsn(message, blocks, structured=False)
    ses = _classify_ses_notification(text)
    if ses is not None:
        return ses

    strong, weak = _bounce_markers(message, diagnostic_text)
    if strong:
        return _classify_text_bounce(message, diagnostic_text, returned_text, problems)
    if _is_auto_reply(message):
        return _auto_reply(message, returned_text, "out of office or vacation")
    if weak:
        return _classify_text_bounce(
            message, diagnostic_text, returned_text, problems, weak_evidence=True
        )
    if _is_automatic_answer(message, diagnostic_text):
        return _auto_reply(message, returned_text, "acknowledgement or challenge")
    reason = "not a bounce, complaint or auto-reply: no report part and no bounce markers"
    if problems:
        reason += "; " + "; ".join(problems)
    return BounceClassification(kind=BounceKind.UNKNOWN, reason=reason)


def _auto_reply(message: Message, returned_text: str, what: str) -> BounceClassification:
    return BounceClassification(
        kind=BounceKind.AUTO_REPLY,
        recipient=find_address(_header(message, "From")),
        reason=f"automatic reply ({what}); not a bounce",
        message_id=find_postwise_message_id(message, returned_text),
    )


def _classify_feedback(message: Message) -> BounceClassification:
    report = parse_feedback_report(message)
    if not report.has_report_part or report.feedback_type is None:
        return BounceClassification(
            kind=BounceKind.UNKNOWN,
            recipient=report.recipient,
            message_id=report.message_id,
            reason="feedback report without a readable Feedback-Type field",
        )
    if report.feedback_type not in COMPLAINT_FEEDBACK_TYPES:
        return BounceClassification(
            kind=BounceKind.UNKNOWN,
            recipient=report.recipient,
            message_id=report.message_id,
            feedback_type=report.feedback_type,
            reason=f"feedback report of type {report.feedback_type!r} is not a complaint",
        )
    return BounceClassification(
        kind=BounceKind.COMPLAINT,
        recipient=report.recipient,
        message_id=report.message_id,
        feedback_type=report.feedback_type,
        diagnostic=_clean(
            f"Feedback-Type: {report.feedback_type}"
            + (f"; User-Agent: {report.user_agent}" if report.user_agent else "")
        ),
        reason=f"ARF feedback report ({report.feedback_type})",
    )


def _recipient_block(block: list[tuple[str, str]]) -> bool:
    names = {name for name, _ in block}
    return bool(names & {"final-recipient", "original-recipient"}) or (
        "action" in names and "status" in names
    )


def _classify_dsn(
    message: Message, blocks: list[list[tuple[str, str]]], *, structured: bool
) -> BounceClassification:
    original = returned_headers(message)
    message_id = find_postwise_message_id(original, message)
    recipients = [dict(reversed(b)) for b in blocks if _recipient_block(b)]
    if not recipients:
        return BounceClassification(
            kind=BounceKind.UNKNOWN,
            recipient=_fallback_recipient(message, original),
            message_id=message_id,
            reason="delivery status notification without a per-recipient block",
        )
    # One address per message is how postwise sends; with several, report the first failure.
    order = {"failed": 0, "delayed": 1}
    fields = min(recipients, key=lambda f: order.get(_action(f), 2))
    action = _action(fields)
    recipient = (
        _dsn_address(fields.get("original-recipient"))
        or _dsn_address(fields.get("final-recipient"))
        or _fallback_recipient(message, original)
    )
    diagnostic_field = fields.get("diagnostic-code", "")
    diag_type, _, diag_text = diagnostic_field.partition(";")
    if not diag_text:
        diag_type, diag_text = "", diagnostic_field
    diag_text = _join_reply_lines(diag_text.strip())
    smtp_code = None
    match = _REPLY_CODE_RE.match(diag_text)
    if match and diag_type.strip().lower() in {"smtp", ""}:
        smtp_code = int(match.group(1))
    status = parse_status(fields.get("status", "")) or parse_status(diag_text)
    source = "delivery status notification" if structured else "unstructured DSN fields"

    def verdict(kind: BounceKind, reason: str) -> BounceClassification:
        return BounceClassification(
            kind=kind,
            recipient=recipient,
            status=status,
            diagnostic=_clean(diag_text),
            reason=f"{source}: {reason}",
            smtp_code=smtp_code,
            message_id=message_id,
        )

    if action in {"delivered", "relayed", "expanded"}:
        return verdict(BounceKind.UNKNOWN, f"Action: {action} reports no failure")
    if action == "delayed":
        # Still queued, so temporary whatever the code; a reputation or policy deferral is
        # still the sender's problem, not the address's (it must not count towards suppression).
        kind, reason = _decide(False, status, diag_text)
        return verdict(kind, f"Action: delayed, the MTA is still retrying; {reason}")
    klass = status[0] if status else (str(smtp_code)[0] if smtp_code else None)
    if klass not in {"4", "5"}:
        return verdict(BounceKind.UNKNOWN, "no usable Status or SMTP diagnostic code")
    if (
        status is not None
        and status.split(".", 1)[1] in _HARD_DETAILS
        and smtp_code is not None
        and parse_status(diag_text) is None
        and _BLOCK_RE.search(diag_text)
    ):
        # The remote server gave no enhanced code, so the Status is the reporting MTA's
        # inference (Sendmail reports 5.1.1 for any refused RCPT), and the server's own words
        # say it refused for policy: trust the words.
        return verdict(
            BounceKind.BLOCK,
            f"refused for policy, spam or reputation; Status {status} was inferred by the "
            "reporting MTA, the remote server gave no enhanced code",
        )
    return verdict(*_decide(klass == "5", status, diag_text))


def _join_reply_lines(text: str) -> str:
    """Drop the code prefixes a multi-line SMTP reply repeats (``550-5.1.1 ... 550 5.1.1 ...``)."""
    match = re.match(r"([245]\d\d)[ -](?:([245]\.\d{1,3}\.\d{1,3})\s)?", text)
    if match is None:
        return text
    code, status = match.groups()
    repeated = re.escape(code) + r"[ -]" + (r"(?:" + re.escape(status) + r"\s+)?" if status else "")
    head, rest = text[: match.end()], text[match.end() :]
    return head + re.sub(r"\s" + repeated, " ", rest)


def _action(fields: dict[str, str]) -> str:
    return fields.get("action", "").split("(")[0].strip().lower()


def _dsn_address(value: str | None) -> str | None:
    """The address of a ``Final-Recipient``/``Original-Recipient`` field (``rfc822; a@b``)."""
    if not value:
        return None
    address_type, sep, address = value.partition(";")
    if sep and address_type.strip().lower() not in {"rfc822", "utf-8", "utf8", ""}:
        return None
    return find_address(address if sep else value)


# --- non-standard bounce texts -------------------------------------------------------------

_RETURNED_SEPARATOR_RE = re.compile(
    r"^[ \t]*-{2,}[^\n]*(copy of the (original )?message|original message|unsent message|"
    r"returned message|message headers? follow|undelivered message|header of the original)"
    r"[^\n]*$",
    re.I | re.M,
)
_BOUNCE_FROM_RE = re.compile(
    r"mailer-daemon|postmaster|mail delivery (subsystem|system)|mail administrator", re.I
)
_BOUNCE_SUBJECT_RE = _patterns(
    r"undeliver",
    r"delivery (status notification|failure|failed|has failed|problem|notification)",
    r"returned mail",
    r"mail delivery failed",
    r"failure notice",
    r"non-?delivery",
    r"could not be delivered",
    r"returned to sender",
    r"delivery error",
)
# Reply and forward prefixes (English, German, French, Nordic, Spanish, Portuguese).
_REPLY_OR_FORWARD_RE = re.compile(r"\s*(re|fwd?|aw|wg|tr|sv|vs|antw|rv|enc)\s*(\[\d+\])?\s*:", re.I)
_BOUNCE_BODY_RE = _patterns(
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
)
_PERMANENT_TEXT_RE = _patterns(
    r"permanent (fatal )?error",
    r"failed permanently",
    r"permanent failure",
    r"unrecoverable error",
    r"I've given up",
)
_TEMPORARY_TEXT_RE = _patterns(
    r"temporar(y|ily)",
    r"will (be )?retr(y|ied)",
    r"still trying",
    r"delivery (status notification \()?delay",
    r"do not need to resend",
    r"has been delayed",
    r"warning: message",
)
_REPLY_IN_TEXT_RE = re.compile(
    r"(?:^|(?<=[\s:'\"(<\[]))([45][0-5]\d)(?![\d.]|\.\d)(?:[ -]+|:\s*)(\S[^\n]*)$", re.M
)
_RECIPIENT_PATTERNS = [
    re.compile(p, re.I | re.M)
    for p in (
        r"following address(?:\(es\))? failed:\s*<?([^\s<>]+@[^\s<>]+)",
        r"failed permanently:\s*<?([^\s<>]+@[^\s<>]+)",
        r"permanent fatal errors -+\s*<?([^\s<>]+@[^\s<>]+)",
        r"had delivery problems -+\s*<?([^\s<>]+@[^\s<>]+)",
        r"(?:recipients or groups|following recipient\(s\)):\s*<?([^\s<>]+@[^\s<>]+)",
        r"(?:was ?n[o']t|could ?n[o']t be) delivered to:?\s*<?([^\s<>]+@[^\s<>]+)",
        r"message to <([^\s<>]+@[^\s<>]+)> was undeliverable",
        r"^\s*<([^\s<>]+@[^\s<>]+)>:",
        r"RCPT TO:\s*<([^\s<>]+@[^\s<>]+)>",
        # "Your message to bob@example.com couldn't be delivered", and its translations.
        r"message to <?([^\s<>]+@[^\s<>]+?)>?,? (?:could|can|was|has)(?:n't| ?not)\b",
        r"nachricht an <?([^\s<>]+@[^\s<>]+?)>? konnte nicht",
        r"message (?:à|a) <?([^\s<>]+@[^\s<>]+?)>? n'a pas pu",
        r"宛先\s*[:\uff1a]\s*<?([^\s<>]+@[^\s<>]+?)>?(?:\s|$)",
        r"^\s*recipient:\s*<?([^\s<>]+@[^\s<>]+?)>?\s*$",
        # An address alone on its line (qmail style without the colon).
        r"^\s*<([^\s<>]+@[^\s<>]+)>\s*$",
    )
]


def _classify_text_bounce(
    message: Message,
    text: str,
    returned_text: str,
    problems: list[str],
    *,
    weak_evidence: bool = False,
) -> BounceClassification:
    """A bounce without a DSN part. ``weak_evidence``: only its subject or a null return path
    with bounce wording says it is a bounce (no MAILER-DAEMON sender, no X-Failed-Recipients);
    then a verdict also needs an SMTP reply or status code quoted in the text."""
    original = returned_headers(message)
    if original is None and returned_text:
        original = email.message_from_string(returned_text, policy=email.policy.compat32)
    message_id = find_postwise_message_id(original, message, returned_text)
    recipient = _text_recipient(message, text) or _fallback_recipient(message, original)

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
    # Without a reply or status line, judge the wording of the whole diagnostic section.
    wording = diagnostic or text
    kind, reason = _decide(permanent, status, wording)
    # "Permanent error" alone, with no reply, status or recognizable wording, is not evidence.
    if (
        kind is BounceKind.HARD
        and smtp_code is None
        and status is None
        and not _HARD_RE.search(wording)
    ):
        kind, reason = BounceKind.UNKNOWN, "bounce says the failure is permanent but not why"
    # A shop's "Delivery failed: your parcel..." mail reads like a bounce; a bounce that no
    # mail system signed must at least quote what a mail server said.
    if weak_evidence and smtp_code is None and status is None and kind is not BounceKind.UNKNOWN:
        kind = BounceKind.UNKNOWN
        reason = "only the subject or wording suggests a bounce, and it quotes no SMTP reply"
    if not diagnostic:
        diagnostic = _diagnostic_line(text, kind)
    if kind is BounceKind.UNKNOWN:
        reason = f"bounce message without a status code or recognizable diagnostic: {reason}"
        if problems:
            reason += "; " + "; ".join(problems)
    else:
        reason = f"bounce text: {reason}"
    return BounceClassification(
        kind=kind,
        recipient=recipient,
        status=status,
        diagnostic=_clean(diagnostic),
        reason=reason,
        smtp_code=smtp_code,
        message_id=message_id,
    )


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
        return int(code), _join_reply_lines(" ".join(parts))
    return None


def _diagnostic_line(text: str, kind: BounceKind) -> str:
    """The line that decided a bounce without an SMTP reply: the one the wording matched."""
    if kind is BounceKind.UNKNOWN:
        return ""
    for pattern in (_QUOTA_RE, _HARD_RE, _BLOCK_RE, _EXPIRED_RE, _STATUS_RE):
        match = pattern.search(text)
        if match:
            start = text.rfind("\n", 0, match.start()) + 1
            end = text.find("\n", match.end())
            return text[start : end if end != -1 else len(text)].strip()
    return ""


def _text_recipient(message: Message, text: str) -> str | None:
    failed = find_address(_header(message, "X-Failed-Recipients"))
    if failed:
        return failed
    for pattern in _RECIPIENT_PATTERNS:
        match = pattern.search(text)
        if match:
            address = find_address(match.group(1))
            if address:
                return address
    return None


def _fallback_recipient(message: Message, original: Message | None) -> str | None:
    """The returned message's single ``To`` address, when the report names no recipient."""
    if original is None:
        return None
    values = [_decode_header(str(v)) for v in original.get_all("To") or []]
    addresses = {a for a in (find_address(v) for _, v in email.utils.getaddresses(values)) if a}
    return addresses.pop() if len(addresses) == 1 else None


def _bounce_markers(message: Message, text: str) -> tuple[bool, bool]:
    """(strong, weak) evidence that a message is a bounce rather than a person's mail."""
    strong = bool(message.get("X-Failed-Recipients")) or bool(
        _BOUNCE_FROM_RE.search(_header(message, "From"))
    )
    return_path = _header(message, "Return-Path").strip()
    subject = _header(message, "Subject")
    # "Fwd: Undelivered Mail Returned to Sender" is a person passing a bounce on, not a bounce.
    weak = not _REPLY_OR_FORWARD_RE.match(subject) and (
        bool(_BOUNCE_SUBJECT_RE.search(subject))
        or (return_path in {"<>", ""} and bool(_BOUNCE_BODY_RE.search(text)))
    )
    return strong, weak


_AUTO_SUBJECT_RE = _patterns(
    r"^\s*(auto(matic)?[ -]?(reply|response|antwort|matische antwort)|autoreply)\b",
    r"^\s*auto:",
    r"out of (the )?office",
    r"^\s*(vacation|on vacation|abwesen(d|heitsnotiz))",
    r"r[ée]ponse automatique|respuesta autom[áa]tica|risposta automatica",
)


_AUTO_BODY_RE = _patterns(
    r"this is an? (automated|automatic|automatically generated|auto-generated) "
    r"(reply|response|message|acknowledge?ment)",
)


def _is_auto_reply(message: Message) -> bool:
    auto_submitted = _header(message, "Auto-Submitted").strip().lower()
    if auto_submitted.startswith("auto-replied"):
        return True
    if message.get("X-Autoreply") or message.get("X-Autorespond"):
        return True
    if _header(message, "Precedence").strip().lower() == "auto_reply":
        return True
    return bool(_AUTO_SUBJECT_RE.search(_header(message, "Subject")))


def _is_automatic_answer(message: Message, text: str) -> bool:
    """An answer to our message that a machine wrote without calling itself an auto-reply: a
    helpdesk's ticket acknowledgement (``Auto-Submitted: auto-generated``), a challenge-response
    request that says it is automated. Checked only once the message is known not to be a
    bounce, since bounces are automatic answers too."""
    if not (message.get("In-Reply-To") or message.get("References")):
        return False
    auto_submitted = _header(message, "Auto-Submitted").strip().lower()
    if auto_submitted and not auto_submitted.startswith("no"):
        return True
    return bool(_AUTO_BODY_RE.search(text[:2000]))


def _classify_ses_notification(text: str) -> BounceClassification | None:
    """An Amazon SES notification delivered by e-mail (SNS): JSON in the body."""
    start = text.find("{")
    if start == -1 or "notificationType" not in text:
        return None
    try:
        data, _ = json.JSONDecoder().raw_decode(text[start:])
    except ValueError:
        return None
    if isinstance(data, dict) and isinstance(data.get("Message"), str):
        # The SNS "email-json" protocol wraps the SES notification as a JSON string.
        try:
            data = json.loads(data["Message"])
        except ValueError:
            return None
    if not isinstance(data, dict) or not ({"notificationType", "eventType"} & data.keys()):
        return None
    mail = data.get("mail")
    headers = mail.get("headers") if isinstance(mail, dict) else None
    if not isinstance(headers, list):
        headers = []
    message_id = next(
        (
            str(h.get("value")).strip("<> ")
            for h in headers
            if isinstance(h, dict)
            and str(h.get("name", "")).lower() == POSTWISE_MESSAGE_ID_HEADER.lower()
        ),
        None,
    )
    kind_name = str(data.get("notificationType") or data.get("eventType") or "")
    if kind_name == "Complaint" and isinstance(data.get("complaint"), dict):
        complaint = data["complaint"]
        people = complaint.get("complainedRecipients") or [{}]
        feedback_type = str(complaint.get("complaintFeedbackType") or "abuse").lower()
        return BounceClassification(
            kind=BounceKind.COMPLAINT,
            recipient=find_address(str(people[0].get("emailAddress", ""))),
            message_id=message_id,
            feedback_type=feedback_type,
            reason=f"Amazon SES complaint notification ({feedback_type})",
        )
    if kind_name != "Bounce" or not isinstance(data.get("bounce"), dict):
        return BounceClassification(
            kind=BounceKind.UNKNOWN,
            message_id=message_id,
            reason=f"Amazon SES notification of type {kind_name!r} is not a bounce",
        )
    bounce = data["bounce"]
    first = (bounce.get("bouncedRecipients") or [{}])[0]
    diagnostic = str(first.get("diagnosticCode") or "").partition(";")[2].strip() or str(
        first.get("diagnosticCode") or ""
    )
    status = parse_status(str(first.get("status") or "")) or parse_status(diagnostic)
    reply = _REPLY_CODE_RE.match(diagnostic)
    bounce_type = str(bounce.get("bounceType") or "")
    permanent = {"Permanent": True, "Transient": False}.get(bounce_type)
    sub_type = str(bounce.get("bounceSubType") or "")
    wording = f"{diagnostic} {'mailbox full' if sub_type == 'MailboxFull' else ''}"
    if permanent is None:
        kind, reason = BounceKind.UNKNOWN, f"SES bounce type {bounce_type!r} is undetermined"
    elif permanent and sub_type in {"NoEmail", "Suppressed", "OnAccountSuppressionList"}:
        kind, reason = BounceKind.HARD, f"SES permanent bounce ({sub_type})"
    else:
        kind, reason = _decide(permanent, status, wording)
        reason = f"Amazon SES {bounce_type.lower()} bounce: {reason}"
    return BounceClassification(
        kind=kind,
        recipient=find_address(str(first.get("emailAddress", ""))),
        status=status,
        diagnostic=_clean(diagnostic),
        reason=reason,
        smtp_code=int(reply.group(1)) if reply else None,
        message_id=message_id,
    )


# --- text helpers --------------------------------------------------------------------------

_KNOWN_TRANSFER_ENCODINGS = frozenset(
    {"", "7bit", "8bit", "binary", "base64", "quoted-printable", "x-uuencode", "uuencode"}
)


def _readable_text(message: Message) -> tuple[str, list[str]]:
    """The decoded text of the message's own text parts, and what could not be read."""
    texts: list[str] = []
    problems: list[str] = []
    for part in report_parts(message):
        if part.get_content_maintype() == "multipart" and not part.is_multipart():
            problems.append("multipart body without a usable boundary could not be split")
            continue
        if part.is_multipart() or part.get_content_maintype() != "text":
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
        texts.append(text.replace("\r\n", "\n").replace("\r", "\n"))
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
    return payload.decode(codec, "replace"), None


def _split_returned(text: str) -> tuple[str, str]:
    """Split a bounce text into its diagnostic section and the returned message after it."""
    match = _RETURNED_SEPARATOR_RE.search(text)
    if match is None:
        return text, ""
    return text[: match.start()], text[match.end() :].lstrip("\r\n")


def _header(message: Message, name: str) -> str:
    value = message.get(name)
    return "" if value is None else _decode_header(value)


def _decode_header(value: object) -> str:
    """A header as text, with RFC 2047 encoded words decoded where their charset is known."""
    try:
        text = str(make_header(decode_header(value)))  # type: ignore[arg-type]
    except (LookupError, UnicodeError, email.errors.HeaderParseError, ValueError, TypeError):
        text = str(value)
    return text.encode("utf-8", "replace").decode("utf-8")


def _clean(text: str) -> str:
    """One line of printable text, at most a few hundred characters, safe to print or log."""
    text = text.encode("utf-8", "replace").decode("utf-8")
    text = "".join(c if c.isprintable() else " " for c in text)
    text = re.sub(r"\s+", " ", text).strip()
    if len(text) > _MAX_DIAGNOSTIC_CHARS:
        text = text[: _MAX_DIAGNOSTIC_CHARS - 1] + "…"
    return text


# --- corpus evaluation ---------------------------------------------------------------------


def evaluate_corpus(directory: str | Path) -> dict[str, Any]:
    """Classify every fixture a corpus manifest lists and compare with the expected verdicts.

    ``directory`` holds the message files and a ``manifest.json`` of the form
    ``{"fixtures": [{"file": ..., "kind": ..., "recipient": ..., "status": ...}, ...]}``.
    A fixture counts as correct when kind, recipient (case-insensitively) and status all match.
    Returns ``count``, ``correct``, ``accuracy``, ``kind_accuracy``, ``confusion`` (expected
    kind -> predicted kind -> count) and the ``mismatches``.
    """
    root = Path(directory)
    manifest_path = root / "manifest.json"
    if not manifest_path.is_file():
        raise NotFoundError(
            f"no manifest.json in {root}: a corpus directory holds its message files and a "
            "manifest.json that lists each file with its expected kind, recipient and status"
        )
    try:
        entries = json.loads(manifest_path.read_text(encoding="utf-8"))["fixtures"]
    except (ValueError, KeyError, TypeError) as exc:
        raise ValidationError(
            f"{manifest_path} is not a corpus manifest ({exc}); expected "
            '{"fixtures": [{"file": ..., "kind": ..., "recipient": ..., "status": ...}]}',
            field="manifest",
        ) from exc
    confusion: dict[str, Counter[str]] = {}
    mismatches: list[dict[str, Any]] = []
    correct = kind_correct = 0
    for entry in entries:
        result = classify_message((root / entry["file"]).read_bytes())
        expected_kind = str(entry["kind"])
        confusion.setdefault(expected_kind, Counter())[result.kind.value] += 1
        same_kind = result.kind.value == expected_kind
        same_recipient = (result.recipient or "").lower() == (entry.get("recipient") or "").lower()
        same_status = result.status == entry.get("status")
        kind_correct += same_kind
        if same_kind and same_recipient and same_status:
            correct += 1
        else:
            mismatches.append(
                {
                    "file": entry["file"],
                    "expected": {k: entry.get(k) for k in ("kind", "recipient", "status")},
                    "got": {
                        "kind": result.kind.value,
                        "recipient": result.recipient,
                        "status": result.status,
                        "reason": result.reason,
                    },
                }
            )
    count = len(entries)
    return {
        "count": count,
        "correct": correct,
        "accuracy": correct / count if count else 0.0,
        "kind_correct": kind_correct,
        "kind_accuracy": kind_correct / count if count else 0.0,
        "confusion": {k: dict(v) for k, v in sorted(confusion.items())},
        "mismatches": mismatches,
    }
