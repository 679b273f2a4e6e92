"""The message ledger on the hot path: bulk inserts, atomic claims, conditional updates.

Every message has one row keyed by its deterministic id, so a second insert of the same message
does nothing. A delivery attempt *claims* rows with one conditional UPDATE (status ``queued`` or
``retrying`` → ``sending``, with the attempt's token and a lease): two workers given the same
batch (a re-delivered job, a retry racing a sweep) can never both claim a row. Every later write
of the attempt is conditional on its token, so a row recovered from an expired claim is never
overwritten by a late writer. This module speaks SQLAlchemy Core: at a million rows, ORM objects
would cost more than the sending.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from postwise.db.engine import id_in
from postwise.db.models import Message, MessageStatus, as_utc, utcnow
from postwise.delivery.requests import message_id_for

__all__ = [
    "MESSAGE",
    "PENDING_STATES",
    "ClaimedRow",
    "RowUpdate",
    "acceptance_times",
    "apply_updates",
    "campaign_message_id",
    "claim",
    "claims_held",
    "claims_of",
    "id_in",
    "insert_rows",
    "ledger_row",
    "overdue_rows",
    "pending_status",
    "postpone",
    "record_acceptances",
    "stale_claims",
]

MESSAGE: sa.Table = Message.__table__  # type: ignore[attr-defined]

#: States in which a row waits for an attempt.
PENDING_STATES = (MessageStatus.QUEUED.value, MessageStatus.RETRYING.value)

_CLAIMED_COLUMNS = (
    "id",
    "contact_id",
    "campaign_id",
    "trigger_id",
    "template_id",
    "template_version",
    "experiment_id",
    "variant",
    "provider",
    "attempts",
    "transactional",
    "context",
    "created_at",
    "consent_purpose",
    "deferred_since",
)


def campaign_message_id(campaign_id: int, contact_id: int) -> str:
    """The deterministic id of a campaign's message to one contact."""
    return message_id_for("campaign", campaign_id, contact_id)


def pending_status(attempts: int) -> str:
    """The status a row waiting for an attempt has: ``retrying`` once it has been tried."""
    return MessageStatus.RETRYING.value if attempts > 0 else MessageStatus.QUEUED.value


def ledger_row(
    message_id: str,
    *,
    contact_id: int,
    provider: str,
    template_id: int,
    template_version: int,
    now: datetime,
    campaign_id: int | None = None,
    trigger_id: int | None = None,
    experiment_id: int | None = None,
    variant: str | None = None,
    transactional: bool = False,
    context: Mapping[str, Any] | None = None,
    consent_purpose: str | None = None,
    status: str = MessageStatus.QUEUED.value,
    reason: str | None = None,
    due_by: datetime | None = None,
) -> dict[str, Any]:
    """A complete row for :func:`insert_rows` (Core inserts skip the models' Python defaults)."""
    return {
        "id": message_id,
        "contact_id": contact_id,
        "campaign_id": campaign_id,
        "trigger_id": trigger_id,
        "template_id": template_id,
        "template_version": template_version,
        "experiment_id": experiment_id,
        "variant": variant,
        "provider": provider,
        "status": status,
        "attempts": 0,
        "last_code": None,
        "last_status": None,
        "last_http_status": None,
        "last_error": reason,
        "provider_message_id": None,
        "transactional": transactional,
        "context": dict(context) if context else None,
        "consent_purpose": consent_purpose,
        "claim_token": None,
        "claimed_until": due_by,
        "deferred_since": None,
        "created_at": now,
        "updated_at": now,
        "sent_at": None,
    }


def insert_rows(connection: Connection, rows: Sequence[Mapping[str, Any]]) -> set[str]:
    """Insert ``rows``, ignoring ids that exist already; returns the ids actually inserted."""
    if not rows:
        return set()
    if connection.dialect.name == "postgresql":
        return _insert_unnest(connection, rows)
    from sqlalchemy.dialects.sqlite import insert as sqlite_insert

    statement = sqlite_insert(MESSAGE).on_conflict_do_nothing(index_elements=["id"])
    result = connection.execute(statement.returning(MESSAGE.c.id), list(rows))
    return {row[0] for row in result}


def _insert_unnest(connection: Connection, rows: Sequence[Mapping[str, Any]]) -> set[str]:
    # One array parameter per column: the statement stays short and psycopg parses it once.
    # (A multi-row VALUES list has a placeholder per value, and psycopg re-parses statements
    # with more than 50 of them on every execution: that cost more than the insert itself.)
    from psycopg.types.json import Json

    columns = list(MESSAGE.columns)
    arrays: dict[str, list[Any]] = {c.name: [] for c in columns}
    json_columns = {c.name for c in columns if isinstance(c.type, sa.JSON)}
    for row in rows:
        for name, values in arrays.items():
            value = row[name]
            values.append(Json(value) if name in json_columns and value is not None else value)
    casts = ", ".join(
        f"%({c.name})s::{c.type.compile(dialect=connection.dialect)}[]" for c in columns
    )
    names = ", ".join(c.name for c in columns)
    result = connection.exec_driver_sql(
        f"INSERT INTO message ({names}) SELECT * FROM unnest({casts}) "  # noqa: S608 - column names from the model
        "ON CONFLICT (id) DO NOTHING RETURNING id",
        arrays,
    )
    return {row[0] for row in result}


@dataclass(frozen=True, slots=True)
class ClaimedRow:
    """A ledger row held by one attempt: what rendering and recording need."""

    id: str
    contact_id: int | None
    campaign_id: int | None
    trigger_id: int | None
    template_id: int | None
    template_version: int | None
    experiment_id: int | None
    variant: str | None
    provider: str
    attempts: int
    transactional: bool
    context: Mapping[str, Any] | None
    #: When the message was queued (timezone-aware UTC).
    created_at: datetime
    #: The consent purpose the message needs (``message.consent_purpose``), checked before sending.
    consent_purpose: str | None = None
    #: When the provider first deferred the message (UTC), if it has:
    #: ``delivery_max_defer_hours`` counts from here.
    deferred_since: datetime | None = None


def _claimed(values: Sequence[Any]) -> ClaimedRow:
    row = ClaimedRow(*values)
    created, since = as_utc(row.created_at), as_utc(row.deferred_since)
    if created is not row.created_at or since is not row.deferred_since:
        row = dataclasses.replace(row, created_at=created, deferred_since=since)
    return row


def claim(
    connection: Connection,
    message_ids: Sequence[str],
    *,
    token: str,
    until: datetime,
    now: datetime | None = None,
) -> list[ClaimedRow]:
    """Claim the rows among ``message_ids`` that wait for an attempt; others are left alone."""
    if not message_ids:
        return []
    now = now or utcnow()
    statement = (
        MESSAGE.update()
        .where(id_in(MESSAGE.c.id, message_ids, connection), MESSAGE.c.status.in_(PENDING_STATES))
        .values(
            status=MessageStatus.SENDING.value,
            claim_token=token,
            claimed_until=until,
            updated_at=now,
        )
        .returning(*(MESSAGE.c[name] for name in _CLAIMED_COLUMNS))
    )
    rows = [_claimed(row) for row in connection.execute(statement)]
    order = {message_id: index for index, message_id in enumerate(message_ids)}
    rows.sort(key=lambda row: order.get(row.id, 0))
    return rows


def stale_claims(
    connection: Connection,
    *,
    now: datetime,
    message_ids: Sequence[str] | None = None,
    limit: int = 10_000,
) -> dict[str, list[ClaimedRow]]:
    """Rows whose claim expired (their attempt died), grouped by the dead attempt's token."""
    query = sa.select(*(MESSAGE.c[name] for name in _CLAIMED_COLUMNS), MESSAGE.c.claim_token).where(
        MESSAGE.c.status == MessageStatus.SENDING.value, MESSAGE.c.claimed_until < now
    )
    if message_ids is not None:
        query = query.where(id_in(MESSAGE.c.id, message_ids, connection))
    grouped: dict[str, list[ClaimedRow]] = {}
    for *values, token in connection.execute(query.limit(limit)):
        grouped.setdefault(token or "", []).append(_claimed(values))
    return grouped


def claims_held(
    connection: Connection,
    *,
    now: datetime,
    message_ids: Sequence[str] | None = None,
) -> list[str]:
    """The tokens of the attempts whose claims have not expired yet."""
    query = (
        sa.select(MESSAGE.c.claim_token)
        .where(
            MESSAGE.c.status == MessageStatus.SENDING.value,
            MESSAGE.c.claimed_until >= now,
            MESSAGE.c.claim_token.is_not(None),
        )
        .distinct()
    )
    if message_ids is not None:
        query = query.where(id_in(MESSAGE.c.id, message_ids, connection))
    return [row[0] for row in connection.execute(query)]


def claims_of(
    connection: Connection, tokens: Sequence[str], *, limit: int = 10_000
) -> dict[str, list[ClaimedRow]]:
    """The rows attempts ``tokens`` still hold, grouped by token."""
    if not tokens:
        return {}
    query = sa.select(*(MESSAGE.c[name] for name in _CLAIMED_COLUMNS), MESSAGE.c.claim_token).where(
        MESSAGE.c.status == MessageStatus.SENDING.value,
        id_in(MESSAGE.c.claim_token, tokens, connection),
    )
    grouped: dict[str, list[ClaimedRow]] = {}
    for *values, token in connection.execute(query.limit(limit)):
        grouped.setdefault(token, []).append(_claimed(values))
    return grouped


def overdue_rows(
    connection: Connection, *, now: datetime, limit: int = 10_000
) -> list[tuple[str, str]]:
    """``(id, provider)`` of waiting rows whose next attempt was due by a time now past.

    Rows get a due-by time when they are released for a retry or a deferral, or submitted as a
    send request; a job that was lost between the ledger write and the queue leaves them here.
    """
    query = (
        sa.select(MESSAGE.c.id, MESSAGE.c.provider)
        .where(
            MESSAGE.c.status.in_(PENDING_STATES),
            MESSAGE.c.claimed_until.is_not(None),
            MESSAGE.c.claimed_until < now,
        )
        .limit(limit)
    )
    return [(row[0], row[1]) for row in connection.execute(query)]


def postpone(
    connection: Connection, message_ids: Iterable[str], *, due_by: datetime, now: datetime
) -> None:
    """Move the due-by time of waiting rows (after re-enqueueing them)."""
    ids = list(message_ids)
    if not ids:
        return
    connection.execute(
        MESSAGE.update()
        .where(id_in(MESSAGE.c.id, ids, connection), MESSAGE.c.status.in_(PENDING_STATES))
        .values(claimed_until=due_by, updated_at=now)
    )


@dataclass(frozen=True, slots=True)
class RowUpdate:
    """The new state of one claimed row; applied only while the claim is still ours."""

    id: str
    status: str
    attempts: int
    #: The SMTP reply code, and nothing else (an HTTP API's status goes in ``last_http_status``).
    last_code: int | None = None
    last_status: str | None = None
    last_http_status: int | None = None
    last_error: str | None = None
    provider_message_id: str | None = None
    sent_at: datetime | None = None
    #: For rows going back to waiting: when their next attempt is due at the latest.
    due_by: datetime | None = None
    #: For a provider deferral: when the provider first deferred the row. Kept once set (the
    #: statement only fills it when empty) until ``reset_deferral`` clears it.
    deferred_since: datetime | None = None
    #: Clear ``deferred_since``: the provider tried the message (a transient failure), or a
    #: reputation pause holds it, so the deferral limit starts again at the next deferral.
    reset_deferral: bool = False


_UPDATE = (
    MESSAGE.update()
    .where(
        MESSAGE.c.id == sa.bindparam("b_id"),
        MESSAGE.c.claim_token == sa.bindparam("b_token"),
    )
    .values(
        status=sa.bindparam("b_status"),
        attempts=sa.bindparam("b_attempts"),
        last_code=sa.bindparam("b_code"),
        last_status=sa.bindparam("b_enhanced"),
        last_http_status=sa.bindparam("b_http_status"),
        last_error=sa.bindparam("b_error"),
        provider_message_id=sa.bindparam("b_provider_id"),
        sent_at=sa.bindparam("b_sent_at"),
        claim_token=None,
        claimed_until=sa.bindparam("b_due_by"),
        deferred_since=sa.case(
            (sa.bindparam("b_reset_deferral", type_=sa.Boolean()), sa.null()),
            else_=sa.func.coalesce(
                MESSAGE.c.deferred_since,
                sa.bindparam("b_deferred_since", type_=sa.DateTime(timezone=True)),
            ),
        ),
        updated_at=sa.bindparam("b_now"),
    )
)


def apply_updates(
    connection: Connection, token: str, updates: Sequence[RowUpdate], *, now: datetime
) -> None:
    """Write ``updates`` to rows still claimed by ``token`` (one executemany)."""
    if not updates:
        return
    connection.execute(
        _UPDATE,
        [
            {
                "b_id": u.id,
                "b_token": token,
                "b_status": u.status,
                "b_attempts": u.attempts,
                "b_code": u.last_code,
                "b_enhanced": (u.last_status or "")[:20] or None,
                "b_http_status": u.last_http_status,
                "b_error": (u.last_error or "")[:1000] or None,
                "b_provider_id": (u.provider_message_id or "")[:200] or None,
                "b_sent_at": u.sent_at,
                "b_due_by": u.due_by,
                "b_deferred_since": u.deferred_since,
                "b_reset_deferral": u.reset_deferral,
                "b_now": now,
            }
            for u in updates
        ],
    )


def record_acceptances(
    connection: Connection, token: str, accepted: Sequence[tuple[str, datetime]]
) -> None:
    """Write each message's own acceptance time as ``sent_at`` while attempt ``token`` still
    holds it (before the batch settles; the status stays ``sending`` until then)."""
    if not accepted:
        return
    connection.execute(
        MESSAGE.update()
        .where(
            MESSAGE.c.id == sa.bindparam("b_id"),
            MESSAGE.c.claim_token == sa.bindparam("b_token"),
        )
        .values(sent_at=sa.bindparam("b_at")),
        [{"b_id": message_id, "b_token": token, "b_at": at} for message_id, at in accepted],
    )


def acceptance_times(connection: Connection, message_ids: Sequence[str]) -> dict[str, datetime]:
    """When each of ``message_ids`` was accepted by its provider (UTC), for those accepted.

    The time is the message's own (the relay's 250, the API's answer), recorded within a
    fraction of a second of the acceptance even while the rest of its batch is being sent:
    what classifying an open or a click by its delay after delivery needs. Messages not
    accepted (yet) are absent.
    """
    if not message_ids:
        return {}
    rows = connection.execute(
        sa.select(MESSAGE.c.id, MESSAGE.c.sent_at).where(
            id_in(MESSAGE.c.id, message_ids, connection), MESSAGE.c.sent_at.is_not(None)
        )
    )
    return {row[0]: as_utc(row[1]) for row in rows if row[1] is not None}
