"""Turning a claimed ledger row and its contact into a signed message ready for the provider.

One :class:`Composer` per process holds everything that must not be rebuilt per message: the
compiled, CSS-inlined templates (:class:`postwise.content.TemplateCache`, one compile per
template version), the DKIM signer, the parsed sender, the tracking configuration and the
recommender. Per message there is then one render, one MIME build and one signature.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from email.utils import parseaddr
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col

from postwise import tokens
from postwise.content import AssetConfig, TemplateCache, TemplateSource, TrackingConfig
from postwise.content.limits import limits_from_settings
from postwise.content.recommendations import RecommenderFn
from postwise.content.templates import CONTACT_FIELDS
from postwise.db.engine import id_in
from postwise.db.models import Contact, Template, TemplateVersion
from postwise.delivery.dkim import DkimSigner
from postwise.delivery.ledger import ClaimedRow
from postwise.delivery.message import Mailbox, build_message
from postwise.delivery.provider import OutgoingMessage
from postwise.errors import ConfigurationError, NotFoundError
from postwise.settings import Settings

__all__ = [
    "CONTACT_FIELDS",
    "Composer",
    "ContactData",
    "load_contacts",
    "no_recommendations",
    "recommender_function",
    "referenced_segments",
    "unsubscribe_url",
]


_UNSUBSCRIBE_TTL = 10 * 365 * 86400
_SEGMENT_TEST = re.compile(r"""["']([^"'\r\n]{1,200})["']\s+(?:not\s+)?in\s+segments\b""")


@dataclass(frozen=True, slots=True)
class ContactData:
    """A contact as rendering and the gate see it: columns, then attributes."""

    id: int
    email: str
    first_name: str | None
    last_name: str | None
    timezone: str
    country: str | None
    status: str
    engagement_score: float
    attributes: Mapping[str, Any]

    def merge_fields(self) -> dict[str, Any]:
        """The mapping templates see: attributes first, so a column always wins a clash."""
        fields: dict[str, Any] = dict(self.attributes) if self.attributes else {}
        fields.update(
            id=self.id,
            email=self.email,
            first_name=self.first_name,
            last_name=self.last_name,
            timezone=self.timezone,
            country=self.country,
            status=self.status,
            engagement_score=self.engagement_score,
        )
        return fields

    @property
    def display_name(self) -> str:
        return " ".join(p for p in (self.first_name, self.last_name) if p)


def load_contacts(session: Session, contact_ids: Iterable[int]) -> dict[int, ContactData]:
    """The contacts with these ids, in one query."""
    ids = list({i for i in contact_ids if i is not None})
    if not ids:
        return {}
    query = sa.select(
        col(Contact.id),
        col(Contact.email),
        col(Contact.first_name),
        col(Contact.last_name),
        col(Contact.timezone),
        col(Contact.country),
        col(Contact.status),
        col(Contact.engagement_score),
        col(Contact.attributes),
    ).where(id_in(col(Contact.id), ids, session.connection()))
    return {row[0]: ContactData(*row) for row in session.execute(query)}


def referenced_segments(source: TemplateSource) -> frozenset[str]:
    """Segment names a template tests membership of (``{% if "vip" in segments %}``)."""
    names: set[str] = set()
    for part in (source.subject, source.html, source.text or ""):
        names.update(_SEGMENT_TEST.findall(part))
    return frozenset(names)


def unsubscribe_url(settings: Settings, key: bytes, *, message_id: str, contact_id: int) -> str:
    """The one-click unsubscribe link of a message (RFC 8058), with a signed token."""
    token = tokens.sign(
        tokens.Purpose.UNSUBSCRIBE,
        {"c": contact_id, "m": message_id},
        key=key,
        ttl=_UNSUBSCRIBE_TTL,
    )
    return f"{settings.base_url}/u/{token}"


def recommender_function(recommender: Any, *, name: str) -> RecommenderFn:
    """Adapt a :class:`postwise.recommend.base.Recommender` to what templates call."""

    def recommend(contact_id: Any, n: int) -> list[Mapping[str, Any]]:
        return [item.to_dict() for item in recommender.recommend(int(contact_id), n)]

    recommend.__name__ = f"recommend_{name}"
    return recommend


def no_recommendations(contact_id: Any, n: int) -> list[Mapping[str, Any]]:
    """The recommender of last resort: recommendation blocks render empty."""
    return []


@dataclass(frozen=True, slots=True)
class _Version:
    source: TemplateSource
    segments: frozenset[str]


class Composer:
    """Renders, builds and signs messages; one per process, shared by its batches."""

    def __init__(
        self,
        settings: Settings,
        *,
        recommender: RecommenderFn | None = None,
        installation: str | None = None,
    ) -> None:
        self.settings = settings
        self.installation = installation
        host = settings.base_url.split("://", 1)[-1].split("/", 1)[0].lower()
        assets = (
            AssetConfig(settings.cdn_base_url, frozenset({host})) if settings.cdn_base_url else None
        )
        self.cache = TemplateCache(assets=assets, limits=limits_from_settings(settings))
        self._key = settings.signing_keys()[0]
        self.tracking = TrackingConfig(
            settings.base_url, self._key, ttl=settings.tracking_link_ttl_days * 86400.0
        )
        name, address = parseaddr(settings.sender)
        if not address or "@" not in address:
            raise ConfigurationError(
                f"sender {settings.sender!r} has no email address; set POSTWISE_SENDER to "
                "'Name <address@your-domain>'"
            )
        self.sender = Mailbox(address, name)
        self.sending_domain = (settings.dkim_domain or address.rpartition("@")[2]).lower()
        self.signer = _dkim_signer(settings)
        self.recommender = recommender
        self._versions: dict[tuple[int, int], _Version] = {}
        self._lock = threading.Lock()

    def prepare(self, session: Session, rows: Sequence[ClaimedRow]) -> None:
        """Load (once per process) the template versions ``rows`` need."""
        missing = {
            (row.template_id, row.template_version)
            for row in rows
            if row.template_id is not None and row.template_version is not None
        } - set(self._versions)
        for template_id, version in missing:
            found = session.execute(
                sa.select(TemplateVersion, col(Template.kind))
                .join(Template, col(Template.id) == col(TemplateVersion.template_id))
                .where(
                    col(TemplateVersion.template_id) == template_id,
                    col(TemplateVersion.version) == version,
                )
            ).first()
            if found is None:
                raise NotFoundError(f"template {template_id} has no version {version}")
            stored, kind = found
            source = TemplateSource(
                id=template_id,
                version=version,
                subject=stored.subject,
                html=stored.html,
                text=stored.text,
                kind=kind,
            )
            with self._lock:
                self._versions[(template_id, version)] = _Version(
                    source, referenced_segments(source)
                )

    def is_marketing(self, row: ClaimedRow) -> bool:
        """Whether ``row``'s template is marketing mail (needs consent, unsubscribe, cap)."""
        return str(self._version(row).source.kind) == "marketing"

    def segments_needed(self, rows: Iterable[ClaimedRow]) -> set[str]:
        """Every segment name the templates of ``rows`` test."""
        names: set[str] = set()
        for row in rows:
            names.update(self._version(row).segments)
        return names

    def compose(
        self,
        row: ClaimedRow,
        contact: ContactData,
        *,
        segments: Iterable[str] = (),
    ) -> OutgoingMessage:
        """The complete, signed message of ``row`` for ``contact``."""
        version = self._version(row)
        marketing = str(version.source.kind) == "marketing"
        fields = contact.merge_fields()
        fields["postal_address"] = self.settings.postal_address
        if row.context:
            # Send-request values come first in the template's eyes, except the contact's id
            # and address, which must match the recipient.
            fields.update({k: v for k, v in row.context.items() if k not in ("id", "email")})
        unsubscribe = (
            unsubscribe_url(self.settings, self._key, message_id=row.id, contact_id=contact.id)
            if marketing
            else None
        )
        content = self.cache.get(version.source).render(
            fields,
            message_id=row.id,
            segments=segments,
            recommender=self.recommender,
            unsubscribe_url=unsubscribe,
            tracking=self.tracking,
        )
        mailto = self.settings.unsubscribe_mailto
        raw = build_message(
            sender=self.sender,
            recipient=Mailbox(contact.email, contact.display_name),
            subject=content.subject,
            text=content.text,
            html=content.html,
            message_id=row.id,
            unsubscribe_url=unsubscribe,
            unsubscribe_mailto=(
                _mailto_with_token(mailto, unsubscribe) if marketing and mailto else None
            ),
            installation=self.installation,
        )
        if self.signer is not None:
            raw = self.signer.sign(raw)
        # ``stream`` tells ESP plugins marketing mail from transactional mail (unsubscribe
        # groups, list-management bypass, tags); ``campaign_id`` ties events to the campaign.
        metadata = {"stream": "marketing" if marketing else "transactional"}
        if row.campaign_id:
            metadata["campaign_id"] = str(row.campaign_id)
        return OutgoingMessage(
            message_id=row.id,
            sender=self.sender.address,
            recipient=contact.email,
            raw=raw,
            metadata=metadata,
        )

    def _version(self, row: ClaimedRow) -> _Version:
        key = (row.template_id or 0, row.template_version or 0)
        version = self._versions.get(key)
        if version is None:
            raise NotFoundError(
                f"template {row.template_id} version {row.template_version} was not prepared"
            )
        return version


def _mailto_with_token(mailto: str, url: str | None) -> str:
    """The unsubscribe mailto, its subject carrying the same token as the one-click link."""
    address = mailto.removeprefix("mailto:")
    if url is None:
        return address
    token = url.rsplit("/", 1)[-1]
    return f"mailto:{address}?subject=unsubscribe%20{token}"


def _dkim_signer(settings: Settings) -> DkimSigner | None:
    if not settings.dkim_domain:
        return None
    if settings.dkim_private_key_path is None:
        raise ConfigurationError(
            "dkim_domain is set but dkim_private_key_path is not; point it at an unencrypted "
            "PEM private key (postwise.delivery.dkim.generate_key() makes one) or unset dkim_domain"
        )
    try:
        pem = settings.dkim_private_key_path.read_bytes()
    except OSError as exc:
        raise ConfigurationError(
            f"cannot read the DKIM key {str(settings.dkim_private_key_path)!r}: {exc.strerror}"
        ) from None
    return DkimSigner(settings.dkim_selector, settings.dkim_domain, pem, settings.dkim_algorithm)
