"""Send requests: how triggers, the API and campaigns ask delivery to send one message.

``submit_send(runtime, request)`` (in :mod:`postwise.delivery.dispatch`) passes the request
through the compliance gate and the frequency cap synchronously, writes its ledger row and
enqueues it; the :class:`SubmitResult` says what happened so callers (the trigger engine's
counters, the API) can report it.
"""

from __future__ import annotations

import enum
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

__all__ = ["SendRequest", "SubmitResult", "SubmitStatus", "message_id_for"]


def message_id_for(*parts: object) -> str:
    """The deterministic message id for a send: the same inputs always give the same id.

    Parts are length-prefixed before hashing so that ("ab", "c") and ("a", "bc") differ.
    """
    digest = hashlib.sha256()
    for part in parts:
        encoded = str(part).encode()
        digest.update(len(encoded).to_bytes(4, "big"))
        digest.update(encoded)
    return digest.hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class SendRequest:
    """A request to send ``template_id`` to ``contact_id``.

    ``dedupe_key`` identifies the cause (``"trigger:7:event:abc"``, ``"api:<client id>"``);
    the message id derives from it, so submitting the same request twice sends once.
    """

    contact_id: int
    template_id: int
    dedupe_key: str
    reason: str = "api"
    not_before: datetime | None = None
    trigger_id: int | None = None
    campaign_id: int | None = None
    experiment_id: int | None = None
    transactional: bool = False
    provider: str | None = None
    #: Extra merge values for this send only (``{"order_id": "123"}``).
    context: Mapping[str, Any] = field(default_factory=dict)
    #: A consent purpose (``"newsletter"``) this send needs, when marketing, besides the global
    #: and regional rules: the latest record for it must be granted and confirmed, at submission
    #: and again right before sending.
    consent_purpose: str | None = None

    @property
    def message_id(self) -> str:
        return message_id_for("send", self.dedupe_key, self.contact_id, self.template_id)


class SubmitStatus(enum.StrEnum):
    QUEUED = "queued"
    DUPLICATE = "duplicate"
    SKIPPED = "skipped"


@dataclass(frozen=True, slots=True)
class SubmitResult:
    message_id: str
    status: SubmitStatus
    #: For SKIPPED: unsubscribed, suppressed, no_consent, frequency_cap, invalid_contact, ...
    reason: str | None = None
