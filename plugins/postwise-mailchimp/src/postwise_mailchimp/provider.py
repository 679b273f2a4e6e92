"""The ``mailchimp`` provider: each message one ``messages/send-raw`` call over pooled
connections.

``send-raw`` takes the MIME document as it is, so the message goes out as postwise rendered and
DKIM-signed it. Mailchimp's control headers are added in front (:func:`control_headers`; added
headers are not among the signed ones, so the DKIM signature stays valid, and Mailchimp strips
them before delivery): ``X-MC-Metadata`` with postwise's message id (``postwise_message_id``)
first and as much of the message's metadata as fits 200 bytes, so the ledger link that every
webhook event carries back as ``msg.metadata`` is never lost; ``X-MC-Tags`` with the configured
tags and the message's stream; ``X-MC-Track: none``, so Mailchimp does not track opens and
clicks that postwise tracks itself.

What each answer means (a rejection's ``reject_reason`` gives ``bounce_kind``; errors come
with HTTP 500 whatever their cause, so they are classified by ``name``): docs/providers.md,
"What Mailchimp's answers mean".

The API key travels in the JSON body, as the API requires; bodies are never logged.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import httpx

from postwise import __version__ as postwise_version
from postwise.delivery.http import (
    MAX_REASON,
    HttpApiProvider,
    Verdict,
    rate_limited,
    retry_after_seconds,
)
from postwise.delivery.provider import BounceKind, Outcome, OutgoingMessage, SendResult
from postwise_mailchimp.options import MailchimpOptions

__all__ = [
    "MESSAGE_ID_KEY",
    "METADATA_HEADER",
    "SEND_RAW_PATH",
    "MailchimpProvider",
    "classify_response",
    "control_headers",
    "metadata_header",
]

#: As the vendor's client calls it: the method path plus the output format.
SEND_RAW_PATH = "/messages/send-raw.json"
METADATA_HEADER = "X-MC-Metadata"
TAGS_HEADER = "X-MC-Tags"
TRACK_HEADER = "X-MC-Track"
#: Bytes of JSON metadata a message may carry (Mailchimp documents 250; 200 keeps room).
METADATA_LIMIT = 200
#: The metadata key carrying postwise's message id (the ledger key).
MESSAGE_ID_KEY = "postwise_message_id"
SERVICE = "Mailchimp Transactional"
_ACCEPTED_STATUSES = frozenset({"sent", "queued", "scheduled"})
_CONFIGURATION_ERRORS = frozenset({"Invalid_Key", "PaymentRequired", "Unknown_Subaccount"})
_HALTING_STATUSES = {401: "unauthorised", 403: "forbidden", 404: "no such endpoint"}
#: Reject reasons that are Mailchimp's verdict on the address.
_BOUNCE_KINDS = {
    "hard-bounce": BounceKind.HARD,
    "invalid": BounceKind.HARD,
    "soft-bounce": BounceKind.SOFT,
    "spam": BounceKind.COMPLAINT,
}
#: Reject reasons about the account's configuration, which the operator can fix; ``True``: the
#: rest of the batch would be rejected the same way.
_CONFIGURATION_REJECTS = {"unsigned": False, "test-mode-limit": True}
#: What the other documented reasons mean, for the dead letter's reason.
_REJECT_MEANINGS = {
    "unsub": "the recipient unsubscribed at Mailchimp",
    "custom": "the address is on the account's own rejection denylist",
    "rule": "a rule of the account rejected it",
    "invalid-sender": "the sender address is not valid",
    "unsigned": "the sending domain is not verified (DKIM/SPF) in Mailchimp",
    "test-mode-limit": "the test-mode key's sending limit is reached",
}


def metadata_header(message: OutgoingMessage, limit: int = METADATA_LIMIT) -> str:
    """``X-MC-Metadata``: the ledger id first, then as much of the metadata as fits ``limit``
    bytes of JSON (Mailchimp's limit); what does not fit is left out, the ledger id never."""
    metadata = {MESSAGE_ID_KEY: message.message_id}
    for key, value in message.metadata.items():
        candidate = {**metadata, f"postwise_{key}": str(value)}
        if len(_compact(candidate)) <= limit:
            metadata = candidate
    value = _compact(metadata)
    if len(value) > limit:
        raise ValueError(f"the message id alone takes {len(value)} bytes of metadata; {limit} fit")
    return value


def _compact(metadata: dict[str, str]) -> str:
    # ensure_ascii keeps the header 7-bit; separators keep it short.
    return json.dumps(metadata, separators=(",", ":"), ensure_ascii=True)


def control_headers(message: OutgoingMessage, options: MailchimpOptions) -> bytes:
    """Mailchimp's ``X-MC-*`` headers, put in front of the message: metadata, tags and, unless
    ``vendor_tracking``, open and click tracking switched off (postwise tracks them itself;
    both would count every open twice)."""
    headers = [f"{METADATA_HEADER}: {metadata_header(message)}"]
    stream = message.metadata.get("stream", "")
    tags = list(dict.fromkeys([*options.tags, *([stream] if stream else [])]))
    if tags:
        headers.append(f"{TAGS_HEADER}: {','.join(tags)}")
    if not options.vendor_tracking:
        headers.append(f"{TRACK_HEADER}: none")
    return "".join(f"{line}\r\n" for line in headers).encode("ascii")


def _rejected(message_id: str, status: int, why: str, provider_id: str | None) -> Verdict:
    meaning = _REJECT_MEANINGS.get(why)
    reason = f"rejected by {SERVICE}: {why or 'no reason given'}"
    if meaning:
        reason += f" ({meaning})"
    kind = _BOUNCE_KINDS.get(why)
    if kind is not None:
        outcome = Outcome.PERMANENT
    elif why in _CONFIGURATION_REJECTS:
        outcome = Outcome.TRANSIENT
    else:
        outcome = Outcome.FAILED
    result = SendResult(
        message_id,
        outcome,
        reason=reason,
        provider_message_id=provider_id,
        http_status=status,
        bounce_kind=kind,
    )
    return Verdict(result, halt=_CONFIGURATION_REJECTS.get(why, False))


def _recipient_result(message_id: str, recipient: str, status: int, entries: list[Any]) -> Verdict:
    wanted = recipient.lower()
    entry = next(
        (e for e in entries if isinstance(e, dict) and str(e.get("email", "")).lower() == wanted),
        entries[0] if entries and isinstance(entries[0], dict) else None,
    )
    if entry is None:
        # A 2xx means the request was taken: without a result to say otherwise, the message
        # may be on its way, and sending it again could deliver it twice.
        reason = f"{SERVICE} answered without a result for the recipient; it may have been sent"
        return Verdict(SendResult(message_id, Outcome.UNKNOWN, reason=reason, http_status=status))
    state = str(entry.get("status") or "")
    provider_id = entry.get("_id") if isinstance(entry.get("_id"), str) else None
    if state in _ACCEPTED_STATUSES:
        result = SendResult(
            message_id, Outcome.ACCEPTED, http_status=status, provider_message_id=provider_id
        )
        return Verdict(result)
    if state == "rejected":
        return _rejected(message_id, status, str(entry.get("reject_reason") or ""), provider_id)
    if state == "invalid":
        result = SendResult(
            message_id,
            Outcome.PERMANENT,
            reason=f"{SERVICE} says the recipient address is invalid",
            provider_message_id=provider_id,
            http_status=status,
            bounce_kind=BounceKind.HARD,
        )
        return Verdict(result)
    reason = f"{SERVICE} answered with the unknown status {state!r}; it may have been accepted"
    return Verdict(
        SendResult(
            message_id,
            Outcome.UNKNOWN,
            reason=reason[:MAX_REASON],
            provider_message_id=provider_id,
            http_status=status,
        )
    )


def classify_response(
    message_id: str, recipient: str, status: int, headers: Mapping[str, str], body: bytes
) -> Verdict:
    """The outcome of one send-raw response (see the module docs)."""
    try:
        data: Any = json.loads(body)
    except ValueError:
        data = None
    if 200 <= status < 300:
        if isinstance(data, list):
            return _recipient_result(message_id, recipient, status, data)
        # Taken (2xx), but the answer cannot be read (cut short, rewritten by a proxy): the
        # message may be on its way, so it is in doubt rather than sent again.
        reason = (
            f"{SERVICE} took the request (HTTP {status}) but its answer cannot be read: "
            f"{body[:120].decode('utf-8', 'replace')!r}; it may have been sent"
        )
        return Verdict(
            SendResult(message_id, Outcome.UNKNOWN, reason=reason[:MAX_REASON], http_status=status)
        )
    if status == 429:
        return rate_limited(message_id, status, headers, service=SERVICE)
    name = message = ""
    if isinstance(data, dict) and data.get("status") == "error":
        name = str(data.get("name") or "")
        message = str(data.get("message") or "")
    detail = f"{name}: {message}" if name else (message or body.decode("utf-8", "replace")[:200])
    detail = detail or "-"
    if name in _CONFIGURATION_ERRORS or status in _HALTING_STATUSES:
        reason = (
            f"{SERVICE} refused the request (HTTP {status}, {detail}); "
            "check the API key, the account's billing and base_url"
        )[:MAX_REASON]
        result = SendResult(message_id, Outcome.TRANSIENT, reason=reason, http_status=status)
        return Verdict(result, halt=True)
    if name == "ValidationError" or (not name and 400 <= status < 500):
        reason = f"{SERVICE} refused the request (HTTP {status}, {detail})"[:MAX_REASON]
        return Verdict(SendResult(message_id, Outcome.FAILED, reason=reason, http_status=status))
    reason = f"{SERVICE} failed (HTTP {status}, {detail})"[:MAX_REASON]
    result = SendResult(
        message_id,
        Outcome.TRANSIENT,
        reason=reason,
        http_status=status,
        retry_after=retry_after_seconds(headers),
    )
    return Verdict(result)


class MailchimpProvider(HttpApiProvider):
    """Sends through Mailchimp Transactional's ``messages/send-raw``; see the module docs."""

    name = "mailchimp"
    service = SERVICE

    def __init__(self, options: MailchimpOptions) -> None:
        options.api_key_or_raise("POSTWISE_PROVIDER_OPTIONS__MAILCHIMP__API_KEY")
        super().__init__(
            base_url=options.base_url,
            timeout=options.timeout,
            concurrency=options.concurrency,
            headers={"User-Agent": f"postwise/{postwise_version} postwise-mailchimp"},
        )
        self.options = options

    def _request_body(self, message: OutgoingMessage) -> dict[str, Any]:
        try:
            raw = (control_headers(message, self.options) + message.raw).decode("utf-8")
        except UnicodeDecodeError:
            raise ValueError("the message is neither 7-bit nor UTF-8") from None
        body: dict[str, Any] = {
            "key": self.options.api_key.get_secret_value(),
            "raw_message": raw,
            "from_email": message.sender,
            "to": [message.recipient],
            "async": self.options.async_send,
        }
        if self.options.ip_pool:
            body["ip_pool"] = self.options.ip_pool
        if self.options.return_path_domain:
            body["return_path_domain"] = self.options.return_path_domain
        return body

    def send_one(self, client: httpx.Client, message: OutgoingMessage) -> Verdict:
        """Send ``message`` through send-raw and classify the answer."""
        try:
            body = self._request_body(message)
        except ValueError as exc:
            reason = f"cannot be sent through {SERVICE}: {exc}"
            return Verdict(SendResult(message.message_id, Outcome.FAILED, reason=reason))
        return self.post(
            client,
            message,
            SEND_RAW_PATH,
            body,
            lambda response: classify_response(
                message.message_id,
                message.recipient,
                response.status_code,
                response.headers,
                response.content,
            ),
        )
