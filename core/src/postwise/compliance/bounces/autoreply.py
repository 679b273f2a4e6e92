"""Out-of-office replies, vacation notices and other automatic answers: not bounces."""

from __future__ import annotations

from email.message import Message

from postwise.compliance.bounces.mime import header
from postwise.compliance.bounces.model import BounceClassification
from postwise.compliance.bounces.reasons import BounceKind, BounceReason
from postwise.compliance.bounces.wording import patterns
from postwise.compliance.feedback import find_address, find_postwise_message_id

__all__ = ["auto_reply", "is_auto_reply", "is_automatic_answer"]


_AUTO_SUBJECT_RE = patterns(
    r"^\s*(auto(matic)?[ -]?(reply|response|antwort|matische antwort)|autoreply)\b",
    r"^\s*auto:",
    r"out of (the )?office",
    r"^\s*(vacation|on vacation|abwesen(d|heitsnotiz))",
    r"r[ée]ponse automatique|respuesta autom[áa]tica|risposta automatica",
    r"自動(応答|返信)|不在",
)
_AUTO_BODY_RE = patterns(
    r"this is an? (automated|automatic|automatically generated|auto-generated) "
    r"(reply|response|message|acknowledge?ment)",
)


def is_auto_reply(message: Message) -> bool:
    """Headers or subject mark the message as an out-of-office or vacation reply."""
    auto_submitted = header(message, "Auto-Submitted").strip().lower()
    if auto_submitted.startswith("auto-replied"):
        return True
    if message.get("X-Autoreply") or message.get("X-Autorespond"):
        return True
    if header(message, "Precedence").strip().lower() == "auto_reply":
        return True
    return bool(_AUTO_SUBJECT_RE.search(header(message, "Subject")))


def is_automatic_answer(message: Message, text: str) -> bool:
    """An answer to our message that a machine wrote without calling itself an auto-reply: a
    helpdesk's ticket acknowledgement (``Auto-Submitted: auto-generated``), a challenge-response
    request that says it is automated. Checked only once the message is known not to be a
    bounce, since bounces are automatic answers too."""
    if not (message.get("In-Reply-To") or message.get("References")):
        return False
    auto_submitted = header(message, "Auto-Submitted").strip().lower()
    if auto_submitted and not auto_submitted.startswith("no"):
        return True
    return bool(_AUTO_BODY_RE.search(text[:2000]))


def auto_reply(message: Message, returned_text: str, what: str) -> BounceClassification:
    """The verdict for an automatic reply: the person answered, nothing to do."""
    return BounceClassification(
        kind=BounceKind.AUTO_REPLY,
        reason=BounceReason.AUTO_REPLY,
        recipient=find_address(header(message, "From")),
        explanation=f"automatic reply ({what}); not a bounce",
        message_id=find_postwise_message_id(message, returned_text),
    )
