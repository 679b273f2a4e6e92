"""``/v1/templates``, ``/v1/campaigns`` and ``/v1/sends``."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

import msgspec
import sqlalchemy as sa
from litestar import Controller, Response, delete, get, post
from litestar.openapi import ResponseSpec
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_202_ACCEPTED
from sqlmodel import Session, col, select

from postwise.db.models import (
    Campaign,
    CampaignStatus,
    Contact,
    Experiment,
    Message,
    Template,
    TemplateVersion,
    Trigger,
)
from postwise.delivery.campaigns import (
    campaign_status,
    create_campaign,
    get_campaign,
)
from postwise.delivery.recovery import stalls
from postwise.delivery.requests import SendRequest, SubmitStatus
from postwise.delivery.templates import (
    add_version,
    create_template,
    get_template,
    get_version,
    preview,
    template_dict,
)
from postwise.errors import ConflictError, NotFoundError, ValidationError
from postwise.runtime import Runtime
from postwise.server.dto import Body, IdField, Key, Name, Out
from postwise.server.pagination import After, Limit, next_after
from postwise.server.validation import MAX_ID, OptionalId

__all__ = ["CampaignsController", "SendsController", "TemplatesController"]


Subject = Annotated[
    str, msgspec.Meta(min_length=1, max_length=998, examples=["Hello {{ first_name }}"])
]
Html = Annotated[str, msgspec.Meta(max_length=500_000, examples=["<p>Hi {{ first_name }}</p>"])]
Variable = Annotated[
    str, msgspec.Meta(min_length=1, max_length=100, pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
]
Version = Annotated[int, msgspec.Meta(ge=1, le=MAX_ID)]
Provider = Annotated[str, msgspec.Meta(min_length=1, max_length=100, examples=["smtp"])]


class TemplateIn(Body):
    """A new template with its first version."""

    name: Name
    subject: Subject
    html: Html
    text: Annotated[str, msgspec.Meta(max_length=500_000)] | None = None
    kind: Literal["marketing", "transactional"] = "marketing"
    #: Names beyond the contact fields the template uses (attributes, send context values).
    variables: Annotated[list[Variable], msgspec.Meta(max_length=200)] = []


class VersionIn(Body):
    """A new version of a template."""

    subject: Subject
    html: Html
    text: Annotated[str, msgspec.Meta(max_length=500_000)] | None = None
    variables: Annotated[list[Variable], msgspec.Meta(max_length=200)] = []


class PreviewIn(Body):
    """Render for a stored contact (``contact_id``) or for made-up ``fields``."""

    contact_id: IdField | None = None
    fields: dict[str, Any] = {}
    version: Version | None = None
    segments: Annotated[list[Name], msgspec.Meta(max_length=100)] = []


class CampaignIn(Body):
    """A draft campaign: a template sent to a segment (or every active contact)."""

    name: Name
    template_id: IdField
    template_version: Version | None = None
    #: A segment id or name; none means every active contact.
    segment: IdField | Name | None = None
    provider: Provider | None = None
    experiment_id: IdField | None = None


class SendIn(Body):
    """One message: a template to a contact, identified by ``dedupe_key`` (idempotent)."""

    contact_id: IdField
    template_id: IdField
    dedupe_key: Annotated[Key, msgspec.Meta(examples=["order-1042-receipt"])]
    #: Send no earlier than this (ISO 8601 with a timezone).
    not_before: (
        Annotated[
            str,
            msgspec.Meta(
                max_length=64,
                extra_json_schema={"format": "date-time"},
                examples=["2026-12-24T09:00:00+01:00"],
            ),
        ]
        | None
    ) = None
    context: dict[str, Any] = {}
    provider: Provider | None = None
    experiment_id: IdField | None = None
    #: A consent purpose this send needs (as a list's ``consent_purpose`` does): marketing is
    #: sent only if the contact's latest record for it is granted and confirmed.
    consent_purpose: Annotated[str, msgspec.Meta(pattern=r"^[a-z][a-z0-9_.-]{0,49}$")] | None = None


class SendOut(Out):
    """Where a submitted send stands."""

    message_id: str
    #: queued (202); duplicate (the dedupe_key was seen), skipped or held (200).
    status: str
    #: Why it was not queued (suppressed, no consent, frequency cap, ...).
    reason: str | None = None


def _when(value: str | None, field: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise ValidationError(
            f"{value!r} is not an ISO 8601 time such as 2026-12-24T09:00:00Z", field=field
        ) from None
    if parsed.tzinfo is None:
        raise ValidationError("add a timezone (Z or an offset such as +02:00)", field=field)
    return parsed


class TemplatesController(Controller):
    path = "/v1/templates"
    tags = ["templates"]

    @post("/", sync_to_thread=True, status_code=HTTP_201_CREATED)
    def create(self, session: Session, runtime: Runtime, data: TemplateIn) -> dict[str, Any]:
        """Create a template; it is validated (syntax, variables, CAN-SPAM) before it is saved."""
        template = create_template(
            session,
            runtime.settings,
            name=data.name,
            subject=data.subject,
            html=data.html,
            text=data.text,
            kind=data.kind,
            variables=data.variables,
        )
        assert template.id is not None
        return template_dict(template, get_version(session, template.id))

    @get("/", sync_to_thread=True)
    def list_templates(
        self, session: Session, after: After = 0, limit: Limit = 100
    ) -> dict[str, Any]:
        """Templates in id order, paged by ``after``."""
        rows = list(
            session.exec(
                select(Template)
                .where(col(Template.id) > after)
                .order_by(col(Template.id))
                .limit(limit)
            )
        )
        return {
            "templates": [template_dict(t) for t in rows],
            "next_after": next_after(rows, limit),
        }

    @delete("/{template_id:int}", sync_to_thread=True, status_code=204, opt={"problems": [409]})
    def remove(self, session: Session, template_id: int) -> None:
        """Delete a template nothing uses or has sent; 409 says what does (a sent template
        stays: the ledger and reports refer to its versions)."""
        template = get_template(session, template_id)
        _refuse_if_used(session, template)
        session.execute(
            sa.delete(TemplateVersion).where(col(TemplateVersion.template_id) == template_id)
        )
        session.delete(template)

    @get("/{template_id:int}", sync_to_thread=True)
    def show(
        self, session: Session, template_id: int, version: OptionalId = None
    ) -> dict[str, Any]:
        """The template and one version of it (the current one by default)."""
        return template_dict(
            get_template(session, template_id), get_version(session, template_id, version)
        )

    @post("/{template_id:int}/versions", sync_to_thread=True, status_code=HTTP_201_CREATED)
    def add_version(
        self, session: Session, runtime: Runtime, template_id: int, data: VersionIn
    ) -> dict[str, Any]:
        """Save a new, validated version and make it current."""
        version = add_version(
            session,
            runtime.settings,
            template_id,
            subject=data.subject,
            html=data.html,
            text=data.text,
            variables=data.variables,
        )
        return template_dict(get_template(session, template_id), version)

    @post(
        "/{template_id:int}/preview",
        sync_to_thread=True,
        status_code=HTTP_200_OK,
        opt={"scope": ("read", "send")},
    )
    def preview(
        self, session: Session, runtime: Runtime, template_id: int, data: PreviewIn
    ) -> dict[str, str]:
        """Render a version for a contact, without tracking links."""
        from postwise.delivery.compose import load_contacts
        from postwise.delivery.services import services_for

        fields: dict[str, Any] = {}
        if data.contact_id is not None:
            contact = load_contacts(session, [data.contact_id]).get(data.contact_id)
            if contact is None:
                raise NotFoundError(f"no contact with id {data.contact_id}")
            fields = contact.merge_fields()
        fields.update(data.fields)
        return preview(
            session,
            runtime.settings,
            template_id,
            fields=fields,
            version=data.version,
            segments=data.segments,
            recommender=services_for(runtime).composer.recommender,
        )


def _refuse_if_used(session: Session, template: Template) -> None:
    """ConflictError naming what uses ``template`` (campaigns, triggers, experiments, mail)."""
    users: list[str] = [
        f"campaign {cid} ({name!r})"
        for cid, name in session.exec(
            select(Campaign.id, Campaign.name).where(Campaign.template_id == template.id).limit(5)
        )
    ]
    users += [
        f"trigger {t.id} ({t.name!r})"
        for t in session.exec(select(Trigger))
        if t.action.get("template_id") == template.id
    ][:5]
    users += [
        f"experiment {e.id} ({e.name!r})"
        for e in session.exec(select(Experiment))
        if any(v.get("template_id") == template.id for v in e.variants)
    ][:5]
    if users:
        raise ConflictError(
            f"template {template.id} is used by {', '.join(users)}; delete or change them first"
        )
    if session.exec(select(Message.id).where(Message.template_id == template.id).limit(1)).first():
        raise ConflictError(
            f"template {template.id} has been sent; it stays so the ledger and reports can refer "
            "to its versions"
        )


class CampaignsController(Controller):
    path = "/v1/campaigns"
    tags = ["campaigns"]

    @post("/", sync_to_thread=True, status_code=HTTP_201_CREATED)
    def create(self, session: Session, data: CampaignIn) -> dict[str, Any]:
        """Create a draft campaign."""
        campaign = create_campaign(
            session,
            name=data.name,
            template=data.template_id,
            template_version=data.template_version,
            segment=data.segment,
            provider=data.provider,
            experiment_id=data.experiment_id,
        )
        assert campaign.id is not None
        return campaign_status(session, campaign.id)

    @get("/", sync_to_thread=True)
    def list_all(self, session: Session, after: After = 0, limit: Limit = 100) -> dict[str, Any]:
        """Campaigns in id order, paged by ``after``."""
        rows = list(
            session.exec(
                select(Campaign)
                .where(col(Campaign.id) > after)
                .order_by(col(Campaign.id))
                .limit(limit)
            )
        )
        return {
            "campaigns": [
                {"id": c.id, "name": c.name, "status": c.status, "created_at": c.created_at}
                for c in rows
            ],
            "next_after": next_after(rows, limit),
        }

    @delete("/{campaign_id:int}", sync_to_thread=True, status_code=204, opt={"problems": [409]})
    def remove(self, session: Session, campaign_id: int) -> None:
        """Delete a draft campaign that has no messages; one that has sent stays (409)."""
        campaign = get_campaign(session, campaign_id)
        sent = session.exec(
            select(Message.id).where(Message.campaign_id == campaign_id).limit(1)
        ).first()
        if campaign.status != CampaignStatus.DRAFT or sent is not None:
            raise ConflictError(
                f"campaign {campaign_id} is {campaign.status} and has messages; it stays for the "
                "record (only a draft that never sent can be deleted)"
            )
        session.delete(campaign)

    @get("/{campaign_id:int}", sync_to_thread=True)
    def status(self, runtime: Runtime, session: Session, campaign_id: int) -> dict[str, Any]:
        """The campaign, its dispatch progress, its messages counted by status, and what is
        stalled (``stalled``: why, and what to run; empty when nothing is)."""
        get_campaign(session, campaign_id)
        return campaign_status(
            session, campaign_id, stalled=stalls(runtime, campaign_id=campaign_id)
        )

    @post(
        "/{campaign_id:int}/send",
        sync_to_thread=True,
        status_code=HTTP_202_ACCEPTED,
        opt={"scope": "send", "problems": [409]},
    )
    def send(self, runtime: Runtime, campaign_id: int) -> dict[str, Any]:
        """Start sending: workers stream the audience and deliver it.

        With the embedded Redis stand-in there are no separate workers, so the audience is
        dispatched within the request (its messages wait for ``postwise campaigns send``).
        """
        from postwise.delivery.start import start_campaign_send

        return start_campaign_send(runtime, campaign_id)


class SendsController(Controller):
    path = "/v1/sends"
    tags = ["sends"]

    @post(
        "/",
        sync_to_thread=True,
        status_code=HTTP_202_ACCEPTED,
        opt={"scope": "send"},
        response_description="Queued.",
        responses={
            200: ResponseSpec(
                data_container=SendOut,
                description="Not queued: a duplicate of an earlier send, or skipped with a reason.",
            )
        },
    )
    def submit(self, runtime: Runtime, data: SendIn) -> Response[SendOut]:
        """Send one message. The same ``dedupe_key`` for the same contact and template is
        sent once: a repeat answers ``duplicate``. 202 when queued, 200 otherwise."""
        from postwise.delivery.dispatch import submit_send

        if not data.dedupe_key.strip() or len(data.dedupe_key) > 200:
            raise ValidationError("must be 1-200 characters", field="dedupe_key")
        result = submit_send(
            runtime,
            SendRequest(
                contact_id=data.contact_id,
                template_id=data.template_id,
                dedupe_key=f"api:{data.dedupe_key}",
                reason="api",
                not_before=_when(data.not_before, "not_before"),
                transactional=False,
                provider=data.provider,
                experiment_id=data.experiment_id,
                context=data.context,
                consent_purpose=data.consent_purpose,
            ),
        )
        body = SendOut(message_id=result.message_id, status=result.status, reason=result.reason)
        code = HTTP_202_ACCEPTED if result.status == SubmitStatus.QUEUED else HTTP_200_OK
        return Response(body, status_code=code)

    @get("/{message_id:str}", sync_to_thread=True, opt={"scope": ("read", "send")})
    def show(self, session: Session, message_id: str) -> dict[str, Any]:
        """Where one message stands in the ledger."""
        row = session.get(Message, message_id)
        if row is None:
            raise NotFoundError(f"no message {message_id!r}")
        contact = session.get(Contact, row.contact_id) if row.contact_id is not None else None
        return {
            "message_id": row.id,
            "status": row.status,
            "contact_id": row.contact_id,
            "email": contact.email if contact is not None else None,
            "campaign_id": row.campaign_id,
            "trigger_id": row.trigger_id,
            "template_id": row.template_id,
            "template_version": row.template_version,
            "variant": row.variant,
            "provider": row.provider,
            "attempts": row.attempts,
            "last_code": row.last_code,
            "last_http_status": row.last_http_status,
            "last_error": row.last_error,
            "provider_message_id": row.provider_message_id,
            "consent_purpose": row.consent_purpose,
            "created_at": row.created_at,
            "sent_at": row.sent_at,
        }
