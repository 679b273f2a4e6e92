"""HTTP API of the compliance subsystem.

Under ``/v1`` (API key required):

* ``/v1/contacts/{id}/consent``: the ledger (GET), a grant or withdrawal (POST), a withdrawal
  in one call (DELETE ``/v1/contacts/{id}/consent/{purpose}``);
* ``/v1/contacts/{id}/erase`` (POST) and ``/v1/contacts/{id}/export`` (GET);
* ``/v1/suppressions``: list, add, check an address, lift an entry;
* ``/v1/reputation``: rates and pauses; ``POST /v1/reputation/resume`` and ``/pause``.

The public pages behind links in email (consent confirmation and withdrawal, unsubscribe) are in
:mod:`postwise.compliance.pages`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import msgspec
from litestar import Controller, Request, delete, get, post
from litestar.params import Parameter
from sqlmodel import Session

from postwise.compliance import consent as consent_ledger
from postwise.compliance import reputation, suppression
from postwise.compliance.erasure import erase_contact, export_contact
from postwise.compliance.processing import counters
from postwise.contacts.normalize import email_hash
from postwise.db.models import ConsentRecord, Contact, Suppression, iso
from postwise.errors import ConflictError, NotFoundError, ValidationError
from postwise.runtime import Runtime
from postwise.server.dto import Body, Email, IpAddress
from postwise.server.pagination import After, Limit

__all__ = [
    "ConsentController",
    "PrivacyController",
    "ReputationController",
    "SuppressionsController",
]


#: A consent purpose: lower-case letters, digits, '_', '.', '-', starting with a letter.
PURPOSE_PATTERN = r"^[a-z][a-z0-9_.-]{0,49}$"
Purpose = Annotated[
    str, Parameter(pattern=PURPOSE_PATTERN, description="A consent purpose ('newsletter').")
]


PurposeField = Annotated[
    str, msgspec.Meta(pattern=PURPOSE_PATTERN, examples=["marketing", "newsletter"])
]


class ConsentIn(Body):
    """A grant (``granted: true``) or withdrawal of consent for one purpose."""

    purpose: PurposeField = consent_ledger.MARKETING
    granted: bool = True
    source: Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=r"\S")] = "api"
    #: The IP address the person gave consent from (not the API caller's).
    ip: IpAddress | None = None
    #: Which version of the consent wording the person saw.
    wording_version: Annotated[str, msgspec.Meta(max_length=100)] | None = None
    #: Record the grant unconfirmed and return a confirmation link to send to the person.
    double_opt_in: bool = False


@dataclass
class ConsentOut:
    id: int
    purpose: str
    granted: bool
    confirmed: bool
    at: str
    source: str
    ip: str | None
    wording_version: str | None


@dataclass
class ConsentChange:
    record: ConsentOut
    #: For a double opt-in: the link that confirms the grant (send it to the person).
    confirmation_url: str | None = None
    #: The link that withdraws this purpose in one click (put it in every mail).
    withdrawal_url: str | None = None


@dataclass
class ConsentLedger:
    contact_id: int
    #: The record in force per purpose.
    current: dict[str, ConsentOut]
    #: Every record, oldest first.
    history: list[ConsentOut]
    #: Whether the latest ``marketing`` record is granted and confirmed (the gate's rule for
    #: contacts that need consent).
    marketing_consent: bool


def _consent_out(record: ConsentRecord) -> ConsentOut:
    assert record.id is not None
    return ConsentOut(
        id=record.id,
        purpose=record.purpose,
        granted=record.granted,
        confirmed=record.confirmed,
        at=iso(record.at),
        source=record.source,
        ip=record.ip,
        wording_version=record.wording_version,
    )


class ConsentController(Controller):
    path = "/v1/contacts/{contact_id:int}/consent"
    tags = ["compliance"]
    opt = {"scope": "privacy"}

    @get("/", sync_to_thread=True)
    def ledger(self, session: Session, contact_id: int) -> ConsentLedger:
        """The consent ledger of one contact and whether marketing to it is allowed."""
        if session.get(Contact, contact_id) is None:
            raise NotFoundError(f"contact {contact_id} does not exist")
        history = consent_ledger.consent_history(session, contact_id)
        # The ledger is ordered, so the last record per purpose is the one in force.
        current = {record.purpose: record for record in history}
        marketing = current.get(consent_ledger.MARKETING)
        return ConsentLedger(
            contact_id=contact_id,
            current={p: _consent_out(r) for p, r in current.items()},
            history=[_consent_out(r) for r in history],
            marketing_consent=marketing is not None and marketing.granted and marketing.confirmed,
        )

    @post("/", sync_to_thread=True, status_code=201)
    def change(
        self, session: Session, runtime: Runtime, contact_id: int, data: ConsentIn
    ) -> ConsentChange:
        """Grant (optionally with double opt-in) or withdraw consent for one purpose."""
        settings = runtime.settings
        if data.granted:
            grant = consent_ledger.grant_consent(
                session,
                settings,
                contact_id,
                data.purpose,
                source=data.source,
                ip=data.ip,
                wording_version=data.wording_version,
                double_opt_in=data.double_opt_in,
            )
            record, confirm = grant.record, grant.confirmation_url
        else:
            if data.double_opt_in:
                raise ValidationError("only a grant can be double opt-in", field="double_opt_in")
            record = consent_ledger.withdraw_consent(
                session, contact_id, data.purpose, source=data.source, ip=data.ip
            )
            confirm = None
        return ConsentChange(
            record=_consent_out(record),
            confirmation_url=confirm,
            withdrawal_url=consent_ledger.withdrawal_url(settings, contact_id, record.purpose),
        )

    @delete("/{purpose:str}", sync_to_thread=True, status_code=200)
    def withdraw(
        self, session: Session, runtime: Runtime, contact_id: int, purpose: Purpose
    ) -> ConsentChange:
        """Withdraw consent for ``purpose`` in one call (withdrawing ``marketing`` unsubscribes)."""
        record = consent_ledger.withdraw_consent(session, contact_id, purpose, source="api")
        return ConsentChange(record=_consent_out(record))


class PrivacyController(Controller):
    path = "/v1/contacts/{contact_id:int}"
    tags = ["compliance"]
    opt = {"scope": "privacy"}

    @post("/erase", sync_to_thread=True, status_code=200)
    def erase(
        self, request: Request[Any, Any, Any], runtime: Runtime, contact_id: int
    ) -> dict[str, Any]:
        """Erase the contact from every store; keeps a hashed suppression and an audit record."""
        actor = "api:" + str(request.scope.get("state", {}).get("api_key_name", "unknown"))
        return erase_contact(runtime, contact_id=contact_id, actor=actor).to_dict()

    @get("/export", sync_to_thread=True)
    def export(self, runtime: Runtime, contact_id: int) -> dict[str, Any]:
        """Everything held about the contact, as JSON (the right of access)."""
        return export_contact(runtime, contact_id=contact_id)


class SuppressionIn(Body):
    """An address to suppress (stored only as its hash)."""

    email: Email
    #: Any reason but ``erasure`` (erasing a contact records that one).
    reason: Literal["hard_bounce", "soft_bounce", "complaint", "unsubscribe", "manual"] = "manual"
    scope: suppression.SuppressionScope = suppression.SuppressionScope.ALL
    detail: Annotated[str, msgspec.Meta(max_length=1000)] | None = None


@dataclass
class SuppressionOut:
    id: int
    email_hash: str
    scope: str
    reason: str
    detail: str | None
    created_at: str


@dataclass
class SuppressionPage:
    items: list[SuppressionOut]
    #: Pass as ``after`` to get the next page; null on the last page.
    next_after: int | None


class AddressIn(Body):
    email: Email


@dataclass
class SuppressionCheck:
    email_hash: str
    #: Marketing to this address is blocked.
    suppressed_marketing: bool
    #: Every message (transactional too) is blocked.
    suppressed_all: bool
    entries: list[SuppressionOut] = field(default_factory=list)


def _suppression_out(entry: Suppression) -> SuppressionOut:
    assert entry.id is not None
    return SuppressionOut(
        id=entry.id,
        email_hash=entry.email_hash,
        scope=entry.scope,
        reason=entry.reason,
        detail=entry.detail,
        created_at=iso(entry.created_at),
    )


class SuppressionsController(Controller):
    path = "/v1/suppressions"
    tags = ["compliance"]
    opt = {"scope": "privacy"}

    @get("/", sync_to_thread=True)
    def list_entries(
        self,
        session: Session,
        reason: suppression.SuppressionReason | None = None,
        after: After = 0,
        limit: Limit = 100,
    ) -> SuppressionPage:
        """Suppressions in id order; page with ``after``."""
        items = suppression.list_suppressions(session, reason=reason, after_id=after, limit=limit)
        out = [_suppression_out(e) for e in items]
        return SuppressionPage(items=out, next_after=out[-1].id if len(out) == limit else None)

    @post("/", sync_to_thread=True, status_code=201)
    def add(self, session: Session, data: SuppressionIn) -> SuppressionOut:
        """Suppress an address (kept only as its hash)."""
        if data.reason == suppression.SuppressionReason.ERASURE:
            raise ValidationError(
                "erasure suppressions come from erasing a contact: POST /v1/contacts/{id}/erase",
                field="reason",
            )
        entry = suppression.suppress(
            session, data.email, reason=data.reason, scope=data.scope, detail=data.detail
        )
        return _suppression_out(entry)

    @post("/check", sync_to_thread=True, status_code=200)
    def check(self, session: Session, data: AddressIn) -> SuppressionCheck:
        """Whether an address is suppressed, and by which entries."""
        entries = suppression.suppressions_for(session, data.email)
        return SuppressionCheck(
            email_hash=email_hash(data.email),
            suppressed_marketing=bool(entries),
            suppressed_all=any(e.scope == suppression.SuppressionScope.ALL for e in entries),
            entries=[_suppression_out(e) for e in entries],
        )

    @delete("/{suppression_id:int}", sync_to_thread=True, status_code=204)
    def lift(self, session: Session, suppression_id: int) -> None:
        """Lift one suppression (not those recording an erasure)."""
        suppression.lift_suppression(session, suppression_id)


class StreamIn(Body):
    #: ``provider:NAME``, ``sending_domain:DOMAIN`` or ``recipient_domain:DOMAIN``.
    stream: Annotated[
        str,
        msgspec.Meta(
            max_length=300,
            pattern=r"^(provider|sending_domain|recipient_domain):\s*\S",
            examples=["provider:smtp", "recipient_domain:gmail.com"],
        ),
    ]
    reason: Annotated[str, msgspec.Meta(max_length=500)] = "paused by an operator"


class ReputationController(Controller):
    path = "/v1/reputation"
    tags = ["compliance"]

    @get("/", sync_to_thread=True)
    def status(self, runtime: Runtime) -> dict[str, Any]:
        """Rates per stream over the window, the thresholds, and the paused streams."""
        settings = runtime.settings
        return {
            "window_hours": settings.reputation_window_hours,
            "min_volume": settings.reputation_min_volume,
            "thresholds": {
                "complaint": {
                    "warn": settings.reputation_complaint_warn,
                    "pause": settings.reputation_complaint_pause,
                },
                "bounce": {
                    "warn": settings.reputation_bounce_warn,
                    "pause": settings.reputation_bounce_pause,
                },
            },
            "paused": reputation.paused_streams(runtime.redis),
            "streams": [r.to_dict() for r in reputation.report(runtime.redis, settings)],
            "reports": counters(runtime.redis),
        }

    @post(
        "/resume", sync_to_thread=True, status_code=200, opt={"scope": "admin", "problems": [404]}
    )
    def resume(self, runtime: Runtime, data: StreamIn) -> dict[str, Any]:
        """Resume a paused stream; its counters start afresh."""
        lifted = reputation.resume(runtime.redis, data.stream)
        return {"resumed": data.stream, "pause": lifted}

    @post("/pause", sync_to_thread=True, status_code=200, opt={"scope": "admin", "problems": [409]})
    def pause(self, runtime: Runtime, data: StreamIn) -> dict[str, Any]:
        """Pause a stream by hand until it is resumed."""
        if not reputation.pause(runtime.redis, data.stream, reason=data.reason):
            raise ConflictError(f"stream {data.stream!r} is paused already")
        return {"paused": data.stream, "reason": data.reason}
