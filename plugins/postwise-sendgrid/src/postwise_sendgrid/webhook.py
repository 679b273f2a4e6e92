"""SendGrid's Signed Event Webhook: ``POST /hooks/sendgrid/events``.

SendGrid posts a JSON array of events and signs each request with ECDSA (P-256, SHA-256) over
the bytes of ``X-Twilio-Email-Event-Webhook-Timestamp`` followed by the raw body; the base64
DER signature is in ``X-Twilio-Email-Event-Webhook-Signature``. The verification key is the
public key SendGrid shows when signing is switched on (``webhook_public_key``).

A request is refused with 401, and nothing recorded, when the headers are missing, the signature
does not verify, no key is configured, the timestamp is older than ``webhook_max_age_seconds``
or more than five minutes ahead, or the same signed request came before (the replay window and
rejection path of :class:`postwise.server.webhooks.SignedWebhookController`). Event ids are
remembered for that window too, so an event SendGrid sends again in a new request is recorded
once.

Events and what postwise does with them:

=====================================  ============================================================
``delivered``                          ``delivered`` event
``open``                               ``open`` event; ``sg_machine_open`` or the user agent flag
                                       machine opens
``click``                              ``click`` event with the URL; scanner clicks flagged
``bounce`` (``type`` bounce/blocked)   compliance: hard/soft from the SMTP reply, ``block`` for
                                       blocked and reputation/content classifications
``dropped``                            ``dropped`` event; a dropped bounced, invalid, spam-reported
                                       or unsubscribed address is also handed to compliance
``spamreport``                         compliance: complaint
``unsubscribe``, ``group_unsubscribe``  unsubscribe and an ``unsubscribe`` event
``processed``, ``deferred``, others    nothing (postwise records ``sent`` itself)
=====================================  ============================================================
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
import re
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_der_public_key, load_pem_public_key

from postwise.delivery.provider_events import (
    Feedback,
    MappedEvent,
    WebhookSummary,
    clean_message_id,
    engagement_properties,
    record_events,
)
from postwise.errors import ConfigurationError
from postwise.runtime import Runtime
from postwise.server.webhooks import (
    SignedWebhookController,
    Verified,
    WebhookRejected,
    WebhookRequest,
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
#: How far ahead of this server's clock a timestamp may be.
FUTURE_TOLERANCE_SECONDS = 300

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


@functools.lru_cache(maxsize=8)
def load_public_key(text: str) -> ec.EllipticCurvePublicKey:
    """The verification key from SendGrid's base64 DER form (or PEM).

    Raises ConfigurationError when ``text`` is not an elliptic-curve public key.
    """
    cleaned = text.strip()
    try:
        if cleaned.startswith("-----BEGIN"):
            key = load_pem_public_key(cleaned.encode())
        else:
            key = load_der_public_key(base64.b64decode("".join(cleaned.split()), validate=True))
    except (ValueError, binascii.Error, UnsupportedAlgorithm) as exc:
        raise ConfigurationError(
            "provider_options.sendgrid.webhook_public_key is not a public key: paste the "
            f"verification key SendGrid shows for the signed Event Webhook ({exc})"
        ) from None
    if not isinstance(key, ec.EllipticCurvePublicKey):
        raise ConfigurationError(
            "provider_options.sendgrid.webhook_public_key is not an elliptic-curve key"
        )
    return key


def verify_signature(
    key: ec.EllipticCurvePublicKey, payload: bytes, signature: str, timestamp: str
) -> bool:
    """Whether ``signature`` (base64 DER ECDSA) signs ``timestamp`` + ``payload`` with ``key``."""
    try:
        decoded = base64.b64decode(signature.strip(), validate=True)
        key.verify(decoded, timestamp.encode() + payload, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError, binascii.Error):
        return False
    return True


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


def handle_events(runtime: Any, options: SendGridOptions, payload: Any) -> WebhookSummary:
    """Map and record a verified request's events."""
    if not isinstance(payload, list):
        raise WebhookRejected(400, "the body must be a JSON array of events")
    summary = WebhookSummary(received=len(payload))
    mapped = []
    for raw in payload:
        event = map_event(raw)
        if event is None:
            summary.invalid += 1
        else:
            mapped.append(event)
    return record_events(
        runtime, PROVIDER, mapped, remember_seconds=options.webhook_max_age_seconds, summary=summary
    )


class SendGridWebhookController(SignedWebhookController):
    """The Event Webhook endpoint; authenticates by SendGrid's signature, not an API key."""

    path = "/hooks/sendgrid"
    source = PROVIDER
    future_tolerance_seconds = FUTURE_TOLERANCE_SECONDS

    def max_age(self, runtime: Runtime) -> float:
        return _options(runtime).webhook_max_age_seconds

    def verify(self, runtime: Runtime, request: WebhookRequest) -> Verified:
        signature, timestamp = request.header(SIGNATURE_HEADER), request.header(TIMESTAMP_HEADER)
        if not signature or not timestamp:
            raise WebhookRejected(
                401, f"unsigned request: {SIGNATURE_HEADER} and {TIMESTAMP_HEADER} are required"
            )
        options = _options(runtime)
        if not options.webhook_public_key:
            raise WebhookRejected(
                401,
                "signature verification is not configured: set provider_options.sendgrid."
                "webhook_public_key to the signed Event Webhook's verification key",
            )
        key = load_public_key(options.webhook_public_key)
        if not verify_signature(key, request.body, signature, timestamp):
            raise WebhookRejected(401, "the signature does not verify with the configured key")
        if not timestamp.isdigit():
            raise WebhookRejected(401, f"{TIMESTAMP_HEADER} is not a Unix time")
        return Verified(signature, signed_at=float(timestamp))

    def process(self, runtime: Runtime, request: WebhookRequest, verified: Verified) -> Any:
        try:
            payload = json.loads(request.body)
        except ValueError:
            raise WebhookRejected(400, "the body is not JSON") from None
        return handle_events(runtime, _options(runtime), payload).to_dict()


def _options(runtime: Runtime) -> SendGridOptions:
    return parse_options(runtime.settings.provider_options.get(PROVIDER, {}))
