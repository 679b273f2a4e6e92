"""Public tracking endpoints: the open pixel and the click redirect.

None of them needs an API key; each authenticates by its signed token (:mod:`postwise.tokens`,
signed by the renderer and the composer with ``settings.signing_keys()``, valid for
``settings.tracking_link_ttl_days``):

* ``GET /t/o/<token>.gif``: a 1x1 transparent GIF that is never cached; records an ``open``.
  An invalid token still gets the image (a broken image helps nobody) but records nothing.
* ``GET /t/c/<token>``: redirects to the URL bound into the token and records a ``click``.
  A tampered, unsigned or expired token gets a 404 and is never redirected anywhere, so the
  endpoint is no open redirect.

One-click unsubscribe, the other link in every email, is a recipient page of compliance
(:mod:`postwise.compliance.pages`).

Events carry the message id and, from the ledger row, the contact, campaign, experiment,
variant and provider. Machine opens and scanner clicks are flagged (:mod:`postwise.analytics.bots`).
Client addresses and user agents are used for that decision and never stored.
"""

from __future__ import annotations

import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from litestar import Controller, MediaType, Request, Response, get
from litestar.datastructures import State

from postwise import tokens
from postwise.analytics.bots import classify_click, classify_open, record_click_burst
from postwise.contacts.normalize import email_domain
from postwise.db.models import Contact
from postwise.db.models import Message as LedgerRow
from postwise.events import EventEnvelope
from postwise.runtime import Runtime
from postwise.server.pages import INVALID_LINK_RESPONSES, invalid_link_page
from postwise.streams.publish import publish

__all__ = [
    "TRANSPARENT_GIF",
    "SentMessage",
    "TrackingController",
    "record_click",
    "record_open",
    "sent_message",
]

log = logging.getLogger(__name__)

#: The smallest transparent GIF (43 bytes).
TRANSPARENT_GIF = (
    b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00"
    b"\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x02D\x01\x00;"
)
_NO_CACHE = {
    "Cache-Control": "no-store, no-cache, must-revalidate, private, max-age=0",
    "Pragma": "no-cache",
    "Expires": "0",
}


@dataclass(frozen=True, slots=True)
class SentMessage:
    """What the ledger says about a tracked message."""

    contact_id: int | None
    campaign_id: int | None
    trigger_id: int | None
    experiment_id: int | None
    variant: str | None
    provider: str | None
    sent_at: datetime | None
    recipient_domain: str | None


def sent_message(runtime: Runtime, message_id: str) -> SentMessage | None:
    """What the ledger says about ``message_id`` (None: no such message)."""
    message = LedgerRow.__table__  # type: ignore[attr-defined]
    contact = Contact.__table__  # type: ignore[attr-defined]
    query = (
        sa.select(
            message.c.contact_id,
            message.c.campaign_id,
            message.c.trigger_id,
            message.c.experiment_id,
            message.c.variant,
            message.c.provider,
            message.c.sent_at,
            contact.c.email,
        )
        .select_from(message.outerjoin(contact, contact.c.id == message.c.contact_id))
        .where(message.c.id == message_id)
    )
    with runtime.engine.connect() as connection:
        row = connection.execute(query).first()
    if row is None:
        return None
    sent_at = row[6]
    if sent_at is not None and sent_at.tzinfo is None:
        sent_at = sent_at.replace(tzinfo=UTC)
    domain = email_domain(row[7]) if row[7] else None
    return SentMessage(row[0], row[1], row[2], row[3], row[4], row[5], sent_at, domain)


def _client_ip(request: Request[Any, Any, Any]) -> str | None:
    forwarded = request.headers.get("x-forwarded-for")
    if forwarded:
        return forwarded.split(",")[0].strip()
    return request.client.host if request.client else None


def _envelope(
    event_type: str, message_id: str, sent: SentMessage | None, now: datetime, props: dict[str, Any]
) -> EventEnvelope:
    if sent is not None and sent.recipient_domain:
        props["recipient_domain"] = sent.recipient_domain
    return EventEnvelope(
        event_id=f"{event_type}:{uuid.uuid4().hex}",
        type=event_type,
        occurred_at=now,
        contact_id=sent.contact_id if sent else None,
        message_id=message_id,
        campaign_id=sent.campaign_id if sent else None,
        trigger_id=sent.trigger_id if sent else None,
        experiment_id=sent.experiment_id if sent else None,
        variant=sent.variant if sent else None,
        provider=sent.provider if sent else None,
        properties=props,
    )


def record_open(
    runtime: Runtime, message_id: str, *, user_agent: str | None, ip: str | None
) -> EventEnvelope:
    """Publish the ``open`` of ``message_id``, flagged when a machine made it."""
    now = datetime.now(UTC)
    sent = sent_message(runtime, message_id)
    reason = classify_open(user_agent, ip, sent_at=sent.sent_at if sent else None, now=now)
    props: dict[str, Any] = {"machine_open": True, "machine_reason": reason} if reason else {}
    event = _envelope("open", message_id, sent, now, props)
    publish(runtime, [event])
    return event


def record_click(
    runtime: Runtime, message_id: str, url: str, *, user_agent: str | None
) -> EventEnvelope:
    """Publish the ``click`` of ``url`` in ``message_id``, flagged when a scanner made it."""
    now = datetime.now(UTC)
    sent = sent_message(runtime, message_id)
    burst = record_click_burst(runtime.redis, message_id, url, time.time())
    reason = classify_click(
        user_agent, sent_at=sent.sent_at if sent else None, now=now, burst=burst
    )
    props: dict[str, Any] = {"url": url}
    if reason:
        props.update(scanner=True, scanner_reason=reason)
    event = _envelope("click", message_id, sent, now, props)
    publish(runtime, [event])
    return event


def signing_keys(runtime: Runtime) -> list[bytes]:
    return runtime.settings.signing_keys()


class TrackingController(Controller):
    """Open pixel and click redirect."""

    path = "/t"
    tags = ["tracking"]
    include_in_schema = True

    @get(
        "/o/{name:str}",
        sync_to_thread=True,
        media_type="image/gif",
        response_description="A 1x1 transparent GIF (for invalid tokens too; nothing is recorded).",
    )
    def open_pixel(
        self, state: State, request: Request[Any, Any, Any], name: str
    ) -> Response[bytes]:
        """A 1x1 GIF; records an open of the message the token names."""
        runtime: Runtime = state.runtime
        token = name.removesuffix(".gif")
        try:
            payload = tokens.verify(tokens.Purpose.OPEN, token, keys=signing_keys(runtime))
            message_id = payload.get("m")
            if name.endswith(".gif") and isinstance(message_id, str):
                record_open(
                    runtime,
                    message_id,
                    user_agent=request.headers.get("user-agent"),
                    ip=_client_ip(request),
                )
        except tokens.InvalidToken:
            pass
        except Exception:
            # The reader sees an image whatever happens; the failure is for the operator.
            log.exception("could not record an open")
        return Response(TRANSPARENT_GIF, media_type="image/gif", headers=_NO_CACHE)

    @get(
        "/c/{token:str}",
        sync_to_thread=True,
        status_code=302,
        media_type=MediaType.HTML,
        response_description="A redirect (Location) to the URL the token binds.",
        responses=INVALID_LINK_RESPONSES,
    )
    def click(self, state: State, request: Request[Any, Any, Any], token: str) -> Response[Any]:
        """Redirect to the URL bound into the token; a bad token is a 404, never a redirect."""
        runtime: Runtime = state.runtime
        try:
            payload = tokens.verify(tokens.Purpose.CLICK, token, keys=signing_keys(runtime))
        except tokens.InvalidToken:
            return invalid_link_page()
        message_id, url = payload.get("m"), payload.get("u")
        if not isinstance(message_id, str) or not isinstance(url, str) or not _is_web_url(url):
            return invalid_link_page()
        try:
            record_click(runtime, message_id, url, user_agent=request.headers.get("user-agent"))
        except Exception:
            # The reader still gets where the link goes; the failure is for the operator.
            log.exception("could not record a click")
        return Response(
            b"",
            status_code=302,
            headers={**_NO_CACHE, "Location": url, "Referrer-Policy": "no-referrer"},
        )


def _is_web_url(url: str) -> bool:
    parts = urlsplit(url)
    return parts.scheme in ("http", "https") and bool(parts.netloc)
