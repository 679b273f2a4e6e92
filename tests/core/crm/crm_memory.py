"""An in-process CRM for the core's sync tests: a real CrmConnector over a dict of records.

It answers ``fetch_changes`` like a CRM's modified-since query, records every engagement push,
signs webhooks with HMAC-SHA256 over the body (``X-Memory-Signature``) and can be told which
records are gone or refuse updates.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

from postwise import hookimpl
from postwise.crm.connector import CrmConnector, CrmContact, EngagementUpdate, PushFailure

SECRET = b"memory-webhook-secret"
SIGNATURE_HEADER = "X-Memory-Signature"


def sign(body: bytes) -> str:
    return hmac.new(SECRET, body, hashlib.sha256).hexdigest()


@dataclass
class MemoryCrm:
    """The CRM's state, shared by the test and the connector built from it."""

    records: dict[str, CrmContact] = field(default_factory=dict)
    clock: datetime = field(default_factory=lambda: datetime.now(UTC) - timedelta(hours=1))
    pushes: list[list[EngagementUpdate]] = field(default_factory=list)
    fetches: list[datetime | None] = field(default_factory=list)
    missing: set[str] = field(default_factory=set)
    refusing: set[str] = field(default_factory=set)
    batch_size: int = 100

    def tick(self, seconds: float = 1.0) -> datetime:
        self.clock += timedelta(seconds=seconds)
        return self.clock

    def put(
        self,
        external_id: str,
        email: str,
        *,
        unsubscribed: bool | None = None,
        at: datetime | None = None,
        **properties: Any,
    ) -> CrmContact:
        """Create or change a record; it gets a new ``updated_at`` (or ``at``)."""
        previous = self.records.get(external_id)
        merged = {**(previous.properties if previous else {}), **properties}
        record = CrmContact(
            external_id,
            email,
            at or self.tick(),
            merged,
            unsubscribed=unsubscribed
            if unsubscribed is not None
            else (previous.unsubscribed if previous else None),
        )
        self.records[external_id] = record
        return record

    def delete(self, external_id: str) -> None:
        record = self.records[external_id]
        self.records[external_id] = replace(record, deleted=True, updated_at=self.tick())

    @property
    def pushed(self) -> dict[str, Mapping[str, Any]]:
        """The latest properties pushed per record."""
        latest: dict[str, Mapping[str, Any]] = {}
        for batch in self.pushes:
            for update in batch:
                latest[update.external_id] = update.properties
        return latest


class MemoryConnector(CrmConnector):
    name = "memory"

    def __init__(self, crm: MemoryCrm) -> None:
        self.crm = crm

    @property  # type: ignore[misc]
    def push_batch_size(self) -> int:  # the test may change it after the connector is built
        return self.crm.batch_size

    def fetch_changes(self, since: datetime | None) -> Iterator[CrmContact]:
        self.crm.fetches.append(since)
        for record in sorted(self.crm.records.values(), key=lambda r: r.updated_at):
            if since is None or record.updated_at >= since:
                yield record

    def push_engagement(self, updates: Sequence[EngagementUpdate]) -> list[PushFailure]:
        self.crm.pushes.append(list(updates))
        failures = []
        for update in updates:
            if update.external_id in self.crm.missing:
                failures.append(PushFailure(update.external_id, "no such record", missing=True))
            elif update.external_id in self.crm.refusing:
                failures.append(PushFailure(update.external_id, "property is read-only"))
        return failures

    def verify_webhook(self, headers: Mapping[str, str], body: bytes) -> bool:
        given = headers.get(SIGNATURE_HEADER.lower(), "")
        return bool(given) and hmac.compare_digest(given, sign(body))

    def parse_webhook(self, body: bytes) -> list[CrmContact]:
        ids = json.loads(body)["ids"]
        if not isinstance(ids, list):
            raise ValueError("ids must be a list")
        return [self.crm.records[i] for i in ids if i in self.crm.records]


class MemoryPlugin:
    """Registers the memory connector, and records contact-changed notifications."""

    def __init__(self, crm: MemoryCrm) -> None:
        self.crm = crm
        self.changes: list[tuple[int, dict[str, Any], str]] = []

    @hookimpl
    def postwise_register_crm_connectors(self, register: Any) -> None:
        register("memory", lambda _settings, _options: MemoryConnector(self.crm))

    @hookimpl
    def postwise_contact_changed(
        self, contact_id: int, changes: Mapping[str, Any], source: str
    ) -> None:
        self.changes.append((contact_id, dict(changes), source))
