"""JSON notifications from ESPs, as delivered by e-mail or posted to a webhook.

Recognised bodies: Amazon SES (directly, or wrapped by SNS's ``email-json`` protocol), SendGrid
event arrays, Mailgun webhook events (``event-data``), Postmark bounce webhooks. Each ESP's own
bounce type is mapped to a reason, and the remote server's words (when the ESP passes them on)
are read like any other diagnostic, so a "Permanent" SES bounce for an RBL listing is a block,
not a hard bounce.
"""

from __future__ import annotations

import json
from typing import Any

from postwise.compliance.bounces.mime import clean
from postwise.compliance.bounces.model import BounceClassification
from postwise.compliance.bounces.reasons import BounceKind, BounceReason, kind_for
from postwise.compliance.bounces.status import REPLY_CODE_RE, parse_status
from postwise.compliance.bounces.wording import decide, reason_from_text
from postwise.compliance.feedback import POSTWISE_MESSAGE_ID_HEADER, find_address

__all__ = ["classify_json_notification"]

_MAX_JSON_CHARS = 1024 * 1024
_R = BounceReason

# ESP-assigned categories that name a reason outright (the diagnostic may still refine it).
_SES_SUBTYPES = {
    "NoEmail": _R.USER_UNKNOWN,
    "Suppressed": _R.USER_UNKNOWN,
    "OnAccountSuppressionList": _R.USER_UNKNOWN,
    "MailboxFull": _R.MAILBOX_FULL,
    "MessageTooLarge": _R.MESSAGE_TOO_BIG,
    "ContentRejected": _R.SPAM_DETECTED,
    "AttachmentRejected": _R.CONTENT_ERROR,
}
# SendGrid's "dropped" reasons (its own lists): only a bounced or invalid address condemns it.
_SENDGRID_DROPPED = {
    "bounced address": _R.USER_UNKNOWN,
    "invalid": _R.USER_UNKNOWN,
    "invalid smtpapi header": _R.SYNTAX_ERROR,
    "spam reporting address": _R.FEEDBACK,
    "unsubscribed address": _R.NOT_A_BOUNCE,
    "spam content (if spam checker app enabled)": _R.SPAM_DETECTED,
}
_SENDGRID_FAILURES = frozenset({"bounce", "dropped", "spamreport", "deferred", "blocked"})
_POSTMARK_TYPES = {
    "HardBounce": (_R.USER_UNKNOWN, True),
    "SoftBounce": (_R.UNDETERMINED, False),
    "Transient": (_R.UNDETERMINED, False),
    "DnsError": (_R.NETWORK_ERROR, False),
    "SpamNotification": (_R.SPAM_DETECTED, True),
    "SpamComplaint": (_R.FEEDBACK, True),
    "AutoResponder": (_R.AUTO_REPLY, None),
    "AddressChange": (_R.HAS_MOVED, True),
    "BadEmailAddress": (_R.USER_UNKNOWN, True),
    "ManuallyDeactivated": (_R.UNDETERMINED, True),
    "Unconfirmed": (_R.UNDETERMINED, None),
    "Blocked": (_R.BLOCKED, True),
    "SMTPApiError": (_R.SYNTAX_ERROR, True),
    "InboundError": (_R.SYSTEM_ERROR, True),
    "DMARCPolicy": (_R.POLICY, True),
    "TemplateRenderingFailed": (_R.CONTENT_ERROR, True),
    "ChallengeVerification": (_R.AUTO_REPLY, None),
    "VirusNotification": (_R.VIRUS_DETECTED, True),
    "OpenRelayTest": (_R.NOT_A_BOUNCE, None),
    "Unknown": (_R.UNDETERMINED, None),
}


def classify_json_notification(text: str) -> BounceClassification | None:
    """Classify an ESP's JSON event in ``text``; ``None`` when the text holds none."""
    start = text.find("{")
    bracket = text.find("[")
    if bracket != -1 and (start == -1 or bracket < start):
        start = bracket
    if start == -1:
        return None
    try:
        data, _ = json.JSONDecoder().raw_decode(text[start : start + _MAX_JSON_CHARS])
    except (ValueError, RecursionError):
        return None
    if isinstance(data, list):
        events = [e for e in data if isinstance(e, dict)]
        failures = [e for e in events if e.get("event") in _SENDGRID_FAILURES]
        chosen = failures or events
        data = chosen[0] if chosen else None
    if not isinstance(data, dict):
        return None
    if isinstance(data.get("Message"), str) and "Type" in data:
        # The SNS "email-json" protocol wraps the SES notification as a JSON string.
        try:
            data = json.loads(data["Message"])
        except ValueError:
            return None
        if not isinstance(data, dict):
            return None
    if {"notificationType", "eventType"} & data.keys():
        return _ses(data)
    if isinstance(data.get("event-data"), dict):
        return _mailgun(data["event-data"])
    if "RecordType" in data or ("Type" in data and "TypeCode" in data):
        return _postmark(data)
    if "event" in data and "email" in data:
        return _sendgrid(data)
    return None


def _from_diagnostic(
    esp: str,
    recipient: str | None,
    diagnostic: str,
    permanent: bool | None,
    category: BounceReason | None,
    *,
    status: str | None = None,
    message_id: str | None = None,
) -> BounceClassification:
    """A verdict from the remote words when they say why, else from the ESP's category."""
    status = status or parse_status(diagnostic)
    reply = REPLY_CODE_RE.match(diagnostic)
    if reason_from_text(diagnostic) is None and category is not None:
        reason = category
        kind = kind_for(reason, permanent)
        explanation = f"{esp}: the ESP's category says {reason.value}"
    else:
        reason, kind, explanation = decide(permanent, status, diagnostic)
        explanation = f"{esp}: {explanation}"
    return BounceClassification(
        kind=kind,
        reason=reason,
        recipient=recipient,
        status=status,
        diagnostic=clean(diagnostic),
        explanation=explanation,
        smtp_code=int(reply.group(1)) if reply else None,
        message_id=message_id,
        permanent=permanent,
    )


def _complaint(recipient: str | None, explanation: str) -> BounceClassification:
    return BounceClassification(
        kind=BounceKind.COMPLAINT,
        reason=BounceReason.FEEDBACK,
        recipient=recipient,
        feedback_type="abuse",
        explanation=explanation,
    )


def _delivered(recipient: str | None, explanation: str) -> BounceClassification:
    return BounceClassification(
        kind=BounceKind.UNKNOWN,
        reason=BounceReason.DELIVERED,
        recipient=recipient,
        explanation=explanation,
    )


def _ses(data: dict[str, Any]) -> BounceClassification:
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
            reason=BounceReason.FEEDBACK,
            recipient=find_address(str(people[0].get("emailAddress", ""))),
            message_id=message_id,
            feedback_type=feedback_type,
            explanation=f"Amazon SES complaint notification ({feedback_type})",
        )
    if kind_name == "Delivery":
        recipients = (data.get("delivery") or {}).get("recipients") or [""]
        return BounceClassification(
            kind=BounceKind.UNKNOWN,
            reason=BounceReason.DELIVERED,
            recipient=find_address(str(recipients[0])),
            message_id=message_id,
            explanation="Amazon SES delivery notification: not a failure",
        )
    if kind_name != "Bounce" or not isinstance(data.get("bounce"), dict):
        return BounceClassification(
            kind=BounceKind.UNKNOWN,
            reason=BounceReason.NOT_A_BOUNCE,
            message_id=message_id,
            explanation=f"Amazon SES notification of type {kind_name!r} is not a bounce",
        )
    bounce = data["bounce"]
    first = (bounce.get("bouncedRecipients") or [{}])[0]
    raw_diagnostic = str(first.get("diagnosticCode") or "")
    diagnostic = raw_diagnostic.partition(";")[2].strip() or raw_diagnostic
    bounce_type = str(bounce.get("bounceType") or "")
    permanent = {"Permanent": True, "Transient": False}.get(bounce_type)
    sub_type = str(bounce.get("bounceSubType") or "")
    category = _SES_SUBTYPES.get(sub_type)
    if category is None and bounce_type == "Permanent" and sub_type == "General":
        category = _R.UNDETERMINED
    return _from_diagnostic(
        f"Amazon SES {bounce_type.lower() or 'undetermined'} bounce ({sub_type or 'no subtype'})",
        find_address(str(first.get("emailAddress", ""))),
        diagnostic,
        permanent,
        category,
        status=parse_status(str(first.get("status") or "")),
        message_id=message_id,
    )


def _mailgun(event: dict[str, Any]) -> BounceClassification | None:
    name = str(event.get("event") or "")
    recipient = find_address(str(event.get("recipient") or ""))
    if name == "complained":
        return _complaint(recipient, "Mailgun complaint event")
    if name in {"delivered", "accepted", "opened", "clicked"}:
        return _delivered(recipient, f"Mailgun {name} event: not a failure")
    if name not in {"failed", "bounced", "dropped"}:
        return None
    found = event.get("delivery-status")
    status: dict[str, Any] = found if isinstance(found, dict) else {}
    message = str(status.get("message") or status.get("description") or "")
    code = status.get("code")
    severity = str(event.get("severity") or "")
    permanent = {"permanent": True, "temporary": False}.get(severity)
    reason_field = str(event.get("reason") or "")
    category = {
        "suppress-bounce": _R.USER_UNKNOWN,
        "suppress-complaint": _R.FEEDBACK,
        "suppress-unsubscribe": _R.NOT_A_BOUNCE,
        "old": _R.EXPIRED,
    }.get(reason_field)
    diagnostic = f"{code} {message}".strip() if isinstance(code, int) else message
    return _from_diagnostic(
        f"Mailgun {name} event ({severity or 'no severity'})",
        recipient,
        diagnostic,
        permanent,
        category,
    )


def _postmark(data: dict[str, Any]) -> BounceClassification | None:
    if data.get("RecordType") not in {None, "Bounce", "SpamComplaint"}:
        return None
    recipient = find_address(str(data.get("Email") or ""))
    type_name = str(data.get("Type") or "Unknown")
    category, permanent = _POSTMARK_TYPES.get(type_name, (_R.UNDETERMINED, None))
    if category is BounceReason.FEEDBACK:
        return BounceClassification(
            kind=BounceKind.COMPLAINT,
            reason=category,
            recipient=recipient,
            feedback_type="abuse",
            explanation="Postmark spam complaint",
        )
    if category in {BounceReason.AUTO_REPLY, BounceReason.NOT_A_BOUNCE}:
        return BounceClassification(
            kind=kind_for(category, None),
            reason=category,
            recipient=recipient,
            explanation=f"Postmark {type_name}: not a bounce",
        )
    details = str(data.get("Details") or data.get("Description") or "")
    return _from_diagnostic(f"Postmark {type_name}", recipient, details, permanent, category)


def _sendgrid(data: dict[str, Any]) -> BounceClassification | None:
    name = str(data.get("event") or "")
    recipient = find_address(str(data.get("email") or ""))
    if name == "spamreport":
        return _complaint(recipient, "SendGrid spam report")
    if name in {"delivered", "processed", "open", "click"}:
        return _delivered(recipient, f"SendGrid {name} event: not a failure")
    if name not in {"bounce", "dropped", "deferred", "blocked"}:
        return None
    diagnostic = str(data.get("reason") or data.get("response") or "")
    status = parse_status(str(data.get("status") or ""))
    bounce_type = str(data.get("type") or "").lower()
    permanent = name != "deferred"
    if name == "dropped":
        # SendGrid did not send: its reason names its own suppression list, not a reply.
        dropped = _SENDGRID_DROPPED.get(diagnostic.strip().lower(), _R.UNDETERMINED)
        return BounceClassification(
            kind=kind_for(dropped, True),
            reason=dropped,
            recipient=recipient,
            diagnostic=clean(diagnostic),
            explanation=f"SendGrid dropped the message ({diagnostic or 'no reason given'})",
            permanent=True,
        )
    category = _R.BLOCKED if "blocked" in {name, bounce_type} else None
    return _from_diagnostic(
        f"SendGrid {name} event", recipient, diagnostic, permanent, category, status=status
    )
