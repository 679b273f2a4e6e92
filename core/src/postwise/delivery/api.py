"""``/v1/templates``, ``/v1/campaigns`` and ``/v1/sends``."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from litestar import Controller, Response, get, post
from litestar.params import Parameter
from litestar.status_codes import HTTP_200_OK, HTTP_201_CREATED, HTTP_202_ACCEPTED
from sqlmodel import Session, col, select

from postwise.db.models import Contact, Message, Template
from postwise.delivery.campaigns import (
    campaign_status,
    create_campaign,
    get_campaign,
    list_campaigns,
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
from postwise.errors import NotFoundError, ValidationError
from postwise.runtime import Runtime

__all__ = ["CampaignsController", "SendsController", "TemplatesController"]


@dataclass
class TemplateIn:
    """A new template with its first version."""

    name: str
    subject: str
    html: str
    text: str | None = None
    kind: str = "marketing"
    #: Names beyond the contact fields the template uses (attributes, send context values).
    variables: list[str] = field(default_factory=list)


@dataclass
class VersionIn:
    """A new version of a template."""

    subject: str
    html: str
    text: str | None = None
    variables: list[str] = field(default_factory=list)


@dataclass
class PreviewIn:
    """Render for a stored contact (``contact_id``) or for made-up ``fields``."""

    contact_id: int | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    version: int | None = None
    segments: list[str] = field(default_factory=list)


@dataclass
class CampaignIn:
    name: str
    template_id: int
    template_version: int | None = None
    #: A segment id or name; none means every active contact.
    segment: int | str | None = None
    provider: str | None = None
    experiment_id: int | None = None


@dataclass
class SendIn:
    """One message: a template to a contact, identified by ``dedupe_key`` (idempotent)."""

    contact_id: int
    template_id: int
    dedupe_key: str
    not_before: datetime | None = None
    context: dict[str, Any] = field(default_factory=dict)
    provider: str | None = None
    experiment_id: int | None = None
    #: A consent purpose this send needs (as a list's ``consent_purpose`` does): marketing is
    #: sent only if the contact's latest record for it is granted and confirmed.
    consent_purpose: str | None = None


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
        self, session: Session, limit: int = Parameter(default=100, ge=1, le=1000)
    ) -> dict[str, Any]:
        rows = session.exec(select(Template).order_by(col(Template.id)).limit(limit))
        return {"templates": [template_dict(t) for t in rows]}

    @get("/{template_id:int}", sync_to_thread=True)
    def show(
        self, session: Session, template_id: int, version: int | None = None
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
    def list_all(
        self, session: Session, limit: int = Parameter(default=100, ge=1, le=1000)
    ) -> dict[str, Any]:
        return {
            "campaigns": [
                {"id": c.id, "name": c.name, "status": c.status, "created_at": c.created_at}
                for c in list_campaigns(session, limit=limit)
            ]
        }

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

    @post("/", sync_to_thread=True, opt={"scope": "send"})
    def submit(self, runtime: Runtime, data: SendIn) -> Response[dict[str, Any]]:
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
                not_before=data.not_before,
                transactional=False,
                provider=data.provider,
                experiment_id=data.experiment_id,
                context=data.context,
                consent_purpose=data.consent_purpose,
            ),
        )
        body = {"message_id": result.message_id, "status": result.status, "reason": result.reason}
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
