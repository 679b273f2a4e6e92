"""The two entry points: a message from the bounce mailbox, and an SMTP reply during sending."""

from __future__ import annotations

import email
import email.policy
import logging
from email.message import Message

from postwise.compliance.bounces.arf import classify_feedback
from postwise.compliance.bounces.autoreply import auto_reply, is_auto_reply, is_automatic_answer
from postwise.compliance.bounces.dsn import classify_dsn, is_recipient_block
from postwise.compliance.bounces.esp import classify_json_notification
from postwise.compliance.bounces.mime import MAX_MESSAGE_BYTES, clean, readable_text, split_returned
from postwise.compliance.bounces.model import BounceClassification
from postwise.compliance.bounces.reasons import BounceKind, BounceReason
from postwise.compliance.bounces.status import parse_status
from postwise.compliance.bounces.text import bounce_markers, classify_text_bounce
from postwise.compliance.bounces.wording import decide
from postwise.compliance.feedback import (
    is_feedback_report,
    parse_field_blocks,
    report_fields,
    report_parts,
)

__all__ = ["classify_message", "classify_smtp_reply"]

logger = logging.getLogger(__name__)

_DSN_TYPES = frozenset({"message/delivery-status", "message/global-delivery-status"})


def classify_smtp_reply(code: int, text: str) -> BounceClassification:
    """Classify a reply an SMTP server gave while postwise was sending.

    ``code`` is the basic reply code (550); ``text`` the rest of the reply, which may begin
    with an enhanced status code (``5.1.1 <bob@example.com>: user unknown``). The reason comes
    from the words, then the status code; the kind from the reason and whether the code was
    4xx or 5xx. A code outside 400-599 is not a failure and comes back ``unknown``.
    """
    diagnostic = clean(f"{code} {text}".strip())
    if not 400 <= code <= 599:
        return BounceClassification(
            kind=BounceKind.UNKNOWN,
            reason=BounceReason.NOT_A_BOUNCE,
            diagnostic=diagnostic,
            explanation=f"SMTP code {code} is not a failure (only 4xx and 5xx are)",
            smtp_code=code if 100 <= code <= 599 else None,
        )
    status = parse_status(text)
    if status is not None and status[0] != str(code)[0]:
        # A reply whose enhanced code contradicts its basic code: trust the basic code.
        status = None
    permanent = code >= 500
    reason, kind, explanation = decide(permanent, status, text, coded=True)
    return BounceClassification(
        kind=kind,
        reason=reason,
        status=status,
        diagnostic=diagnostic,
        explanation=explanation,
        smtp_code=code,
        permanent=permanent,
    )


def classify_message(raw: bytes) -> BounceClassification:
    """Classify one message from the bounce mailbox (raw RFC 5322 bytes).

    Never raises: input that cannot be parsed or understood comes back ``unknown`` with a
    reason (``unreadable`` or ``not_a_bounce``) and an explanation. Only the first
    :data:`~.mime.MAX_MESSAGE_BYTES` are read, so time and memory are bounded.
    """
    raw = raw[:MAX_MESSAGE_BYTES]
    if not raw.strip():
        return BounceClassification(
            kind=BounceKind.UNKNOWN, reason=BounceReason.UNREADABLE, explanation="empty message"
        )
    try:
        message = email.message_from_bytes(raw, policy=email.policy.compat32)
        return _classify(message)
    except Exception as exc:
        # The contract is "never raises": mail from the Internet is hostile or broken in more
        # ways than any parser anticipates, and one bad message must not stop a mailbox run.
        logger.debug("could not classify a returned message", exc_info=True)
        return BounceClassification(
            kind=BounceKind.UNKNOWN,
            reason=BounceReason.UNREADABLE,
            explanation=f"message could not be parsed ({type(exc).__name__}: {clean(str(exc))})",
        )


def _classify(message: Message) -> BounceClassification:
    if is_feedback_report(message):
        return classify_feedback(message)
    text, problems = readable_text(message)
    diagnostic_text, returned_text = split_returned(text)
    for part in report_parts(message):
        if part.get_content_type() in _DSN_TYPES:
            blocks = report_fields(part)
            if any(is_recipient_block(b) for b in blocks):
                return classify_dsn(message, blocks, structured=True, text=diagnostic_text)
    if "Final-Recipient:" in diagnostic_text or "Original-Recipient:" in diagnostic_text:
        # A DSN whose MIME structure was lost (flattened, truncated or mislabelled).
        blocks = parse_field_blocks(diagnostic_text)
        if any(is_recipient_block(b) for b in blocks):
            return classify_dsn(message, blocks, structured=False, text=diagnostic_text)
    if "{" in text:
        notification = classify_json_notification(text)
        if notification is not None:
            return notification

    strong, weak = bounce_markers(message, diagnostic_text)
    if strong:
        return classify_text_bounce(message, diagnostic_text, returned_text, problems)
    if is_auto_reply(message):
        return auto_reply(message, returned_text, "out of office or vacation")
    if weak:
        return classify_text_bounce(
            message, diagnostic_text, returned_text, problems, weak_evidence=True
        )
    if is_automatic_answer(message, diagnostic_text):
        return auto_reply(message, returned_text, "acknowledgement or challenge")
    explanation = "not a bounce, complaint or auto-reply: no report part and no bounce markers"
    if problems:
        explanation += "; " + "; ".join(problems)
    return BounceClassification(
        kind=BounceKind.UNKNOWN,
        reason=BounceReason.UNREADABLE if problems else BounceReason.NOT_A_BOUNCE,
        explanation=explanation,
    )
