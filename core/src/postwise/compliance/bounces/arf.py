"""ARF feedback reports (RFC 5965): complaints, and the feedback types that are not complaints."""

from __future__ import annotations

from email.message import Message

from postwise.compliance.bounces.mime import clean
from postwise.compliance.bounces.model import BounceClassification
from postwise.compliance.bounces.reasons import BounceKind, BounceReason
from postwise.compliance.feedback import COMPLAINT_FEEDBACK_TYPES, parse_feedback_report

__all__ = ["classify_feedback"]


def classify_feedback(message: Message) -> BounceClassification:
    """Classify a ``multipart/report; report-type=feedback-report`` message."""
    report = parse_feedback_report(message)
    if not report.has_report_part or report.feedback_type is None:
        return BounceClassification(
            kind=BounceKind.UNKNOWN,
            reason=BounceReason.UNREADABLE,
            recipient=report.recipient,
            message_id=report.message_id,
            explanation="feedback report without a readable Feedback-Type field",
        )
    if report.feedback_type not in COMPLAINT_FEEDBACK_TYPES:
        return BounceClassification(
            kind=BounceKind.UNKNOWN,
            reason=BounceReason.NOT_A_BOUNCE,
            recipient=report.recipient,
            message_id=report.message_id,
            feedback_type=report.feedback_type,
            explanation=f"feedback report of type {report.feedback_type!r} is not a complaint",
        )
    return BounceClassification(
        kind=BounceKind.COMPLAINT,
        reason=BounceReason.FEEDBACK,
        recipient=report.recipient,
        message_id=report.message_id,
        feedback_type=report.feedback_type,
        diagnostic=clean(
            f"Feedback-Type: {report.feedback_type}"
            + (f"; User-Agent: {report.user_agent}" if report.user_agent else "")
        ),
        explanation=f"ARF feedback report ({report.feedback_type})",
    )
