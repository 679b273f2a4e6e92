"""Contacts in from the CRM: the periodic poll and the changes webhooks announce.

Both paths end in :func:`apply_changes`, which is idempotent: a record whose CRM
``updated_at`` is not newer than the one last applied for its link changes nothing, so a
re-run poll, an overlapping poll window or a redelivered webhook is harmless.

What a CRM record does to postwise:

* **new** (no link): the contact is found by normalised email or created through
  :func:`postwise.contacts.service.upsert_contact` (validation, normalisation and the
  contact-changed hook, source ``crm:<system>``), then linked (``CrmLink``);
* **changed**: fields are merged per field (see below); a changed address moves the contact to
  the new address unless another contact has it;
* **deleted in the CRM**: the link is removed and the contact **kept** (unlink, not erase:
  deleting a CRM record is a sales decision, not the person's erasure request; erase with
  ``postwise privacy erase`` when it is one);
* **opted out of email in the CRM** (``unsubscribed``): the contact is unsubscribed through
  :func:`postwise.compliance.unsubscribe.unsubscribe`. The reverse never happens: a CRM cannot
  resubscribe anyone (that takes the person's own consent confirmation);
* **an address postwise erased** is never re-created from a CRM: the record is skipped.

Conflict rules (per field: the profile fields ``email``, ``first_name``, ``last_name``,
``country``, ``timezone`` and each attribute): the link keeps a short hash of each value the
CRM had at the last sync. A field only the CRM changed takes the CRM's value; a field only
postwise changed keeps postwise's; a field both changed goes to the last writer, the CRM's
``updated_at`` against the contact's ``updated_at`` (a tie goes to the CRM, the system of
record for profiles). A value the CRM leaves empty never clears postwise's, and a field postwise
leaves empty always takes the CRM's value. Status, consent
and engagement are postwise's own and never taken from a CRM.

Polling: :func:`poll` asks the connector for changes since the stored cursor (less
:data:`POLL_OVERLAP`, because CRM search indexes lag and long transactions commit late), applies
them in chunks, and stores the newest ``updated_at`` seen as the new cursor: after each chunk
when the connector reads oldest first (a killed poll resumes there), else once the whole window
is applied, so a failed poll is simply repeated. Deletions a CRM's change feed lacks are
reconciled every :attr:`~postwise.crm.connector.CrmConnector.reconcile_interval`. One poll per
CRM runs at a time (a Redis lock).
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import sqlalchemy.exc
from pydantic import ValidationError as PydanticValidationError
from sqlmodel import Session, select

from postwise.compliance.suppression import SuppressionReason
from postwise.compliance.unsubscribe import unsubscribe
from postwise.contacts.normalize import email_hash
from postwise.contacts.service import ContactData, notify_changed, upsert_contact
from postwise.crm.connector import PROFILE_FIELDS, CrmConnector, CrmContact
from postwise.db.models import Contact, CrmLink, CrmSyncState, Suppression, as_utc, utcnow
from postwise.errors import ConflictError, NotFoundError, ValidationError
from postwise.plugins import CRM_CONNECTORS

if TYPE_CHECKING:
    from postwise.runtime import Runtime

__all__ = [
    "POLL_OVERLAP",
    "RunLock",
    "SyncReport",
    "apply_changes",
    "configured_systems",
    "connector_for",
    "poll",
    "require_valid_system",
    "source_for",
    "value_digest",
]

log = logging.getLogger(__name__)

#: How far before the stored cursor each poll starts again.
POLL_OVERLAP = timedelta(minutes=2)
#: Records applied per database transaction.
CHUNK_SIZE = 200
#: Errors a report keeps (the counts stay exact).
MAX_ERRORS = 50
LOCK_SECONDS = 900
_SYNCED_FIELDS = ("email", *PROFILE_FIELDS)
#: Property names a CRM may not set, as fields or as attributes: postwise owns them.
RESERVED_PROPERTIES = frozenset(
    {
        "email",
        "status",
        "consent",
        "engagement_score",
        "engagement_updated_at",
        "tags",
        "unsubscribed",
    }
)


def source_for(system: str) -> str:
    """The ``source`` of contact changes made by syncing ``system``."""
    return f"crm:{system}"


def configured_systems(runtime: Runtime) -> list[str]:
    """The CRMs to sync: those with an entry in the ``crm_options`` setting."""
    return sorted(runtime.settings.crm_options)


def connector_for(runtime: Runtime, system: str) -> CrmConnector:
    """The connector of ``system``, built once per runtime from ``crm_options[system]``.

    Raises NotFoundError when ``system`` is not configured and ConfigurationError (listing what
    is installed) when no plugin provides it.
    """
    options = runtime.settings.crm_options.get(system)
    if options is None:
        configured = ", ".join(configured_systems(runtime)) or "none"
        raise NotFoundError(
            f"CRM {system!r} is not configured (configured: {configured}); set its options, "
            f"e.g. POSTWISE_CRM_OPTIONS__{system.upper()}__..., in the environment or the "
            f"[crm_options.{system}] table of the config file"
        )

    def build() -> CrmConnector:
        factory = runtime.component(CRM_CONNECTORS, system)
        return factory(runtime.settings, dict(options))

    return runtime.shared(("crm-connector", system), build, close=lambda c: c.close())


@dataclass(slots=True)
class SyncReport:
    """What one poll or one webhook did. Holds no personal data (records by CRM id only)."""

    system: str
    received: int = 0
    created: int = 0
    updated: int = 0
    unchanged: int = 0
    unlinked: int = 0
    unsubscribed: int = 0
    #: Fields where postwise's newer value was kept over the CRM's.
    conflicts: int = 0
    skipped_erased: int = 0
    invalid: int = 0
    errors: list[str] = field(default_factory=list)
    cursor: str | None = None

    def error(self, message: str) -> None:
        if len(self.errors) < MAX_ERRORS:
            self.errors.append(message)

    def merge(self, other: SyncReport) -> None:
        for name in (
            "received",
            "created",
            "updated",
            "unchanged",
            "unlinked",
            "unsubscribed",
            "conflicts",
            "skipped_erased",
            "invalid",
        ):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for message in other.errors:
            self.error(message)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def value_digest(value: Any) -> str:
    """A short, stable hash of a JSON-able value (what links remember instead of values)."""
    text = json.dumps(value, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _erased(session: Session, email: str) -> bool:
    """Whether ``email`` belongs to a person postwise erased (their suppression is permanent)."""
    found = session.exec(
        select(Suppression.id).where(
            Suppression.email_hash == email_hash(email),
            Suppression.reason == SuppressionReason.ERASURE.value,
        )
    ).first()
    return found is not None


def _remote_values(
    change: CrmContact, report: SyncReport
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The record's profile fields and attributes, validated and normalised as postwise stores
    them. Invalid values are dropped (and reported); ``None`` when the address is invalid."""
    fields: dict[str, Any] = {}
    attributes: dict[str, Any] = {}
    for key, value in change.properties.items():
        if key in RESERVED_PROPERTIES:
            report.error(f"record {change.external_id}: {key!r} is postwise's own; not synced")
        elif key in PROFILE_FIELDS:
            if value is not None and value != "":
                fields[key] = value
        elif 0 < len(key) <= 100 and "." not in key:
            attributes[key] = value
        else:
            report.error(f"record {change.external_id}: attribute name {key[:40]!r} is not allowed")
    candidate: dict[str, Any] = {"email": change.email, **fields}
    if attributes:
        candidate["attributes"] = attributes
    while True:
        try:
            data = ContactData.model_validate(candidate)
        except PydanticValidationError as exc:
            bad = {str(err["loc"][0]) for err in exc.errors() if err["loc"]}
            if "email" in bad or not bad & set(candidate):
                report.invalid += 1
                report.error(f"record {change.external_id}: no valid email address; skipped")
                return None
            for name in sorted(bad & set(candidate)):
                report.error(f"record {change.external_id}: invalid {name}; field not synced")
                candidate.pop(name)
            continue
        normalised = {name: getattr(data, name) for name in _SYNCED_FIELDS if name in candidate}
        return normalised, dict(data.attributes or {})


def _merge_field(
    key: str,
    *,
    remote: Any,
    local: Any,
    base: Mapping[str, Any],
    remote_is_newer: bool,
    report: SyncReport,
) -> bool:
    """Whether the CRM's ``remote`` value replaces postwise's ``local`` one (conflict rules)."""
    if remote is None or remote == local:
        return False
    if local is None or local == "":
        return True  # postwise has nothing there: the CRM fills the gap
    remote_hash = value_digest(remote)
    known = base.get(key)
    if known == remote_hash:
        return False  # the CRM did not change it since the last sync; postwise's edit stands
    if known is not None and known == value_digest(local):
        return True  # only the CRM changed it
    if remote_is_newer:
        return True
    report.conflicts += 1
    return False


def _relink_merged(session: Session, system: str, change: CrmContact) -> None:
    """Records merged into ``change`` in the CRM: the first link to one of them moves to the
    surviving id (unless it is linked already), the others are removed, so no link, and no
    push, is left on a merged-away id. The contacts are kept."""
    merged = [i for i in change.merged_ids if i and i != change.external_id]
    if not merged:
        return
    links = session.exec(
        select(CrmLink)
        .where(CrmLink.system == system, CrmLink.external_id.in_(merged))  # type: ignore[attr-defined]
        .order_by(CrmLink.id)  # type: ignore[arg-type]
    ).all()
    survivor = session.exec(
        select(CrmLink).where(CrmLink.system == system, CrmLink.external_id == change.external_id)
    ).first()
    for old in links:
        if survivor is None:
            log.info(
                "crm %s: record %s merged into %s; link moved",
                system,
                old.external_id,
                change.external_id,
            )
            old.external_id = change.external_id
            old.remote_updated_at = None  # the survivor's values are applied next
            session.add(old)
            session.flush()
            survivor = old
        else:
            log.info(
                "crm %s: record %s merged into %s; link removed",
                system,
                old.external_id,
                change.external_id,
            )
            session.delete(old)
    session.flush()


def _apply_one(
    runtime: Runtime, session: Session, system: str, change: CrmContact, report: SyncReport
) -> str:
    """Apply one record; returns ``created``, ``updated``, ``unchanged``, ``unlinked`` or
    ``skipped`` (invalid or erased, already counted)."""
    source = source_for(system)
    if change.merged_ids and not change.deleted:
        _relink_merged(session, system, change)
    link = session.exec(
        select(CrmLink).where(CrmLink.system == system, CrmLink.external_id == change.external_id)
    ).first()
    if change.deleted:
        if link is None:
            return "unchanged"
        session.delete(link)
        return "unlinked"
    remote_at = as_utc(change.updated_at)
    assert remote_at is not None
    seen_at = as_utc(link.remote_updated_at) if link is not None else None
    if seen_at is not None and remote_at <= seen_at:
        return "unchanged"
    values = _remote_values(change, report)
    if values is None:
        return "skipped"
    fields, attributes = values
    base: Mapping[str, Any] = dict(link.field_hashes or {}) if link is not None else {}
    hashes: dict[str, Any] = {k: value_digest(v) for k, v in fields.items()}
    hashes.update({f"attr:{k}": value_digest(v) for k, v in attributes.items()})

    contact = session.get(Contact, link.contact_id) if link is not None else None
    if contact is None:
        contact = session.exec(select(Contact).where(Contact.email == fields["email"])).first()
    if contact is None:
        if _erased(session, fields["email"]):
            report.skipped_erased += 1
            return "skipped"
        data = ContactData(
            email=fields["email"],
            **{k: v for k, v in fields.items() if k != "email"},
            attributes=attributes or None,
        )
        contact, _ = upsert_contact(session, data, source=source, plugins=runtime.plugins)
        outcome = "created"
    else:
        changed = _update_contact(
            runtime,
            session,
            system,
            contact,
            remote_at=remote_at,
            fields=fields,
            attributes=attributes,
            base=base,
            report=report,
        )
        outcome = "updated" if changed else "unchanged"
    assert contact.id is not None
    if change.unsubscribed is not None:
        hashes["unsubscribed"] = value_digest(change.unsubscribed)
        newly = base.get("unsubscribed") != hashes["unsubscribed"]
        if change.unsubscribed and newly and unsubscribe(session, contact.id, source=source):
            report.unsubscribed += 1
            if outcome == "unchanged":
                outcome = "updated"
    if link is None:
        link = CrmLink(contact_id=contact.id, system=system, external_id=change.external_id)
    link.contact_id = contact.id
    link.remote_updated_at = remote_at
    link.synced_at = utcnow()
    link.field_hashes = hashes
    session.add(link)
    return outcome


def _update_contact(
    runtime: Runtime,
    session: Session,
    system: str,
    contact: Contact,
    *,
    remote_at: datetime,
    fields: Mapping[str, Any],
    attributes: Mapping[str, Any],
    base: Mapping[str, Any],
    report: SyncReport,
) -> bool:
    """Merge the CRM's values into an existing contact by the conflict rules; whether it changed."""
    assert contact.id is not None
    local_at = as_utc(contact.updated_at)
    remote_is_newer = local_at is None or remote_at >= local_at
    changed = False
    new_email = fields["email"]
    if new_email != contact.email and _merge_field(
        "email",
        remote=new_email,
        local=contact.email,
        base=base,
        remote_is_newer=remote_is_newer,
        report=report,
    ):
        holder = session.exec(select(Contact.id).where(Contact.email == new_email)).first()
        if holder is not None:
            report.conflicts += 1
            report.error(
                f"contact {contact.id}: the CRM moved it to an address contact {holder} has; "
                "the address was kept"
            )
        elif _erased(session, new_email):
            report.error(
                f"contact {contact.id}: the CRM moved it to an erased address; the address was kept"
            )
        else:
            contact.email = new_email
            contact.updated_at = utcnow()
            session.add(contact)
            session.flush()
            notify_changed(runtime.plugins, contact.id, {"email": new_email}, source_for(system))
            changed = True
    updates = {
        name: value
        for name, value in fields.items()
        if name != "email"
        and _merge_field(
            name,
            remote=value,
            local=getattr(contact, name),
            base=base,
            remote_is_newer=remote_is_newer,
            report=report,
        )
    }
    local_attributes = contact.attributes or {}
    attribute_updates = {
        name: value
        for name, value in attributes.items()
        if _merge_field(
            f"attr:{name}",
            remote=value,
            local=local_attributes.get(name),
            base=base,
            remote_is_newer=remote_is_newer,
            report=report,
        )
    }
    if updates or attribute_updates:
        before = contact.updated_at
        data = ContactData(email=contact.email, **updates, attributes=attribute_updates or None)
        upsert_contact(session, data, source=source_for(system), plugins=runtime.plugins)
        changed = changed or contact.updated_at != before
    return changed


def apply_changes(
    runtime: Runtime,
    system: str,
    changes: Iterable[CrmContact],
    *,
    report: SyncReport | None = None,
    chunk_size: int = CHUNK_SIZE,
) -> SyncReport:
    """Apply CRM records to contacts and links, ``chunk_size`` per transaction (idempotent).

    A chunk that collides with a concurrent writer (another CRM or a webhook creating the same
    contact or link at the same moment) is rolled back and applied once more.
    """
    report = report if report is not None else SyncReport(system)
    for chunk in _chunks(changes, chunk_size):
        report.received += len(chunk)
        try:
            report.merge(_apply_chunk(runtime, system, chunk))
        except sqlalchemy.exc.IntegrityError:
            log.info("crm %s: a chunk collided with a concurrent writer; applying it again", system)
            report.merge(_apply_chunk(runtime, system, chunk))
    return report


def _apply_chunk(runtime: Runtime, system: str, chunk: list[CrmContact]) -> SyncReport:
    partial = SyncReport(system)
    with runtime.session() as session:
        for change in chunk:
            outcome = _apply_one(runtime, session, system, change, partial)
            if outcome != "skipped":
                setattr(partial, outcome, getattr(partial, outcome) + 1)
            session.flush()
    return partial


def _chunks(items: Iterable[CrmContact], size: int) -> Iterator[list[CrmContact]]:
    chunk: list[CrmContact] = []
    for item in items:
        chunk.append(item)
        if len(chunk) >= size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _lock_key(system: str) -> str:
    return f"postwise:crm:{system}:lock"


class RunLock:
    """The Redis lock that lets one poll (or push) of ``system`` run at a time."""

    def __init__(self, runtime: Runtime, system: str, what: str = "poll") -> None:
        self.redis = runtime.redis
        self.key = f"{_lock_key(system)}:{what}"
        self.token = secrets.token_hex(8)
        self.system = system
        self.what = what

    def __enter__(self) -> RunLock:
        if not self.redis.set(self.key, self.token, nx=True, ex=LOCK_SECONDS):
            raise ConflictError(
                f"a {self.what} of CRM {self.system!r} is already running; wait for it to end "
                f"(the lock expires after {LOCK_SECONDS} s if its process died)"
            )
        return self

    def refresh(self) -> None:
        """Keep the lock while a long run goes on."""
        if self.redis.get(self.key) == self.token.encode():
            self.redis.expire(self.key, LOCK_SECONDS)

    def __exit__(self, *_exc: object) -> None:
        with self.redis.pipeline() as pipe:
            pipe.watch(self.key)
            if pipe.get(self.key) == self.token.encode():
                pipe.multi()
                pipe.delete(self.key)
                pipe.execute()


def _parse_cursor(cursor: str | None) -> datetime | None:
    if not cursor:
        return None
    try:
        return as_utc(datetime.fromisoformat(cursor))
    except ValueError:
        return None


def _reconciled_key(system: str) -> str:
    return f"postwise:crm:{system}:reconciled_at"


def _save_cursor(runtime: Runtime, system: str, newest: datetime | None) -> None:
    with runtime.session() as session:
        state = session.get(CrmSyncState, system) or CrmSyncState(system=system)
        if newest is not None:
            state.cursor = newest.isoformat()
        state.last_polled_at = utcnow()
        session.add(state)


def _reconcile(
    runtime: Runtime, system: str, connector: CrmConnector, lock: RunLock, *, full: bool
) -> SyncReport | None:
    """List the CRM's deleted records when :attr:`CrmConnector.reconcile_interval` has passed
    since the last listing (always when ``full``); ``None`` when it was not due.

    The time of the last listing lives in Redis: losing it costs one extra listing, never a
    missed deletion (the listing then starts from the beginning)."""
    interval = connector.reconcile_interval
    if interval is None:
        return None
    raw = runtime.redis.get(_reconciled_key(system))
    last = _parse_cursor(raw.decode() if isinstance(raw, bytes) else raw)
    started = utcnow()
    if not full and last is not None and started - last < interval:
        return None
    report = SyncReport(system)
    since = None if full or last is None else last - POLL_OVERLAP
    for chunk in _chunks(connector.reconcile_deletions(since), CHUNK_SIZE):
        apply_changes(runtime, system, chunk, report=report)
        lock.refresh()
    runtime.redis.set(_reconciled_key(system), started.isoformat())
    return report


def poll(runtime: Runtime, system: str, *, full: bool = False) -> SyncReport:
    """Fetch and apply what changed in ``system`` since the last poll (everything if ``full``).

    When the connector yields changes in ascending order (:attr:`CrmConnector.changes_ascending`)
    the cursor is checkpointed as each chunk commits, so a poll that dies (killed, the CRM gone)
    resumes where it stopped; otherwise it moves once the whole window is applied. Deletions the
    changes do not carry are reconciled every :attr:`CrmConnector.reconcile_interval`.

    Raises ConflictError when a poll of ``system`` is already running and
    :class:`~postwise.crm.connector.CrmUnavailableError` when the CRM cannot be read; the cursor
    then stays at the last committed chunk and the next poll covers the rest again.
    """
    connector = connector_for(runtime, system)
    report = SyncReport(system)
    with RunLock(runtime, system, "poll") as lock:
        with runtime.session() as session:
            state = session.get(CrmSyncState, system)
            cursor = None if full or state is None else _parse_cursor(state.cursor)
        since = cursor - POLL_OVERLAP if cursor is not None else None
        newest = cursor

        def tracked() -> Iterator[CrmContact]:
            nonlocal newest
            for change in connector.fetch_changes(since):
                at = as_utc(change.updated_at)
                if at is not None and (newest is None or at > newest):
                    newest = at
                yield change

        for chunk in _chunks(tracked(), CHUNK_SIZE):
            apply_changes(runtime, system, chunk, report=report)
            if connector.changes_ascending:
                # Everything older than ``newest`` is committed; the next poll starts
                # POLL_OVERLAP before it, so records sharing its timestamp are read again.
                _save_cursor(runtime, system, newest)
            lock.refresh()
        _save_cursor(runtime, system, newest)
        report.cursor = newest.isoformat() if newest is not None else None
        reconciled = _reconcile(runtime, system, connector, lock, full=full)
        if reconciled is not None:
            report.merge(reconciled)
    log.info(
        "crm %s: polled %d records: %d created, %d updated, %d unlinked, %d unsubscribed",
        system,
        report.received,
        report.created,
        report.updated,
        report.unlinked,
        report.unsubscribed,
    )
    return report


def require_valid_system(system: str) -> str:
    """``system`` if it is a plausible CRM name (used in Redis keys and URLs)."""
    if not system or len(system) > 50 or not system.replace("-", "").replace("_", "").isalnum():
        raise ValidationError("must be 1-50 letters, digits, '-' or '_'", field="system")
    return system
