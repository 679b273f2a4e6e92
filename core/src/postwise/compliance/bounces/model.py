"""The verdict on one returned message or SMTP reply."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from postwise.compliance.bounces.reasons import BounceKind, BounceReason

__all__ = ["BounceClassification"]


@dataclass(frozen=True, slots=True)
class BounceClassification:
    """The verdict on one returned message or SMTP reply."""

    kind: BounceKind
    #: Why it came back, from the taxonomy in :mod:`.reasons`; ``kind`` follows from it.
    reason: BounceReason = BounceReason.UNDETERMINED
    #: The address the bounce or complaint is about, when it could be found.
    recipient: str | None = None
    #: RFC 3463 enhanced status code such as ``"5.1.1"``.
    status: str | None = None
    #: The remote side's own words (the SMTP reply or diagnostic line), trimmed.
    diagnostic: str = ""
    #: In words: how the reason and kind were reached, or why no verdict could be.
    explanation: str = ""
    #: The basic SMTP reply code (550, 421, ...) when there is one.
    smtp_code: int | None = None
    #: Our ``X-Postwise-Message-Id`` when the returned message or headers carry it.
    message_id: str | None = None
    #: ARF ``Feedback-Type`` of a complaint (``abuse``, ...).
    feedback_type: str | None = None
    #: Whether the failure was permanent (5xx, ``Action: failed``), temporary, or unknown.
    permanent: bool | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; ``kind`` and ``reason`` are their string values."""
        return {
            "kind": self.kind.value,
            "reason": self.reason.value,
            "recipient": self.recipient,
            "status": self.status,
            "diagnostic": self.diagnostic,
            "explanation": self.explanation,
            "smtp_code": self.smtp_code,
            "message_id": self.message_id,
            "feedback_type": self.feedback_type,
            "permanent": self.permanent,
        }
