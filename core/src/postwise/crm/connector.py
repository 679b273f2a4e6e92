"""The contract of CRM connectors (HubSpot, Salesforce, ...).

Contacts flow in from the CRM by webhooks (fresh) and periodic polling (reliable); engagement
flows back out. A connector speaks one CRM's wire format; sync state and conflict resolution live
in the core (:mod:`postwise.crm.sync`, :mod:`postwise.crm.engagement`).

What a connector hands the core, and what it gets back, uses postwise's names, never the CRM's:

* :class:`CrmContact` ``properties``: ``first_name``, ``last_name``, ``country`` and
  ``timezone`` set those contact fields; any other key becomes a contact attribute. A ``None``
  value means the CRM holds nothing there (postwise keeps what it has). Whether the person opted
  out of email in the CRM goes in ``unsubscribed``, not in ``properties``; status, consent and
  engagement are postwise's own and are never taken from a CRM.
* :class:`EngagementUpdate` ``properties``: ``engagement_score`` (float), ``last_open_at`` and
  ``last_click_at`` (aware datetimes), ``unsubscribed`` (bool); the connector maps them to the
  CRM's property names. A key that is absent has nothing to say and must not clear the CRM's
  value.

Connector errors: :class:`CrmUnavailableError` when the CRM cannot be reached or keeps refusing
(rate limits, 5xx) after retries: the work is left for the next poll. Configuration problems
raise :class:`postwise.errors.ConfigurationError`.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, ClassVar

from postwise.errors import PostwiseError

__all__ = [
    "PROFILE_FIELDS",
    "CrmConnector",
    "CrmContact",
    "CrmLimitReachedError",
    "CrmUnavailableError",
    "EngagementUpdate",
    "PushFailure",
]

#: Contact fields a CRM may set (besides attributes); everything else is postwise's own.
PROFILE_FIELDS = ("first_name", "last_name", "country", "timezone")


class CrmUnavailableError(PostwiseError):
    """The CRM could not be reached, or kept refusing, after retries; try again later."""


class CrmLimitReachedError(CrmUnavailableError):
    """The CRM's daily API limit is used up: calling again before ``until`` only fails (and
    counts against the limit), so the connector is paused until then."""

    def __init__(self, message: str, until: datetime) -> None:
        super().__init__(message)
        self.until = until


@dataclass(frozen=True, slots=True)
class CrmContact:
    """A contact as the CRM describes it.

    ``updated_at`` is the CRM's last-modified time of the record (aware); ``deleted`` says the
    record is gone from the CRM (``email`` may then be empty). ``unsubscribed`` is ``True`` when
    the CRM says the person opted out of email, ``None`` when the CRM does not say.
    ``merged_ids`` are the ids of records merged into this one (HubSpot's
    ``hs_merged_object_ids``): their links move to this record, and nothing is pushed to them.
    """

    external_id: str
    email: str
    updated_at: datetime
    properties: Mapping[str, Any] = field(default_factory=dict)
    deleted: bool = False
    unsubscribed: bool | None = None
    merged_ids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class EngagementUpdate:
    """Engagement to write back to one CRM record (postwise's names; see the module docs)."""

    external_id: str
    properties: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class PushFailure:
    """One record a push could not update.

    ``missing`` is ``True`` when the CRM says the record does not exist any more (the core then
    unlinks it); otherwise the CRM refused the values and the record is tried again next push.
    """

    external_id: str
    reason: str
    missing: bool = False


class CrmConnector(abc.ABC):
    """One CRM's API."""

    name: ClassVar[str]
    #: Most records one :meth:`push_engagement` call may carry.
    push_batch_size: ClassVar[int] = 100
    #: The header carrying the webhook signature: a signature seen before within the replay
    #: window is refused (see :class:`postwise.server.webhooks.SignedWebhookController`).
    webhook_signature_header: ClassVar[str] = ""
    #: Whether :meth:`fetch_changes` yields records in ascending ``updated_at`` order; the core
    #: then checkpoints the cursor as each chunk commits, so a killed sync resumes there.
    changes_ascending: ClassVar[bool] = False
    #: How often :meth:`reconcile_deletions` runs (``None``: never). A CRM whose deletions can
    #: only be found by listing all deleted records (HubSpot's recycle bin) gets them from
    #: webhooks and lists them only this often, not on every poll.
    reconcile_interval: timedelta | None = None

    @abc.abstractmethod
    def fetch_changes(self, since: datetime | None) -> Iterator[CrmContact]:
        """Contacts created, changed or deleted since ``since`` (all of them when ``None``).

        Records changed exactly at ``since`` may be returned again; the core skips what it has
        seen. Raise :class:`CrmUnavailableError` when the CRM cannot be read.
        """

    def reconcile_deletions(self, since: datetime | None) -> Iterator[CrmContact]:
        """Records deleted since ``since`` that :meth:`fetch_changes` does not report, listed
        every :attr:`reconcile_interval`. The default: none."""
        return iter(())

    @abc.abstractmethod
    def push_engagement(self, updates: Sequence[EngagementUpdate]) -> Sequence[PushFailure] | None:
        """Write engagement properties back to the CRM records.

        Return the records that failed (``None`` or empty: all were written). Raise
        :class:`CrmUnavailableError` when nothing could be written.
        """

    @abc.abstractmethod
    def verify_webhook(self, headers: Mapping[str, str], body: bytes) -> bool:
        """Whether a webhook request carries the CRM's valid signature."""

    def verify_request(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes
    ) -> bool:
        """Whether a webhook request is authentic, given its method and public URL as well.

        Headers are given with lower-case names. Connectors whose CRM signs the URL (HubSpot)
        override this; the default checks :meth:`verify_webhook`.
        """
        return self.verify_webhook(headers, body)

    @abc.abstractmethod
    def parse_webhook(self, body: bytes) -> list[CrmContact]:
        """The contact changes a verified webhook announces.

        A connector may read the records from the CRM here when its webhooks carry ids only.
        Raise ``ValueError`` for a body it cannot understand.
        """

    def close(self) -> None:  # noqa: B027 - optional hook with a sound no-op default
        """Release connections."""
