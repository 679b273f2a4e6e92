"""RFC 3464 delivery status notifications, in the variants real MTAs send.

Handled: the ``message/delivery-status`` part (and RFC 6533's ``message/global-delivery-status``),
a DSN flattened into plain text (its MIME structure lost), several recipient blocks (the first
failure is reported), fields missing or misspelt (no ``Action``, no ``Final-Recipient``: the
recipient then comes from ``X-Failed-Recipients``, the text, or the returned headers), statuses
inferred by the reporting MTA rather than given by the remote server.
"""

from __future__ import annotations

from email.message import Message

from postwise.compliance.bounces.mime import clean
from postwise.compliance.bounces.model import BounceClassification
from postwise.compliance.bounces.reasons import BounceKind, BounceReason, kind_for
from postwise.compliance.bounces.recipients import dsn_address, returned_to, text_recipient
from postwise.compliance.bounces.status import REPLY_CODE_RE, join_reply_lines, parse_status
from postwise.compliance.bounces.wording import decide, reason_from_text
from postwise.compliance.feedback import find_postwise_message_id, returned_headers

__all__ = ["classify_dsn", "is_recipient_block"]


def is_recipient_block(block: list[tuple[str, str]]) -> bool:
    """Whether a DSN field block is a per-recipient one (not the per-message block)."""
    names = {name for name, _ in block}
    return bool(names & {"final-recipient", "original-recipient"}) or (
        "action" in names and "status" in names
    )


def classify_dsn(
    message: Message,
    blocks: list[list[tuple[str, str]]],
    *,
    structured: bool,
    text: str = "",
) -> BounceClassification:
    """Classify a DSN from its field blocks; ``text`` is the human-readable part, if any."""
    original = returned_headers(message)
    message_id = find_postwise_message_id(original, message)
    recipients = [dict(reversed(b)) for b in blocks if is_recipient_block(b)]
    source = "delivery status notification" if structured else "unstructured DSN fields"
    if not recipients:
        return BounceClassification(
            kind=BounceKind.UNKNOWN,
            reason=BounceReason.UNDETERMINED,
            recipient=text_recipient(message, text) or returned_to(original),
            message_id=message_id,
            explanation=f"{source} without a per-recipient block",
        )
    # One address per message is how postwise sends; with several, report the first failure.
    order = {"failed": 0, "delayed": 1}
    fields = min(recipients, key=lambda f: order.get(_action(f), 2))
    action = _action(fields)
    recipient = (
        dsn_address(fields.get("original-recipient"))
        or dsn_address(fields.get("final-recipient"))
        or text_recipient(message, text)
        or returned_to(original)
    )
    diagnostic_field = fields.get("diagnostic-code", "")
    diag_type, _, diag_text = diagnostic_field.partition(";")
    if not diag_text:
        diag_type, diag_text = "", diagnostic_field
    diag_text = join_reply_lines(diag_text.strip())
    smtp_code = None
    match = REPLY_CODE_RE.match(diag_text)
    if match and diag_type.strip().lower() in {"smtp", ""}:
        smtp_code = int(match.group(1))
    status = parse_status(fields.get("status", "")) or parse_status(diag_text)

    def verdict(
        kind: BounceKind, reason: BounceReason, explanation: str, permanent: bool | None
    ) -> BounceClassification:
        return BounceClassification(
            kind=kind,
            reason=reason,
            recipient=recipient,
            status=status,
            diagnostic=clean(diag_text),
            explanation=f"{source}: {explanation}",
            smtp_code=smtp_code,
            message_id=message_id,
            permanent=permanent,
        )

    if action in {"delivered", "relayed", "expanded"}:
        return verdict(
            BounceKind.UNKNOWN,
            BounceReason.DELIVERED,
            f"Action: {action} reports no failure",
            None,
        )
    # Without a diagnostic from the remote server, the reporting MTA's own words (the human-
    # readable part) are the next best evidence of why; they come after the diagnostic.
    wording = diag_text if diag_text else ""
    if not wording or reason_from_text(wording) is None:
        wording = f"{wording}\n{_explanation_text(text)}".strip()
    if action == "delayed":
        # Still queued, so temporary whatever the code.
        reason, kind, explanation = decide(
            False, status, wording, coded=status is not None or smtp_code is not None
        )
        return verdict(kind, reason, f"Action: delayed, still retrying; {explanation}", False)
    klass = status[0] if status else (str(smtp_code)[0] if smtp_code else None)
    if klass not in {"4", "5"}:
        if action == "failed":
            reason, kind, explanation = decide(True, None, wording)
            return verdict(kind, reason, f"Action: failed without a status; {explanation}", True)
        return verdict(
            BounceKind.UNKNOWN,
            BounceReason.UNDETERMINED,
            "no usable Action, Status or SMTP diagnostic code",
            None,
        )
    permanent = klass == "5"
    reason, kind, explanation = decide(
        permanent, status, wording, coded=True, context=_explanation_text(text)
    )
    if (
        reason in {BounceReason.USER_UNKNOWN, BounceReason.HOST_UNKNOWN}
        and smtp_code is not None
        and smtp_code < 500
        and permanent
    ):
        # The remote server said 4xx and the reporting MTA gave up: temporary at the source.
        kind = kind_for(reason, False)
    return verdict(kind, reason, explanation, permanent)


def _explanation_text(text: str) -> str:
    """The first few KB of the human-readable part: enough for the MTA's words."""
    return text[:4000]


def _action(fields: dict[str, str]) -> str:
    return fields.get("action", "").split("(")[0].strip().lower()
