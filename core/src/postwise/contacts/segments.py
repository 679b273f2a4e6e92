"""Segments: static lists and rule-based segments compiled to SQL.

A rule segment is a JSON tree evaluated by the database, so counting or streaming a segment of
millions never loads every contact into memory. The rule language:

* ``{"all": [RULE, ...]}``, ``{"any": [RULE, ...]}``, ``{"not": RULE}``;
* ``{"field": NAME, "op": OP, "value": VALUE}`` where NAME is a contact column (``email``,
  ``first_name``, ``last_name``, ``timezone``, ``country``, ``status``, ``engagement_score``,
  ``created_at``) or ``attributes.<key>``, and OP one of ``eq ne gt gte lt lte in not_in contains
  starts_with ends_with exists not_exists``;
* ``{"tag": "vip"}``: the contact has the tag;
* ``{"consent": "marketing"}``: the latest consent for that purpose is granted and confirmed;
* ``{"segment": "other"}``: membership of another segment (cycles are rejected);
* ``{"status": "active"}`` and ``{"timezone": ["Europe/Paris", ...]}``: shorthands.

A segment's ``consent_purpose`` (``"newsletter"``) makes it a consent list: every marketing send to
it needs the contact's latest consent record for that purpose to be granted and confirmed, on top
of the global and regional rules (:mod:`postwise.compliance.gate`).

Later work adds rules over event history through the same compiler.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import Session, col, select

from postwise.contacts.normalize import check_purpose
from postwise.db.models import ConsentRecord, Contact, ContactTag, Segment, SegmentMember
from postwise.errors import NotFoundError, ValidationError

__all__ = [
    "OPERATORS",
    "contacts_in_segment",
    "count_segment",
    "get_segment",
    "iter_segment_ids",
    "segment_condition",
    "segment_query",
    "segments_of",
    "set_consent_purpose",
    "validate_rules",
]

COLUMNS: dict[str, Any] = {
    "id": Contact.id,
    "email": Contact.email,
    "first_name": Contact.first_name,
    "last_name": Contact.last_name,
    "timezone": Contact.timezone,
    "country": Contact.country,
    "status": Contact.status,
    "engagement_score": Contact.engagement_score,
    "created_at": Contact.created_at,
    "updated_at": Contact.updated_at,
}
OPERATORS = frozenset(
    {
        "eq",
        "ne",
        "gt",
        "gte",
        "lt",
        "lte",
        "in",
        "not_in",
        "contains",
        "starts_with",
        "ends_with",
        "exists",
        "not_exists",
    }
)
_MAX_DEPTH = 20


def get_segment(session: Session, name_or_id: str | int) -> Segment:
    """The segment called (or numbered) ``name_or_id``."""
    if isinstance(name_or_id, int) or str(name_or_id).isdigit():
        number = int(name_or_id)
        # Ids are 32-bit: a larger number names no segment (and PostgreSQL would refuse it).
        segment = session.get(Segment, number) if 0 < number < 2**31 else None
    else:
        segment = session.exec(select(Segment).where(Segment.name == name_or_id)).first()
    if segment is None:
        raise NotFoundError(f"no segment {name_or_id!r}")
    return segment


def set_consent_purpose(segment: Segment, purpose: object) -> None:
    """Make marketing to ``segment`` need valid consent for ``purpose`` (None: no list consent).

    The purpose must be one the consent ledger can record (see
    :func:`postwise.contacts.normalize.check_purpose`); a bad one raises ValidationError naming
    ``consent_purpose``. Campaigns dispatched afterwards enforce it; messages already queued keep
    the purpose they were queued with.
    """
    segment.consent_purpose = (
        None if purpose is None else check_purpose(purpose, field="consent_purpose")
    )


def validate_rules(rules: Mapping[str, Any], *, session: Session | None = None) -> None:
    """Check a rule tree's shape; errors name the path of the bad node (``rules.all[1].op``)."""
    _compile(rules, "rules", session, seen=(), depth=0, dry=True)


def segment_condition(session: Session, segment: Segment) -> ColumnElement[bool]:
    """A WHERE clause over ``contact`` selecting the segment's members."""
    return _segment_clause(session, segment, seen=(), depth=0)


def _segment_clause(
    session: Session, segment: Segment, *, seen: tuple[str, ...], depth: int
) -> ColumnElement[bool]:
    if segment.kind == "static":
        members = select(SegmentMember.contact_id).where(SegmentMember.segment_id == segment.id)
        return col(Contact.id).in_(members)
    return _compile(segment.rules, "rules", session, seen=(*seen, segment.name), depth=depth)


def segment_query(session: Session, segment: Segment) -> sa.Select[Any]:
    """``SELECT contact.id`` of the segment's members, ordered by id."""
    return (
        sa.select(col(Contact.id))
        .where(segment_condition(session, segment))
        .order_by(col(Contact.id))
    )


def count_segment(session: Session, segment: Segment) -> int:
    query = (
        sa.select(sa.func.count()).select_from(Contact).where(segment_condition(session, segment))
    )
    return int(session.execute(query).scalar_one())


def iter_segment_ids(
    session: Session,
    segment: Segment | None,
    *,
    page_size: int = 5000,
    extra: ColumnElement[bool] | None = None,
) -> Iterator[list[int]]:
    """Pages of member ids in id order (keyset pagination: memory stays bounded).

    ``segment=None`` means every contact. ``extra`` adds a condition (for example on status).
    """
    where: list[ColumnElement[bool]] = []
    if segment is not None:
        where.append(segment_condition(session, segment))
    if extra is not None:
        where.append(extra)
    last = 0
    while True:
        query = sa.select(col(Contact.id)).where(col(Contact.id) > last, *where)
        ids = [row[0] for row in session.execute(query.order_by(col(Contact.id)).limit(page_size))]
        if not ids:
            return
        yield ids
        last = ids[-1]


def contacts_in_segment(
    session: Session, segment_name: str, contact_ids: Iterable[int]
) -> set[int]:
    """Which of ``contact_ids`` belong to the segment (one query for the whole batch)."""
    ids = list(contact_ids)
    if not ids:
        return set()
    segment = get_segment(session, segment_name)
    query = sa.select(col(Contact.id)).where(
        col(Contact.id).in_(ids), segment_condition(session, segment)
    )
    return {row[0] for row in session.execute(query)}


def segments_of(session: Session, contact_ids: Sequence[int]) -> dict[int, set[str]]:
    """The names of every segment each contact belongs to (one query per segment)."""
    result: dict[int, set[str]] = {cid: set() for cid in contact_ids}
    if not contact_ids:
        return result
    for segment in session.exec(select(Segment)):
        for cid in contacts_in_segment(session, segment.name, contact_ids):
            result[cid].add(segment.name)
    return result


def _compile(
    node: Any,
    path: str,
    session: Session | None,
    *,
    seen: tuple[str, ...],
    depth: int,
    dry: bool = False,
) -> ColumnElement[bool]:
    if depth > _MAX_DEPTH:
        raise ValidationError(f"rules nest deeper than {_MAX_DEPTH} levels", field=path)
    if not isinstance(node, Mapping) or not node:
        raise ValidationError("each rule must be a non-empty JSON object", field=path)
    if "all" in node or "any" in node:
        key = "all" if "all" in node else "any"
        children = node[key]
        if not isinstance(children, list) or not children:
            raise ValidationError(f"'{key}' needs a non-empty list of rules", field=f"{path}.{key}")
        parts = [
            _compile(child, f"{path}.{key}[{i}]", session, seen=seen, depth=depth + 1, dry=dry)
            for i, child in enumerate(children)
        ]
        return sa.and_(*parts) if key == "all" else sa.or_(*parts)
    if "not" in node:
        return sa.not_(
            _compile(node["not"], f"{path}.not", session, seen=seen, depth=depth + 1, dry=dry)
        )
    if "tag" in node:
        tag = node["tag"]
        if not isinstance(tag, str) or not tag:
            raise ValidationError("'tag' must be a non-empty string", field=f"{path}.tag")
        return col(Contact.id).in_(
            select(col(ContactTag.contact_id)).where(col(ContactTag.tag) == tag)
        )
    if "consent" in node:
        return _consent_clause(node["consent"], f"{path}.consent")
    if "segment" in node:
        name = node["segment"]
        if not isinstance(name, str):
            raise ValidationError("'segment' must be a segment name", field=f"{path}.segment")
        if name in seen:
            raise ValidationError(
                f"segment {name!r} refers back to itself ({' -> '.join((*seen, name))})",
                field=f"{path}.segment",
            )
        if session is None:
            return sa.true()
        try:
            other = get_segment(session, name)
        except NotFoundError:
            raise ValidationError(f"no segment called {name!r}", field=f"{path}.segment") from None
        return _segment_clause(session, other, seen=seen, depth=depth + 1)
    if "status" in node:
        return _field_clause(
            {
                "field": "status",
                "op": "in" if isinstance(node["status"], list) else "eq",
                "value": node["status"],
            },
            path,
        )
    if "timezone" in node:
        value = node["timezone"]
        return _field_clause(
            {"field": "timezone", "op": "in" if isinstance(value, list) else "eq", "value": value},
            path,
        )
    if "field" in node:
        return _field_clause(node, path)
    raise ValidationError(
        "unknown rule; use one of all, any, not, field, tag, consent, segment, status, timezone",
        field=path,
    )


def _consent_clause(purpose: Any, path: str) -> ColumnElement[bool]:
    if not isinstance(purpose, str) or not purpose:
        raise ValidationError("'consent' must name a purpose such as 'marketing'", field=path)
    latest = (
        sa.select(sa.func.max(col(ConsentRecord.at)))
        .where(
            col(ConsentRecord.contact_id) == col(Contact.id), col(ConsentRecord.purpose) == purpose
        )
        .correlate(Contact)
        .scalar_subquery()
    )
    granted = (
        sa.select(col(ConsentRecord.id))
        .where(
            col(ConsentRecord.contact_id) == col(Contact.id),
            col(ConsentRecord.purpose) == purpose,
            col(ConsentRecord.granted).is_(True),
            col(ConsentRecord.confirmed).is_(True),
            col(ConsentRecord.at) == latest,
        )
        .correlate(Contact)
    )
    return sa.exists(granted)


def _field_clause(node: Mapping[str, Any], path: str) -> ColumnElement[bool]:
    name = node.get("field")
    op = node.get("op", "eq")
    value = node.get("value")
    if op not in OPERATORS:
        raise ValidationError(
            f"unknown operator {op!r}; use one of {', '.join(sorted(OPERATORS))}",
            field=f"{path}.op",
        )
    if not isinstance(name, str):
        raise ValidationError("'field' must be a string", field=f"{path}.field")
    if name.startswith("attributes."):
        key = name.removeprefix("attributes.")
        if not key:
            raise ValidationError("name the attribute: attributes.<key>", field=f"{path}.field")
        element = col(Contact.attributes)[key]
        if op in ("exists", "not_exists"):
            present = element.as_string().isnot(None) | element.as_float().isnot(None)
            return present if op == "exists" else sa.not_(present)
        sample = value[0] if isinstance(value, list) and value else value
        if isinstance(sample, bool):
            column = element.as_boolean()
        elif isinstance(sample, int | float):
            column = element.as_float()
        else:
            column = element.as_string()
    elif name in COLUMNS:
        column = COLUMNS[name]
        if op in ("exists", "not_exists"):
            return column.isnot(None) if op == "exists" else column.is_(None)
        if name in ("created_at", "updated_at") and isinstance(value, str):
            try:
                value = datetime.fromisoformat(value)
            except ValueError:
                raise ValidationError(
                    "must be an ISO 8601 timestamp", field=f"{path}.value"
                ) from None
    else:
        raise ValidationError(
            f"unknown field {name!r}; use attributes.<key> or one of {', '.join(sorted(COLUMNS))}",
            field=f"{path}.field",
        )
    if op in ("in", "not_in"):
        if not isinstance(value, list) or not value:
            raise ValidationError(f"'{op}' needs a non-empty list", field=f"{path}.value")
        clause = column.in_(value)
        return clause if op == "in" else sa.not_(clause)
    if value is None:
        raise ValidationError(f"'{op}' needs a value", field=f"{path}.value")
    if op in ("contains", "starts_with", "ends_with"):
        if not isinstance(value, str):
            raise ValidationError(f"'{op}' needs a string", field=f"{path}.value")
        escaped = value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
        pattern = {
            "contains": f"%{escaped}%",
            "starts_with": f"{escaped}%",
            "ends_with": f"%{escaped}",
        }[op]
        return column.like(pattern, escape="\\")
    comparisons = {
        "eq": column.__eq__,
        "ne": column.__ne__,
        "gt": column.__gt__,
        "gte": column.__ge__,
        "lt": column.__lt__,
        "lte": column.__le__,
    }
    result: ColumnElement[bool] = comparisons[op](value)
    return result
