"""Mailchimp Transactional's message-event webhook: ``POST /hooks/mailchimp/events``.

Mailchimp posts a form with one field, ``mandrill_events``: a JSON array of up to 1000 events.
It signs each request: ``X-Mandrill-Signature`` is the base64 HMAC-SHA1, keyed with the
webhook's key, of the webhook URL exactly as entered at Mailchimp followed by every POST field's
name and value, sorted by name. The URL is ``webhook_url`` (default: the server's ``base_url``
plus ``/hooks/mailchimp/events``). Mailchimp checks that the URL exists with a ``HEAD`` request
when the webhook is added; that answers 200.

A request is refused with 401, and nothing recorded, when the signature is missing or does not
verify, no key is configured, every event in it is older than ``webhook_max_age_seconds``, or
the same signed request came before within that window (the rejection path of
:class:`postwise.server.webhooks.SignedWebhookController`). Events older than that in a request with
fresh ones are skipped and counted as ``expired``. Event ids are remembered for the window too,
so an event Mailchimp sends again in another request is recorded once.

Mailchimp's ``_id`` names the *message*, so an event's id here is ``_id``, the event type and
``ts`` (and the URL for clicks): two opens of one message are two events.

What each event type does: docs/providers.md, "The webhook".
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

from litestar import head

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
    required_headers,
    required_secret,
)
from postwise_mailchimp.options import WEBHOOK_PATH, MailchimpOptions, parse_options
from postwise_mailchimp.provider import MESSAGE_ID_KEY

__all__ = [
    "SIGNATURE_HEADER",
    "MailchimpWebhookController",
    "map_event",
    "sign_request",
    "verify_signature",
]

SIGNATURE_HEADER = "X-Mandrill-Signature"
PROVIDER = "mailchimp"
EVENTS_FIELD = "mandrill_events"

_SMTP_CODE_RE = re.compile(r"(?:^|[;\s])([45]\d\d)[\s-]+([45]\.\d{1,3}\.\d{1,3})?")
#: Mailchimp reject reasons that mean it holds the address on its rejection list.
_REJECT_FEEDBACK = {
    "hard-bounce": Feedback("hard", diagnostic="rejected by Mailchimp: hard bounce"),
    "invalid": Feedback("hard", diagnostic="rejected by Mailchimp: invalid address"),
    "spam": Feedback(
        "complaint", feedback_type="abuse", diagnostic="rejected by Mailchimp: spam complaint"
    ),
}


def sign_request(key: str, url: str, params: Mapping[str, str]) -> str:
    """The ``X-Mandrill-Signature`` of a POST of ``params`` to ``url`` with webhook ``key``."""
    signed = url + "".join(name + params[name] for name in sorted(params))
    digest = hmac.new(key.encode(), signed.encode(), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def verify_signature(key: str, url: str, params: Mapping[str, str], signature: str) -> bool:
    """Whether ``signature`` is Mailchimp's signature of ``params`` posted to ``url``."""
    expected = sign_request(key, url, params)
    return hmac.compare_digest(expected.encode(), signature.strip().encode())


def webhook_url(options: MailchimpOptions, base_url: str) -> str:
    """The URL Mailchimp signs with: the configured one, else the server's own."""
    return options.webhook_url or base_url.rstrip("/") + WEBHOOK_PATH


def _smtp_reply(diag: str) -> tuple[int | None, str | None]:
    match = _SMTP_CODE_RE.search(diag)
    if match is None:
        return None, None
    return int(match.group(1)), match.group(2)


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _vendor_id(raw: Mapping[str, Any], message: Mapping[str, Any], kind: str, ts: int) -> str:
    message_ref = _text(raw.get("_id")) or _text(message.get("_id")) or ""
    parts = [message_ref, kind, str(ts)]
    if kind == "click" and isinstance(raw.get("url"), str):
        parts.append(hashlib.sha256(raw["url"].encode()).hexdigest()[:16])
    return ":".join(parts)


def map_event(raw: Any) -> MappedEvent | None:
    """What postwise does with one Mailchimp event; ``None`` when it is malformed.

    Sync events (rejection and allow-list changes) have no ``event`` field and come back
    ignored, as do inbound messages.
    """
    if not isinstance(raw, Mapping):
        return None
    kind = raw.get("event")
    if kind is None and isinstance(raw.get("type"), str):
        kind = "sync:" + raw["type"]
    ts = raw.get("ts")
    if not isinstance(kind, str) or type(ts) is not int or ts <= 0:
        return None
    message = raw.get("msg") if isinstance(raw.get("msg"), Mapping) else {}
    assert isinstance(message, Mapping)
    if not kind.startswith("sync:") and not (_text(raw.get("_id")) or _text(message.get("_id"))):
        return None
    metadata = message.get("metadata") if isinstance(message.get("metadata"), Mapping) else {}
    assert isinstance(metadata, Mapping)
    occurred_at = datetime.fromtimestamp(ts, UTC)
    base = MappedEvent(
        vendor_id=_vendor_id(raw, message, kind, ts),
        vendor_type=kind,
        occurred_at=occurred_at,
        message_id=clean_message_id(metadata.get(MESSAGE_ID_KEY)),
        recipient=_text(message.get("email")) or None,
    )
    properties: dict[str, Any] = {}
    if _text(message.get("_id")):
        properties["provider_message_id"] = message["_id"][:200]
    if kind in ("send", "delivered"):
        # One delivered event per message, whether Mailchimp reports send, delivered or both.
        return replace(
            base,
            vendor_id=f"{_text(message.get('_id')) or base.vendor_id}:delivered",
            publish="delivered",
            properties=properties,
        )
    if kind in ("open", "click"):
        recorded = engagement_properties(
            kind,
            properties,
            occurred_at=occurred_at,
            user_agent=_text(raw.get("user_agent")),
            ip=_text(raw.get("ip")),
            url=raw.get("url"),
        )
        return replace(base, publish=kind, properties=properties) if recorded else None
    if kind in ("hard_bounce", "soft_bounce"):
        diag = _text(message.get("diag")) or _text(message.get("bounce_description")) or ""
        code, status = _smtp_reply(diag)
        feedback = Feedback(
            "hard" if kind == "hard_bounce" else "soft",
            status=status,
            smtp_code=code,
            diagnostic=diag,
        )
        return replace(base, feedback=feedback)
    if kind == "spam":
        return replace(base, feedback=Feedback("complaint", feedback_type="abuse"))
    if kind == "unsub":
        return replace(base, publish="unsubscribe", properties=properties, unsubscribe=True)
    if kind == "reject":
        reject = message.get("reject") if isinstance(message.get("reject"), Mapping) else {}
        assert isinstance(reject, Mapping)
        reason = _text(reject.get("reason")) or _text(message.get("reject_reason")) or ""
        properties["reason"] = reason[:500]
        return replace(
            base,
            publish="dropped",
            properties=properties,
            feedback=_REJECT_FEEDBACK.get(reason),
            unsubscribe=reason == "unsub",
        )
    return base


class MailchimpWebhookController(SignedWebhookController):
    """The webhook endpoint; authenticates by Mailchimp's signature, not an API key."""

    path = "/hooks/mailchimp"
    source = PROVIDER

    @head("/events", security=[])
    async def exists(self) -> None:
        """Mailchimp checks the URL with HEAD before it adds the webhook."""

    def max_age(self, runtime: Runtime) -> float:
        return _options(runtime).webhook_max_age_seconds

    def verify(self, runtime: Runtime, request: WebhookRequest) -> Verified:
        """The POST fields, if Mailchimp signed them (its scheme signs no time: events' own
        times are checked against the window when they are processed)."""
        [signature] = required_headers(request, SIGNATURE_HEADER)
        options = _options(runtime)
        setting = "provider_options.mailchimp.webhook_key"
        key = required_secret(options.webhook_key.get_secret_value(), setting)
        try:
            params = dict(parse_qsl(request.body.decode("utf-8"), keep_blank_values=True))
        except UnicodeDecodeError:
            raise WebhookRejected(401, "the body is not a UTF-8 form") from None
        url = webhook_url(options, runtime.settings.base_url)
        if not verify_signature(key, url, params, signature):
            raise WebhookRejected(
                401,
                f"the signature does not verify for {url} with the configured key; the URL must "
                "be exactly the one entered at Mailchimp (set webhook_url when behind a proxy)",
            )
        return Verified(signature, payload=params)

    def process(self, runtime: Runtime, request: WebhookRequest, verified: Verified) -> Any:
        try:
            events = json.loads(verified.payload.get(EVENTS_FIELD, ""))
        except ValueError:
            raise WebhookRejected(400, f"the {EVENTS_FIELD} field is not JSON") from None
        if not isinstance(events, list):
            raise WebhookRejected(400, f"{EVENTS_FIELD} must be a JSON array of events")
        window = _options(runtime).webhook_max_age_seconds
        summary = record_raw_events(
            runtime, PROVIDER, events, map_event, remember_seconds=window, max_age=window
        )
        if summary.expired and summary.expired == summary.received:
            # Nothing was recorded: every event was older than the window.
            raise WebhookRejected(401, f"every event is older than {window} s; a possible replay")
        return summary.to_dict()


def _options(runtime: Runtime) -> MailchimpOptions:
    return parse_options(runtime.settings.provider_options.get(PROVIDER, {}))
