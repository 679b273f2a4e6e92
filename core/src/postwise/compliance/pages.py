"""The pages recipients reach from links in email, all signed-token links (no API key):

* ``/u/{token}``: one-click unsubscribe. ``GET`` shows a page with one button and changes
  nothing (mail scanners prefetch GET links); ``POST`` unsubscribes (RFC 8058 one-click: the mail
  client POSTs ``List-Unsubscribe=One-Click``); no cookie, no login, idempotent.
* ``/c/{token}``: the double opt-in confirmation. GET shows a page with one button, POST
  confirms. Confirming on GET would let mail scanners that prefetch links (corporate security
  gateways do) confirm on the person's behalf, which is not consent.
* ``/c/{token}/withdraw``: the one-click withdrawal link, likewise GET page and POST.

Every page is rendered by :func:`postwise.server.pages.page` (escaped text, no script, never
cached or indexed).
"""

from __future__ import annotations

import ipaddress
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

from litestar import Controller, MediaType, Request, Response, get, post
from litestar.concurrency import sync_to_thread
from litestar.datastructures import State
from sqlmodel import Session

from postwise import tokens
from postwise.analytics.tracking import sent_message, signing_keys
from postwise.compliance import consent as consent_ledger
from postwise.compliance.unsubscribe import unsubscribe
from postwise.errors import ConflictError, NotFoundError
from postwise.events import EventEnvelope
from postwise.runtime import Runtime
from postwise.server.pages import INVALID_LINK_RESPONSES, invalid_link_page, page
from postwise.streams.publish import publish

__all__ = ["ConsentLinkController", "UnsubscribeController", "unsubscribe_by_token"]


def _unsubscribe_target(runtime: Runtime, token: str) -> tuple[int | None, str | None]:
    """The contact and message an unsubscribe token names; raises InvalidToken."""
    payload = tokens.verify(tokens.Purpose.UNSUBSCRIBE, token, keys=signing_keys(runtime))
    contact_id = payload.get("c")
    message_id = payload.get("m")
    message_id = message_id if isinstance(message_id, str) else None
    if not isinstance(contact_id, int) or isinstance(contact_id, bool):
        contact_id = None
        if message_id is not None:
            sent = sent_message(runtime, message_id)
            contact_id = sent.contact_id if sent else None
    if contact_id is None and message_id is None:
        raise tokens.InvalidToken("unsubscribe token names neither a contact nor a message")
    return contact_id, message_id


def unsubscribe_by_token(runtime: Runtime, token: str, *, source: str) -> bool:
    """Carry out the unsubscribe a token asks for; returns whether anything changed.

    Raises :class:`postwise.tokens.InvalidToken` for a bad token. A contact erased since the
    mail was sent has nothing left to unsubscribe (its address is suppressed already).
    """
    contact_id, message_id = _unsubscribe_target(runtime, token)
    if contact_id is None:
        return False
    try:
        with runtime.session() as session:
            changed = unsubscribe(session, contact_id, source=source, message_id=message_id)
    except NotFoundError:
        return False
    sent = sent_message(runtime, message_id) if message_id else None
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
        responses=INVALID_LINK_RESPONSES,
    )
    def confirm_page(self, state: State, token: str) -> Response[str]:
        """A page with a button; GET never unsubscribes (link scanners prefetch GETs)."""
        runtime: Runtime = state.runtime
        try:
            _unsubscribe_target(runtime, token)
        except tokens.InvalidToken:
            return invalid_link_page()
        return page(
            "Unsubscribe",
            "Stop receiving marketing email from us? Transactional mail such as receipts will "
            "still reach you.",
            button="Unsubscribe",
            fields=(("List-Unsubscribe", "One-Click"), ("source", "page")),
        )

    @post(
        "/{token:str}",
        status_code=200,
        media_type=MediaType.HTML,
        response_description="An HTML page confirming the unsubscribe (idempotent).",
        responses=INVALID_LINK_RESPONSES,
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
            return invalid_link_page()
        return page("Unsubscribed", "You will not receive marketing email from us any more.")


def _client_ip(request: Request[Any, Any, Any]) -> str | None:
    """The peer's IP address, or None when the peer is not an IP socket (a test client)."""
    host = request.client.host if request.client is not None else None
    try:
        return str(ipaddress.ip_address(host)) if host else None
    except ValueError:
        return None


class ConsentLinkController(Controller):
    """The public double opt-in and withdrawal links (no API key: the token is the proof)."""

    path = "/c"
    tags = ["compliance"]
    include_in_schema = False

    @get("/{token:str}", sync_to_thread=True)
    def confirmpage(self, runtime: Runtime, token: str) -> Response[str]:
        try:
            consent_ledger.verify_consent_token(
                runtime.settings, token, consent_ledger.ConsentAction.CONFIRM
            )
        except tokens.InvalidToken:
            return invalid_link_page()
        return page(
            "Confirm your subscription",
            "Press the button to confirm that you want to receive our emails.",
            button="Confirm",
        )

    @post("/{token:str}", sync_to_thread=True, status_code=200)
    def confirm(
        self, request: Request[Any, Any, Any], session: Session, runtime: Runtime, token: str
    ) -> Response[str]:
        try:
            consent_ledger.confirm_consent(session, runtime.settings, token, ip=_client_ip(request))
        except tokens.InvalidToken:
            return invalid_link_page()
        except NotFoundError:
            return page("Nothing to confirm", "This request no longer exists.", status_code=404)
        except ConflictError:
            return page(
                "Nothing was confirmed",
                "Your choice changed after this email was sent, so this link no longer applies.",
                status_code=409,
            )
        return page(
            "Subscription confirmed",
            "Thank you. You can withdraw at any time with the link in every email we send.",
        )

    @get("/{token:str}/withdraw", sync_to_thread=True)
    def withdrawpage(self, runtime: Runtime, token: str) -> Response[str]:
        try:
            consent_ledger.verify_consent_token(
                runtime.settings, token, consent_ledger.ConsentAction.WITHDRAW
            )
        except tokens.InvalidToken:
            return invalid_link_page()
        return page(
            "Withdraw your consent",
            "Press the button and we will stop sending you these emails.",
            button="Withdraw",
        )

    @post("/{token:str}/withdraw", sync_to_thread=True, status_code=200)
    def withdraw(
        self, request: Request[Any, Any, Any], session: Session, runtime: Runtime, token: str
    ) -> Response[str]:
        try:
            consent_ledger.withdraw_by_token(
                session, runtime.settings, token, ip=_client_ip(request)
            )
        except tokens.InvalidToken:
            return invalid_link_page()
        except NotFoundError:
            return page(
                "Nothing to withdraw", "We hold no data about you any more.", status_code=404
            )
        return page("Consent withdrawn", "Done. You will not receive these emails any more.")
