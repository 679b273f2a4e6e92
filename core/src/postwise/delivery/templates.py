"""Templates as stored: a named template with immutable, validated versions.

A version is checked when it is saved, never at send time: Jinja syntax (with line numbers),
unknown variables, filters and tests, unsafe attribute access, and for marketing templates the
CAN-SPAM rules (a postal address and a working unsubscribe link). A template may use the contact
fields, the names :mod:`postwise.content` reserves (``contact``, ``segments``,
``recommendations``, ``unsubscribe_url``), ``postal_address``, and the ``variables`` declared
when saving (contact attributes and send-request context values such as ``order_id``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from postwise.compliance.canspam import require_marketing_template
from postwise.content import TemplateCache, TemplateSource, assert_valid_template
from postwise.content.limits import TemplateLimitError, limits_from_settings
from postwise.content.recommendations import RecommenderFn
from postwise.content.templates import TemplateKind, known_variables
from postwise.db.models import Template, TemplateVersion
from postwise.delivery.compose import no_recommendations
from postwise.errors import ConflictError, NotFoundError, TemplateError, ValidationError
from postwise.settings import Settings

__all__ = [
    "add_version",
    "check_template",
    "create_template",
    "get_template",
    "get_version",
    "known_variables",
    "preview",
    "template_dict",
]

_NAME_LIMIT = 200
#: Characters in one part of a template as written (Gmail clips messages beyond about 100 kB).
_SOURCE_LIMIT = 500_000


def check_template(
    settings: Settings,
    *,
    subject: str,
    html: str,
    text: str | None,
    kind: str,
    variables: Iterable[str] = (),
) -> None:
    """Raise TemplateError (or ComplianceError for CAN-SPAM) unless the template may be saved."""
    try:
        TemplateKind(kind)
    except ValueError:
        raise ValidationError(
            f"kind {kind!r} is unknown; use 'marketing' or 'transactional'", field="kind"
        ) from None
    for part, source in (("subject", subject), ("html", html), ("text", text or "")):
        if len(source) > _SOURCE_LIMIT:
            raise ValidationError(
                f"the {part} is {len(source):,} characters; the limit is {_SOURCE_LIMIT:,}",
                field=part,
            )
    names = known_variables(variables)
    assert_valid_template(subject, html, text, known_variables=names, kind=kind)
    _trial_render(settings, subject=subject, html=html, text=text, kind=kind, names=names)
    if kind == TemplateKind.MARKETING:
        require_marketing_template(html, text, postal_address=settings.postal_address)


def _trial_render(
    settings: Settings,
    *,
    subject: str,
    html: str,
    text: str | None,
    kind: str,
    names: Iterable[str],
) -> None:
    """Render the template once for a contact with every field empty, under the render limits.

    A template whose cost does not depend on the contact (``[0] * 50000000``, nested loops over
    ``range(99999)``) is refused here, with the limit it exceeds, instead of failing every
    message of a campaign. Other render errors are left to previews: with made-up empty values
    a template that does arithmetic on a field may fail where real data would not.
    """
    source = TemplateSource(id="trial", version=0, subject=subject, html=html, text=text, kind=kind)
    fields: dict[str, Any] = dict.fromkeys(names, "")
    fields.update(id=0, postal_address=settings.postal_address)
    try:
        TemplateCache(max_entries=1, limits=limits_from_settings(settings)).get(source).render(
            fields,
            message_id="trial",
            recommender=no_recommendations,
            unsubscribe_url=f"{settings.base_url}/u/trial",
        )
    except TemplateLimitError as exc:
        raise TemplateLimitError(f"template is too costly to render: {exc}", field="html") from exc
    except TemplateError:
        pass


def create_template(
    session: Session,
    settings: Settings,
    *,
    name: str,
    subject: str,
    html: str,
    text: str | None = None,
    kind: str = TemplateKind.MARKETING.value,
    variables: Iterable[str] = (),
) -> Template:
    """Create template ``name`` with its first version (validated)."""
    name = name.strip()
    if not name or len(name) > _NAME_LIMIT:
        raise ValidationError(f"must be 1-{_NAME_LIMIT} characters", field="name")
    if session.exec(select(Template).where(Template.name == name)).first() is not None:
        raise ConflictError(f"a template called {name!r} exists; add a version to it instead")
    check_template(settings, subject=subject, html=html, text=text, kind=kind, variables=variables)
    template = Template(name=name, kind=kind, current_version=1)
    session.add(template)
    session.flush()
    assert template.id is not None
    session.add(
        TemplateVersion(template_id=template.id, version=1, subject=subject, html=html, text=text)
    )
    session.flush()
    return template


def add_version(
    session: Session,
    settings: Settings,
    template_id: int,
    *,
    subject: str,
    html: str,
    text: str | None = None,
    variables: Iterable[str] = (),
) -> TemplateVersion:
    """Save a new version of a template and make it current (campaigns pin their version)."""
    template = get_template(session, template_id)
    check_template(
        settings, subject=subject, html=html, text=text, kind=template.kind, variables=variables
    )
    latest = session.execute(
        sa.select(sa.func.max(col(TemplateVersion.version))).where(
            col(TemplateVersion.template_id) == template_id
        )
    ).scalar_one()
    version = TemplateVersion(
        template_id=template_id,
        version=int(latest or 0) + 1,
        subject=subject,
        html=html,
        text=text,
    )
    session.add(version)
    template.current_version = version.version
    session.add(template)
    session.flush()
    return version


def get_template(session: Session, template_id_or_name: int | str) -> Template:
    """The template with this id or name."""
    if isinstance(template_id_or_name, int) or str(template_id_or_name).isdigit():
        template = session.get(Template, int(template_id_or_name))
    else:
        template = session.exec(
            select(Template).where(Template.name == template_id_or_name)
        ).first()
    if template is None:
        raise NotFoundError(f"no template {template_id_or_name!r}")
    return template


def get_version(session: Session, template_id: int, version: int | None = None) -> TemplateVersion:
    """A version of a template (the current one when ``version`` is None)."""
    template = get_template(session, template_id)
    number = template.current_version if version is None else version
    found = session.exec(
        select(TemplateVersion).where(
            TemplateVersion.template_id == template_id, TemplateVersion.version == number
        )
    ).first()
    if found is None:
        raise NotFoundError(f"template {template_id} has no version {number}")
    return found


def template_dict(template: Template, version: TemplateVersion | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": template.id,
        "name": template.name,
        "kind": template.kind,
        "current_version": template.current_version,
        "created_at": template.created_at.isoformat() if template.created_at else None,
    }
    if version is not None:
        data["version"] = {
            "version": version.version,
            "subject": version.subject,
            "html": version.html,
            "text": version.text,
            "created_at": version.created_at.isoformat() if version.created_at else None,
        }
    return data


def preview(
    session: Session,
    settings: Settings,
    template_id: int,
    *,
    fields: Mapping[str, Any],
    version: int | None = None,
    segments: Iterable[str] = (),
    recommender: RecommenderFn | None = None,
) -> dict[str, str]:
    """Render a version for ``fields`` (a contact's or made-up values), without tracking."""

    template = get_template(session, template_id)
    stored = get_version(session, template_id, version)
    source = TemplateSource(
        id=template_id,
        version=stored.version,
        subject=stored.subject,
        html=stored.html,
        text=stored.text,
        kind=template.kind,
    )
    merged = {"postal_address": settings.postal_address, "id": 0, **fields}
    content = (
        TemplateCache(max_entries=1, limits=limits_from_settings(settings))
        .get(source)
        .render(
            merged,
            message_id="preview",
            segments=segments,
            recommender=recommender or no_recommendations,
            unsubscribe_url=f"{settings.base_url}/u/preview",
        )
    )
    return {"subject": content.subject, "html": content.html, "text": content.text}
