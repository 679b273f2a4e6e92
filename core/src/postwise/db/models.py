"""The postwise data model (SQLModel tables), the same on SQLite and PostgreSQL.

Schema changes go through Alembic migrations in ``postwise/db/migrations``; a test checks that
the migrations produce exactly these tables on both databases.

Personal data lives in ``contact`` (and the rows that reference it by ``contact_id``), so that
erasing a contact can remove all of it. Events and ledger rows refer to contacts by id only.
"""

from __future__ import annotations

import enum
from datetime import UTC, datetime
from typing import Any, overload

import sqlalchemy as sa
from sqlmodel import JSON, Column, Field, SQLModel

__all__ = [
    "ApiKey",
    "AuditRecord",
    "Campaign",
    "CampaignStatus",
    "CatalogueItem",
    "ConsentRecord",
    "Contact",
    "ContactStatus",
    "ContactTag",
    "CrmLink",
    "CrmSyncState",
    "Event",
    "Experiment",
    "Journey",
    "JourneyRun",
    "JourneyVersion",
    "Message",
    "MessageStatus",
    "Segment",
    "SegmentMember",
    "Suppression",
    "Template",
    "TemplateVersion",
    "Trigger",
    "as_utc",
    "iso",
    "utcnow",
]


def utcnow() -> datetime:
    """The current time, timezone-aware UTC (every timestamp postwise stores is UTC)."""
    return datetime.now(UTC)


@overload
def as_utc(value: datetime) -> datetime: ...
@overload
def as_utc(value: None) -> None: ...
def as_utc(value: datetime | None) -> datetime | None:
    """A stored timestamp as timezone-aware UTC. SQLite hands timestamps back without their
    zone; every timestamp postwise stores is UTC, so a naive one is UTC."""
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)


@overload
def iso(value: datetime) -> str: ...
@overload
def iso(value: None) -> None: ...
def iso(value: datetime | None) -> str | None:
    """A stored timestamp in ISO 8601 with its zone (UTC; see :func:`as_utc`), or None."""
    return None if value is None else as_utc(value).isoformat()


def _json(default: Any = None) -> Any:
    return Field(
        default_factory=lambda: default.copy() if default is not None else {},
        sa_column=Column(JSON, nullable=False),
    )


def _ts(**kwargs: Any) -> Any:
    return Field(default_factory=utcnow, sa_type=sa.DateTime(timezone=True), **kwargs)


def _ts_nullable(**kwargs: Any) -> Any:
    return Field(default=None, sa_type=sa.DateTime(timezone=True), **kwargs)


class ContactStatus(enum.StrEnum):
    ACTIVE = "active"
    UNSUBSCRIBED = "unsubscribed"
    BOUNCED = "bounced"
    COMPLAINED = "complained"


class Contact(SQLModel, table=True):
    """A person postwise may email. ``email`` is normalised (trimmed, domain lower-cased)."""

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(max_length=320, unique=True, index=True)
    first_name: str | None = Field(default=None, max_length=200)
    last_name: str | None = Field(default=None, max_length=200)
    timezone: str = Field(default="UTC", max_length=64)
    country: str | None = Field(default=None, max_length=2)
    status: str = Field(default=ContactStatus.ACTIVE, max_length=20, index=True)
    attributes: dict[str, Any] = _json({})
    engagement_score: float = Field(default=0.0)
    engagement_updated_at: datetime | None = _ts_nullable()
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class ContactTag(SQLModel, table=True):
    """A tag on a contact; a table of its own so segments can filter on it in SQL."""

    __tablename__ = "contact_tag"

    contact_id: int = Field(foreign_key="contact.id", primary_key=True, ondelete="CASCADE")
    tag: str = Field(primary_key=True, max_length=100, index=True)


class CrmLink(SQLModel, table=True):
    """A contact's id in an external CRM."""

    __tablename__ = "crm_link"
    __table_args__ = (sa.UniqueConstraint("system", "external_id"),)

    id: int | None = Field(default=None, primary_key=True)
    contact_id: int = Field(foreign_key="contact.id", index=True, ondelete="CASCADE")
    system: str = Field(max_length=50)
    external_id: str = Field(max_length=200)
    remote_updated_at: datetime | None = _ts_nullable()
    synced_at: datetime | None = _ts_nullable()
    # Migration 0007: what the sync last saw and last pushed (postwise.crm.sync, .engagement).
    #: Per synced field, a short hash of the CRM's value at the last sync (never the value).
    field_hashes: dict[str, Any] = Field(
        default_factory=dict,
        sa_column=Column(JSON, nullable=False, server_default=sa.text("'{}'")),
    )
    pushed_at: datetime | None = _ts_nullable()
    #: The contact's ``engagement_updated_at`` when engagement was last pushed.
    pushed_engagement_at: datetime | None = _ts_nullable()
    pushed_score: float | None = Field(default=None)
    pushed_unsubscribed: bool | None = Field(default=None)
    pushed_hash: str | None = Field(default=None, max_length=32)


class CrmSyncState(SQLModel, table=True):
    """Where the periodic poll of one CRM got to."""

    __tablename__ = "crm_sync_state"

    system: str = Field(primary_key=True, max_length=50)
    cursor: str | None = Field(default=None, max_length=200)
    last_polled_at: datetime | None = _ts_nullable()


class ConsentRecord(SQLModel, table=True):
    """One grant or withdrawal of consent; the latest per contact and purpose is in force."""

    __tablename__ = "consent_record"
    __table_args__ = (sa.Index("ix_consent_contact_purpose_at", "contact_id", "purpose", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    contact_id: int = Field(foreign_key="contact.id", ondelete="CASCADE")
    purpose: str = Field(max_length=50)
    granted: bool
    at: datetime = _ts()
    source: str = Field(default="api", max_length=100)
    ip: str | None = Field(default=None, max_length=45)
    wording_version: str | None = Field(default=None, max_length=50)
    confirmed: bool = Field(default=True, description="False until a double opt-in is confirmed.")


class Suppression(SQLModel, table=True):
    """An address that must not be mailed, kept as a hash so erasure leaves no address behind."""

    __table_args__ = (sa.UniqueConstraint("email_hash", "scope"),)

    id: int | None = Field(default=None, primary_key=True)
    email_hash: str = Field(max_length=64, index=True)
    scope: str = Field(default="all", max_length=20, description="'all' or 'marketing'.")
    reason: str = Field(max_length=30)
    detail: str | None = Field(default=None, max_length=500)
    created_at: datetime = _ts()


class Segment(SQLModel, table=True):
    """A static list (members in ``segment_member``) or a rule-based segment (``rules``)."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200, unique=True)
    kind: str = Field(default="rules", max_length=10, description="'static' or 'rules'.")
    rules: dict[str, Any] = _json({})
    created_at: datetime = _ts()
    # Migration 0010: marketing to this list needs valid consent for this purpose.
    #: A consent purpose (``"newsletter"``); None: only the global and regional rules apply.
    consent_purpose: str | None = Field(default=None, max_length=100)


class SegmentMember(SQLModel, table=True):
    __tablename__ = "segment_member"

    segment_id: int = Field(foreign_key="segment.id", primary_key=True, ondelete="CASCADE")
    contact_id: int = Field(
        foreign_key="contact.id", primary_key=True, index=True, ondelete="CASCADE"
    )


class Template(SQLModel, table=True):
    """A named template; its content lives in immutable versions."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200, unique=True)
    kind: str = Field(default="marketing", max_length=20, description="marketing|transactional")
    current_version: int = Field(default=1)
    created_at: datetime = _ts()


class TemplateVersion(SQLModel, table=True):
    __tablename__ = "template_version"
    __table_args__ = (sa.UniqueConstraint("template_id", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    template_id: int = Field(foreign_key="template.id", index=True)
    version: int
    subject: str = Field(sa_type=sa.Text)
    html: str = Field(sa_type=sa.Text)
    text: str | None = Field(default=None, sa_type=sa.Text)
    created_at: datetime = _ts()


class CampaignStatus(enum.StrEnum):
    DRAFT = "draft"
    SENDING = "sending"
    SENT = "sent"
    PAUSED = "paused"
    CANCELLED = "cancelled"


class Campaign(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200)
    template_id: int = Field(foreign_key="template.id")
    template_version: int | None = Field(default=None)
    segment_id: int | None = Field(default=None, foreign_key="segment.id")
    provider: str | None = Field(default=None, max_length=50)
    experiment_id: int | None = Field(default=None, foreign_key="experiment.id")
    status: str = Field(default=CampaignStatus.DRAFT, max_length=20)
    counts: dict[str, Any] = _json({})
    created_at: datetime = _ts()
    started_at: datetime | None = _ts_nullable()
    finished_at: datetime | None = _ts_nullable()


class Trigger(SQLModel, table=True):
    """A behaviour trigger: event type + conditions → action, with cooldown and priority."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200, unique=True)
    event_type: str = Field(max_length=200, index=True)
    conditions: dict[str, Any] = _json({})
    action: dict[str, Any] = _json({})
    exit_conditions: dict[str, Any] = _json({})
    delay_seconds: int = Field(default=0, ge=0)
    cooldown_seconds: int = Field(default=86400, ge=0)
    priority: int = Field(default=0)
    active: bool = Field(default=True)
    transactional: bool = Field(default=False)
    experiment_id: int | None = Field(default=None, foreign_key="experiment.id")
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class MessageStatus(enum.StrEnum):
    QUEUED = "queued"
    #: Claimed by one delivery attempt (``claim_token``) until ``claimed_until``.
    SENDING = "sending"
    ACCEPTED = "accepted"
    RETRYING = "retrying"
    BOUNCED = "bounced"
    DEAD = "dead"
    SKIPPED = "skipped"


class Message(SQLModel, table=True):
    """The message ledger: one row per (send, contact), keyed by a deterministic id.

    The primary key is what makes sending exactly-once: a retried or re-delivered job finds the
    row and its status instead of sending again.
    """

    __table_args__ = (
        sa.Index("ix_message_campaign_status", "campaign_id", "status"),
        sa.Index("ix_message_contact_created", "contact_id", "created_at"),
        # Migration 0006: experiment reports count exposures and check conversions here.
        sa.Index(
            "ix_message_experiment",
            "experiment_id",
            "status",
            "variant",
            "contact_id",
            postgresql_include=["created_at"],
            postgresql_where=sa.text("experiment_id IS NOT NULL"),
            sqlite_where=sa.text("experiment_id IS NOT NULL"),
        ),
    )

    id: str = Field(primary_key=True, max_length=64)
    contact_id: int | None = Field(default=None, description="Set NULL on erasure.")
    campaign_id: int | None = Field(default=None, foreign_key="campaign.id")
    trigger_id: int | None = Field(default=None, foreign_key="trigger.id")
    template_id: int | None = Field(default=None)
    template_version: int | None = Field(default=None)
    experiment_id: int | None = Field(default=None)
    variant: str | None = Field(default=None, max_length=100)
    provider: str = Field(max_length=50)
    status: str = Field(default=MessageStatus.QUEUED, max_length=20, index=True)
    attempts: int = Field(default=0)
    #: The last SMTP reply code; None when the provider speaks to an HTTP API.
    last_code: int | None = Field(default=None)
    last_status: str | None = Field(default=None, max_length=20)
    #: Migration 0011: the HTTP status of an HTTP-API provider's last answer (200, 429, ...).
    last_http_status: int | None = Field(default=None)
    last_error: str | None = Field(default=None, max_length=1000)
    provider_message_id: str | None = Field(default=None, max_length=200)
    transactional: bool = Field(default=False)
    #: Extra merge values of a send request (``SendRequest.context``); None for campaigns.
    context: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    #: Migration 0010: the consent purpose the send needs besides the global and regional rules
    #: (its list's, or its request's); the worker enforces it when the message is marketing.
    consent_purpose: str | None = Field(default=None, max_length=100)
    #: The delivery attempt that holds the row while it is ``sending``, and until when.
    claim_token: str | None = Field(default=None, max_length=32)
    claimed_until: datetime | None = _ts_nullable()
    #: When the provider first deferred the message (throttling); ``delivery_max_defer_hours``
    #: counts from here.
    deferred_since: datetime | None = _ts_nullable()
    created_at: datetime = _ts()
    updated_at: datetime = _ts()
    sent_at: datetime | None = _ts_nullable()


class Event(SQLModel, table=True):
    """A stored email or product event (the SQL analytics sink)."""

    # Migration 0003 shapes these indexes for the metric queries (postwise.analytics.metrics):
    # type-leading and covering on PostgreSQL, so per-message counts are index-only scans.
    __table_args__ = (
        sa.Index(
            "ix_event_type_time",
            "type",
            "occurred_at",
            postgresql_include=[
                "provider",
                "recipient_domain",
                "message_id",
                "automated",
                "contact_id",
            ],
        ),
        sa.Index(
            "ix_event_contact_type_occurred",
            "contact_id",
            "type",
            "occurred_at",
            postgresql_include=["automated", "campaign_id", "experiment_id", "variant", "id"],
        ),
        sa.Index(
            "ix_event_campaign_messages",
            "type",
            "campaign_id",
            "message_id",
            postgresql_include=["automated", "contact_id"],
            postgresql_where=sa.text("campaign_id IS NOT NULL"),
            sqlite_where=sa.text("campaign_id IS NOT NULL"),
        ),
        sa.Index(
            "ix_event_variant_messages",
            "type",
            "experiment_id",
            "variant",
            "message_id",
            postgresql_include=["automated"],
            postgresql_where=sa.text("experiment_id IS NOT NULL"),
            sqlite_where=sa.text("experiment_id IS NOT NULL"),
        ),
    )

    id: int | None = Field(default=None, primary_key=True)
    event_id: str = Field(max_length=100, unique=True)
    type: str = Field(max_length=100)
    occurred_at: datetime = Field(sa_type=sa.DateTime(timezone=True))
    received_at: datetime = _ts()
    contact_id: int | None = Field(default=None)
    message_id: str | None = Field(default=None, max_length=64)
    campaign_id: int | None = Field(default=None)
    experiment_id: int | None = Field(default=None)
    variant: str | None = Field(default=None, max_length=100)
    provider: str | None = Field(default=None, max_length=50)
    properties: dict[str, Any] = _json({})
    #: A machine open (privacy proxy, image prefetch) or a link scanner's click.
    automated: bool = Field(default=False, sa_column_kwargs={"server_default": sa.false()})
    #: The recipient's domain on email events, for delivery health per mailbox provider.
    recipient_domain: str | None = Field(default=None, max_length=255)


class Experiment(SQLModel, table=True):
    """An A/B/n experiment on a campaign or trigger."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200, unique=True)
    status: str = Field(default="running", max_length=20)
    variants: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    holdout: float = Field(default=0.0, ge=0.0, lt=1.0)
    metric: str = Field(default="click", max_length=50)
    method: str = Field(default="sequential", max_length=50)
    alpha: float = Field(default=0.05)
    options: dict[str, Any] = _json({})
    state: dict[str, Any] = _json({})
    winner: str | None = Field(default=None, max_length=100)
    flagged: str | None = Field(default=None, max_length=200)
    created_at: datetime = _ts()
    decided_at: datetime | None = _ts_nullable()
    stopped_at: datetime | None = _ts_nullable()


class ApiKey(SQLModel, table=True):
    """An API key, stored only as a SHA-256 hash; ``prefix`` identifies it in listings."""

    __tablename__ = "api_key"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=100, unique=True)
    prefix: str = Field(max_length=16, index=True)
    key_hash: str = Field(max_length=64, unique=True)
    created_at: datetime = _ts()
    last_used_at: datetime | None = _ts_nullable()
    revoked_at: datetime | None = _ts_nullable()
    #: Comma-separated scopes (``read,send``); see :data:`postwise.apikeys.SCOPES`.
    scopes: str = Field(
        default="admin", max_length=200, sa_column_kwargs={"server_default": "admin"}
    )
    #: Requests per minute; ``None``: ``Settings.api_rate_limit_per_minute``.
    rate_limit: int | None = None


class CatalogueItem(SQLModel, table=True):
    """A recommendable item (product, article, course); inactive items are never recommended.

    Interactions with items are product events whose properties carry ``item_id``.
    """

    __tablename__ = "item"

    id: str = Field(primary_key=True, max_length=200)
    title: str = Field(max_length=500)
    url: str = Field(max_length=2000)
    image_url: str | None = Field(default=None, max_length=2000)
    attributes: dict[str, Any] = _json({})
    active: bool = Field(default=True)


class AuditRecord(SQLModel, table=True):
    """What was done, when, by whom; never personal data (subjects are hashed)."""

    __tablename__ = "audit_record"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = _ts()
    action: str = Field(max_length=50)
    subject_hash: str | None = Field(default=None, max_length=64)
    actor: str = Field(default="system", max_length=100)
    details: dict[str, Any] = _json({})


class Installation(SQLModel, table=True):
    """One row: this installation's random identity, made when its database was created.

    Message-IDs carry it, so two installations (or a rebuilt database) never give different
    mail the same Message-ID, which mailbox providers would drop as a duplicate.
    """

    __tablename__ = "installation"

    id: int = Field(default=1, primary_key=True)
    uid: str = Field(max_length=32)
    created_at: datetime = _ts()


class Journey(SQLModel, table=True):
    """A flow: a graph of steps contacts go through (see postwise.journeys)."""

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200, unique=True)
    active: bool = Field(default=True)
    #: The version new entrants get (the latest saved).
    version: int = Field(default=1)
    created_at: datetime = _ts()
    updated_at: datetime = _ts()


class JourneyVersion(SQLModel, table=True):
    """One saved definition of a journey; runs stay on the version they entered."""

    __tablename__ = "journey_version"
    __table_args__ = (sa.UniqueConstraint("journey_id", "version"),)

    id: int | None = Field(default=None, primary_key=True)
    journey_id: int = Field(foreign_key="journey.id")
    version: int
    definition: dict[str, Any] = _json({})
    created_at: datetime = _ts()


class JourneyRun(SQLModel, table=True):
    """One contact's pass through a journey: its durable position.

    ``seq`` counts the steps taken; every advance writes ``WHERE seq = <seq read>`` so two
    workers never both move a run, and side effects are keyed by ``(id, seq)`` so a replay
    after a crash repeats none of them.
    """

    __tablename__ = "journey_run"
    __table_args__ = (
        sa.Index("ix_journey_run_contact_status", "contact_id", "status"),
        sa.Index("ix_journey_run_journey_status_step", "journey_id", "status", "step"),
        sa.Index("ix_journey_run_journey_contact", "journey_id", "contact_id", "entered_at"),
        # What started the run (the entry event's id): an event read twice enters once.
        sa.UniqueConstraint("journey_id", "entry_key"),
    )

    id: int | None = Field(default=None, primary_key=True)
    journey_id: int = Field(foreign_key="journey.id")
    version: int
    contact_id: int
    entry_key: str = Field(max_length=200)
    step: str = Field(max_length=100)
    seq: int = Field(default=0)
    #: active (at a step, or waiting) or done.
    status: str = Field(default="active", max_length=20)
    #: The event type a wait step waits for (None when not waiting for an event).
    waiting_for: str | None = Field(default=None, max_length=100)
    due_at: datetime | None = _ts_nullable()
    exit_reason: str | None = Field(default=None, max_length=50)
    #: The entry event (id, type, occurred_at, properties): conditions are judged against it.
    event: dict[str, Any] = _json({})
    #: Per-run state: split choices, webhook attempts, the last send's message id.
    state: dict[str, Any] = _json({})
    entered_at: datetime = _ts()
    updated_at: datetime = _ts()


class UiUser(SQLModel, table=True):
    """A person who signs in to the web interface (API keys stay for machines).

    The password is kept only as a scrypt hash (memory-hard). ``session_version`` grows when the
    password or role changes, which signs every existing session of the user out.
    """

    __tablename__ = "ui_user"

    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(max_length=320, unique=True)
    password_hash: str = Field(max_length=200)
    role: str = Field(max_length=20)
    session_version: int = Field(default=1)
    disabled: bool = Field(default=False)
    created_at: datetime = _ts()
    last_login_at: datetime | None = _ts_nullable()
