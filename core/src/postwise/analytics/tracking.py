"""Public tracking endpoints: the open pixel, the click redirect and one-click unsubscribe.

None of them needs an API key; each authenticates by its signed token (:mod:`postwise.tokens`,
signed by the renderer and the composer with ``settings.signing_keys()``, valid for
``settings.tracking_link_ttl_days``):

* ``GET /t/o/<token>.gif``: a 1x1 transparent GIF that is never cached; records an ``open``.
  An invalid token still gets the image (a broken image helps nobody) but records nothing.
* ``GET /t/c/<token>``: redirects to the URL bound into the token and records a ``click``.
  A tampered, unsigned or expired token gets a 404 and is never redirected anywhere, so the
  endpoint is no open redirect.
* ``GET /u/<token>``: a page with one button that confirms the unsubscribe. It changes nothing:
  mail scanners prefetch GET links.
* ``POST /u/<token>``: unsubscribes (RFC 8058 one-click: the mail client POSTs
  ``List-Unsubscribe=One-Click``); no cookie, no login, idempotent.

Events carry the message id and, from the ledger row, the contact, campaign, experiment,
variant and provider. Machine opens and scanner clicks are flagged (:mod:`postwise.analytics.bots`).
Client addresses and user agents are used for that decision and never stored.
"""

from __future__ import annotations

import html
import logging
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

import sqlalchemy as sa
from litestar import Controller, MediaType, Request, Response, get, post
from litestar.concurrency import sync_to_thread
from litestar.datastructures import State
from litestar.openapi import ResponseSpec

from postwise import tokens
from postwise.analytics.bots import classify_click, classify_open, record_click_burst
from postwise.analytics.ingest import publish
from postwise.contacts.normalize import email_domain
from postwise.db.models import Contact
from postwise.db.models import Message as LedgerRow
from postwise.errors import NotFoundError
from postwise.events import EventEnvelope
from postwise.runtime import Runtime

__all__ = ["TRANSPARENT_GIF", "TrackingController", "UnsubscribeController"]

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
_PAGE_HEADERS = {
    **_NO_CACHE,
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex, nofollow",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
    ),
}


@dataclass(frozen=True, slots=True)
class _Sent:
    """What the ledger says about a tracked message."""

    contact_id: int | None
    campaign_id: int | None
    trigger_id: int | None
    experiment_id: int | None
    variant: str | None
    provider: str | None
    sent_at: datetime | None
    recipient_domain: str | None


def _ledger(runtime: Runtime, message_id: str) -> _Sent | None:
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
    return _Sent(row[0], row[1], row[2], row[3], row[4], row[5], sent_at, domain)


def _client_ip(request: Request[Any, Any, Any]) -> str | None:
    forwarded = request.headers.get("x-forwarded-for")
    if forwarded:
        return forwarded.split(",")[0].strip()
    return request.client.host if request.client else None


def _envelope(
    event_type: str, message_id: str, sent: _Sent | None, now: datetime, props: dict[str, Any]
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
    sent = _ledger(runtime, message_id)
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
    sent = _ledger(runtime, message_id)
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


def _keys(runtime: Runtime) -> list[bytes]:
    return runtime.settings.signing_keys()


def _not_found_page() -> Response[str]:
    return Response(
        _page("Link not valid", "<p>This link is not valid or has expired.</p>"),
        status_code=404,
        media_type=MediaType.HTML,
        headers=_PAGE_HEADERS,
    )


#: The HTML page a bad, tampered or expired token gets (documented in the OpenAPI schema).
_BAD_TOKEN_PAGE = {
    404: ResponseSpec(
        data_container=str,
        media_type=MediaType.HTML,
        description="The token is invalid, tampered with or expired: an HTML page saying so.",
        generate_examples=False,
    )
}


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
            payload = tokens.verify(tokens.Purpose.OPEN, token, keys=_keys(runtime))
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
        responses=_BAD_TOKEN_PAGE,
    )
    def click(self, state: State, request: Request[Any, Any, Any], token: str) -> Response[Any]:
        """Redirect to the URL bound into the token; a bad token is a 404, never a redirect."""
        runtime: Runtime = state.runtime
        try:
            payload = tokens.verify(tokens.Purpose.CLICK, token, keys=_keys(runtime))
        except tokens.InvalidToken:
            return _not_found_page()
        message_id, url = payload.get("m"), payload.get("u")
        if not isinstance(message_id, str) or not isinstance(url, str) or not _is_web_url(url):
            return _not_found_page()
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


def _page(title: str, body: str) -> str:
    return (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;"
        "line-height:1.5}button{font-size:1rem;padding:.6rem 1.2rem;cursor:pointer}"
        f"</style></head><body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )


def _unsubscribe_target(runtime: Runtime, token: str) -> tuple[int | None, str | None]:
    """The contact and message an unsubscribe token names; raises InvalidToken."""
    payload = tokens.verify(tokens.Purpose.UNSUBSCRIBE, token, keys=_keys(runtime))
    contact_id = payload.get("c")
    message_id = payload.get("m")
    message_id = message_id if isinstance(message_id, str) else None
    if not isinstance(contact_id, int) or isinstance(contact_id, bool):
        contact_id = None
        if message_id is not None:
            sent = _ledger(runtime, message_id)
            contact_id = sent.contact_id if sent else None
    if contact_id is None and message_id is None:
        raise tokens.InvalidToken("unsubscribe token names neither a contact nor a message")
    return contact_id, message_id


def unsubscribe_by_token(runtime: Runtime, token: str, *, source: str) -> bool:
    """Carry out the unsubscribe a token asks for; returns whether anything changed.

    Raises :class:`postwise.tokens.InvalidToken` for a bad token. A contact erased since the
    mail was sent has nothing left to unsubscribe (its address is suppressed already).
    """
    from postwise.compliance.unsubscribe import unsubscribe

    contact_id, message_id = _unsubscribe_target(runtime, token)
    if contact_id is None:
        return False
    try:
        with runtime.session() as session:
            changed = unsubscribe(session, contact_id, source=source, message_id=message_id)
    except NotFoundError:
        return False
    sent = _ledger(runtime, message_id) if message_id else None
    # One unsubscribe event per message (or contact): a repeated POST is a duplicate.
    event_id = f"unsubscribe:{message_id}" if message_id else f"unsubscribe:c{contact_id}"
    event = EventEnvelope(
        event_id=event_id,
        type="unsubscribe",
        occurred_at=datetime.now(UTC),
        contact_id=contact_id,
        message_id=message_id,
        campaign_id=sent.campaign_id if sent else None,
        trigger_id=sent.trigger_id if sent else None,
        experiment_id=sent.experiment_id if sent else None,
        variant=sent.variant if sent else None,
        provider=sent.provider if sent else None,
        properties={"source": source},
    )
    publish(runtime, [event])
    return changed


class UnsubscribeController(Controller):
    """One-click unsubscribe (RFC 8058) and the page that confirms it."""

    path = "/u"
    tags = ["tracking"]

    @get(
        "/{token:str}",
        sync_to_thread=True,
        media_type=MediaType.HTML,
        response_description="An HTML page with one button that unsubscribes.",
        responses=_BAD_TOKEN_PAGE,
    )
    def confirm_page(self, state: State, token: str) -> Response[str]:
        """A page with a button; GET never unsubscribes (link scanners prefetch GETs)."""
        runtime: Runtime = state.runtime
        try:
            _unsubscribe_target(runtime, token)
        except tokens.InvalidToken:
            return _not_found_page()
        form = (
            "<p>Stop receiving marketing email from us? Transactional mail such as receipts "
            "will still reach you.</p>"
            '<form method="post">'
            '<input type="hidden" name="List-Unsubscribe" value="One-Click">'
            '<input type="hidden" name="source" value="page">'
            "<button type=submit>Unsubscribe</button></form>"
        )
        return Response(
            _page("Unsubscribe", form), media_type=MediaType.HTML, headers=_PAGE_HEADERS
        )

    @post(
        "/{token:str}",
        status_code=200,
        media_type=MediaType.HTML,
        response_description="An HTML page confirming the unsubscribe (idempotent).",
        responses=_BAD_TOKEN_PAGE,
    )
    async def one_click(
        self, state: State, request: Request[Any, Any, Any], token: str
    ) -> Response[str]:
        """Unsubscribe now (idempotent); the mail client's one-click POST or the page's button."""
        runtime: Runtime = state.runtime
        body = parse_qs((await request.body()).decode("utf-8", "replace"))
        source = "link" if body.get("source") == ["page"] else "one-click"
        try:
            await sync_to_thread(unsubscribe_by_token, runtime, token, source=source)
        except tokens.InvalidToken:
            return _not_found_page()
        return Response(
            _page("Unsubscribed", "<p>You will not receive marketing email from us any more.</p>"),
            media_type=MediaType.HTML,
            headers=_PAGE_HEADERS,
        )
