"""ESP JSON notifications get a reason from the ESP's own category and the remote server's words.

The payloads use the field names each ESP documents (SendGrid's Event Webhook reference,
Mailgun's webhook payloads, Postmark's bounce model in its official client, Amazon SES's
notification contents); the values are ours.
"""

from __future__ import annotations

import json

import pytest

from postwise.compliance.bounces import BounceKind, BounceReason, classify_message


def _mail(body: object, sender: str = "no-reply@notifications.example.com") -> bytes:
    return (
        f"From: {sender}\r\nTo: bounces@shop.example.com\r\nSubject: notification\r\n"
        f"Content-Type: application/json\r\n\r\n{json.dumps(body)}\r\n"
    ).encode()


@pytest.mark.parametrize(
    ("body", "kind", "reason", "recipient"),
    [
        (
            [
                {"email": "a@example.com", "event": "processed", "sg_event_id": "e1"},
                {
                    "email": "a@example.com",
                    "event": "bounce",
                    "type": "bounce",
                    "status": "5.1.1",
                    "reason": "550 5.1.1 The email account that you tried to reach does not exist",
                    "sg_event_id": "e2",
                },
            ],
            BounceKind.HARD,
            BounceReason.USER_UNKNOWN,
            "a@example.com",
        ),
        (
            [
                {
                    "email": "b@example.com",
                    "event": "bounce",
                    "type": "blocked",
                    "status": "5.7.1",
                    "reason": "550 5.7.1 Service unavailable; client [192.0.2.1] blocked "
                    "using Spamhaus",
                }
            ],
            BounceKind.BLOCK,
            BounceReason.BLOCKED,
            "b@example.com",
        ),
        (
            [{"email": "c@example.com", "event": "deferred", "response": "400 try again later"}],
            BounceKind.SOFT,
            BounceReason.RATE_LIMITED,
            "c@example.com",
        ),
        (
            [{"email": "d@example.com", "event": "dropped", "reason": "Unsubscribed Address"}],
            BounceKind.UNKNOWN,
            BounceReason.NOT_A_BOUNCE,
            "d@example.com",
        ),
        (
            {
                "signature": {"timestamp": "1", "token": "t", "signature": "s"},
                "event-data": {
                    "event": "failed",
                    "severity": "permanent",
                    "reason": "bounce",
                    "recipient": "e@example.com",
                    "delivery-status": {
                        "code": 550,
                        "message": "5.1.1 <e@example.com>: Recipient address rejected: "
                        "User unknown in virtual mailbox table",
                    },
                },
            },
            BounceKind.HARD,
            BounceReason.USER_UNKNOWN,
            "e@example.com",
        ),
        (
            {
                "event-data": {
                    "event": "failed",
                    "severity": "temporary",
                    "reason": "generic",
                    "recipient": "f@example.com",
                    "delivery-status": {"code": 452, "message": "4.2.2 Mailbox full"},
                }
            },
            BounceKind.SOFT,
            BounceReason.MAILBOX_FULL,
            "f@example.com",
        ),
        (
            {
                "RecordType": "Bounce",
                "Type": "HardBounce",
                "TypeCode": 1,
                "Email": "g@example.com",
                "Description": "The server was unable to deliver your message",
                "Details": "smtp;550 5.1.1 The email account that you tried to reach does "
                "not exist.",
            },
            BounceKind.HARD,
            BounceReason.USER_UNKNOWN,
            "g@example.com",
        ),
        (
            {
                "RecordType": "Bounce",
                "Type": "HardBounce",
                "TypeCode": 1,
                "Email": "h@example.com",
                "Details": "smtp;550 5.7.1 Message rejected due to DMARC policy",
            },
            BounceKind.BLOCK,
            BounceReason.POLICY,
            "h@example.com",
        ),
        (
            {
                "RecordType": "Bounce",
                "Type": "SpamComplaint",
                "TypeCode": 512,
                "Email": "i@example.com",
            },
            BounceKind.COMPLAINT,
            BounceReason.FEEDBACK,
            "i@example.com",
        ),
        (
            {
                "notificationType": "Bounce",
                "bounce": {
                    "bounceType": "Permanent",
                    "bounceSubType": "General",
                    "bouncedRecipients": [
                        {
                            "emailAddress": "j@example.com",
                            "status": "5.7.1",
                            "diagnosticCode": "smtp; 550 5.7.1 Client host rejected: "
                            "cannot find your reverse hostname",
                        }
                    ],
                },
                "mail": {"headers": []},
            },
            BounceKind.BLOCK,
            BounceReason.BLOCKED,
            "j@example.com",
        ),
    ],
)
def test_esp_notifications_are_classified_by_reason(
    body: object, kind: BounceKind, reason: BounceReason, recipient: str
) -> None:
    result = classify_message(_mail(body))
    assert (result.kind, result.reason, result.recipient) == (kind, reason, recipient), (
        result.explanation
    )


def test_a_permanent_ses_bounce_for_a_sender_side_reason_is_never_hard() -> None:
    # SES reports an RBL refusal as "Permanent": the words decide, not the ESP's permanence.
    body = {
        "notificationType": "Bounce",
        "bounce": {
            "bounceType": "Permanent",
            "bounceSubType": "General",
            "bouncedRecipients": [
                {
                    "emailAddress": "k@example.com",
                    "diagnosticCode": "smtp; 554 5.7.1 Service unavailable; Client host "
                    "[192.0.2.9] blocked using zen.spamhaus.org",
                }
            ],
        },
    }
    result = classify_message(_mail(body))
    assert result.kind is BounceKind.BLOCK
