"""SendGrid's Signed Event Webhook: ``POST /hooks/sendgrid/events``, on the kit's
:class:`~postwise.server.webhooks.SignedWebhookController`.

SendGrid signs each request with ECDSA (P-256, SHA-256) over the bytes of
``X-Twilio-Email-Event-Webhook-Timestamp`` followed by the raw body; the base64 DER signature
is in ``X-Twilio-Email-Event-Webhook-Signature``, the verification key is ``webhook_public_key``.
Unsigned, forged, stale (``webhook_max_age_seconds``) or replayed requests get 401 and nothing
is recorded. What each event type does: docs/providers.md, "SendGrid's events".
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec

from postwise.delivery.provider_events import (
    Feedback,
    MappedEvent,
    clean_message_id,
    engagement_properties,
    record_raw_events,
)
from postwise.runtime import Runtime
from postwise.server.webhooks import (
    SignedWebhookController,
    Verified,
    WebhookRejected,
    WebhookRequest,
    json_body,
    load_ec_public_key,
    required_headers,
    required_secret,
    verify_ecdsa_sha256,
)
from postwise_sendgrid.convert import MESSAGE_ID_ARG
from postwise_sendgrid.options import SendGridOptions, parse_options

__all__ = [
    "SIGNATURE_HEADER",
    "TIMESTAMP_HEADER",
    "SendGridWebhookController",
    "load_public_key",
    "map_event",
    "verify_signature",
]

SIGNATURE_HEADER = "X-Twilio-Email-Event-Webhook-Signature"
TIMESTAMP_HEADER = "X-Twilio-Email-Event-Webhook-Timestamp"
PROVIDER = "sendgrid"

_SMTP_CODE_RE = re.compile(r"^\s*([45]\d\d)\b")
_BLOCK_CLASSIFICATIONS = frozenset({"reputation", "content", "frequency or volume"})
#: ``dropped`` reasons that mean SendGrid holds the address on one of its suppression lists.
_DROPPED_FEEDBACK = {
    "bounced address": Feedback("hard", diagnostic="dropped by SendGrid: bounced address"),
    "invalid": Feedback("hard", diagnostic="dropped by SendGrid: invalid address"),
    "spam reporting address": Feedback(
        "complaint", feedback_type="abuse", diagnostic="dropped by SendGrid: spam report"
    ),
}


def load_public_key(text: str) -> ec.EllipticCurvePublicKey:
    """The verification key from SendGrid's base64 DER form (or PEM)."""
    return load_ec_public_key(text, "provider_options.sendgrid.webhook_public_key")


def verify_signature(
    key: ec.EllipticCurvePublicKey, payload: bytes, signature: str, timestamp: str
) -> bool:
    """Whether ``signature`` (base64 DER ECDSA) signs ``timestamp`` + ``payload`` with ``key``."""
    return verify_ecdsa_sha256(key, timestamp.encode() + payload, signature)


def _smtp_code(reason: str) -> int | None:
    match = _SMTP_CODE_RE.match(reason)
    return int(match.group(1)) if match else None


def _bounce_feedback(raw: Mapping[str, Any]) -> Feedback:
    reason = str(raw.get("reason") or "")
    status = raw.get("status") if isinstance(raw.get("status"), str) else None
    code = _smtp_code(reason)
    classification = str(raw.get("bounce_classification") or "").strip().lower()
    if raw.get("type") == "blocked" or classification in _BLOCK_CLASSIFICATIONS:
        kind: str | None = "block"
    elif classification == "invalid address":
        kind = "hard"
    elif code is None and not status:
        # SendGrid reports a bounce only for a permanent refusal; without a reply to classify,
        # its word is what there is.
        kind = "hard"
    else:
        kind = None
    return Feedback(kind, status=status, smtp_code=code, diagnostic=reason)


def map_event(raw: Any) -> MappedEvent | None:
    """What postwise does with one SendGrid event; ``None`` when it is malformed."""
    if not isinstance(raw, Mapping):
        return None
    vendor_id, vendor_type, stamp = raw.get("sg_event_id"), raw.get("event"), raw.get("timestamp")
    if not isinstance(vendor_id, str) or not vendor_id.strip() or not isinstance(vendor_type, str):
        return None
    if type(stamp) is not int or stamp <= 0:
        return None
    occurred_at = datetime.fromtimestamp(stamp, UTC)
    email = raw.get("email")
    base = MappedEvent(
        vendor_id=vendor_id,
        vendor_type=vendor_type,
        occurred_at=occurred_at,
        message_id=clean_message_id(raw.get(MESSAGE_ID_ARG)),
        recipient=email if isinstance(email, str) and email else None,
    )
    properties: dict[str, Any] = {}
    if isinstance(raw.get("sg_message_id"), str):
        properties["provider_message_id"] = raw["sg_message_id"][:200]
    if vendor_type == "delivered":
        return replace(base, publish="delivered", properties=properties)
    if vendor_type in ("open", "click"):
        recorded = engagement_properties(
            vendor_type,
            properties,
            occurred_at=occurred_at,
            user_agent=_text(raw.get("useragent")),
            ip=_text(raw.get("ip")),
            url=raw.get("url"),
            # SendGrid says itself when Apple Mail Privacy Protection opened the message.
            machine="apple_mpp" if raw.get("sg_machine_open") is True else None,
        )
        return replace(base, publish=vendor_type, properties=properties) if recorded else None
    if vendor_type == "bounce":
        return replace(base, feedback=_bounce_feedback(raw))
    if vendor_type == "dropped":
        reason = str(raw.get("reason") or "")
        properties["reason"] = reason[:500]
        lowered = reason.strip().lower()
        return replace(
            base,
            publish="dropped",
            properties=properties,
            feedback=_DROPPED_FEEDBACK.get(lowered),
            unsubscribe=lowered == "unsubscribed address",
        )
    if vendor_type == "spamreport":
        return replace(base, feedback=Feedback("complaint", feedback_type="abuse"))
    if vendor_type in ("unsubscribe", "group_unsubscribe"):
        if vendor_type == "group_unsubscribe" and raw.get("asm_group_id") is not None:
            properties["asm_group_id"] = raw.get("asm_group_id")
        return replace(base, publish="unsubscribe", properties=properties, unsubscribe=True)
    return base


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


class SendGridWebhookController(SignedWebhookController):
    """The Event Webhook endpoint; authenticates by SendGrid's signature, not an API key."""

    path = "/hooks/sendgrid"
    source = PROVIDER

    def max_age(self, runtime: Runtime) -> float:
        return _options(runtime).webhook_max_age_seconds

    def verify(self, runtime: Runtime, request: WebhookRequest) -> Verified:
        signature, timestamp = required_headers(request, SIGNATURE_HEADER, TIMESTAMP_HEADER)
        setting = "provider_options.sendgrid.webhook_public_key"
        key = load_public_key(required_secret(_options(runtime).webhook_public_key, setting))
        if not verify_signature(key, request.body, signature, timestamp) or not timestamp.isdigit():
            raise WebhookRejected(401, "the signature does not verify with the configured key")
        return Verified(signature, signed_at=float(timestamp))

    def process(self, runtime: Runtime, request: WebhookRequest, verified: Verified) -> Any:
        remember = _options(runtime).webhook_max_age_seconds
        events = json_body(request, array=True)
        return record_raw_events(
            runtime, PROVIDER, events, map_event, remember_seconds=remember
        ).to_dict()


def _options(runtime: Runtime) -> SendGridOptions:
    return parse_options(runtime.settings.provider_options.get(PROVIDER, {}))
