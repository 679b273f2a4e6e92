"""The contract every ESP provider implements (built-in SMTP, SendGrid, Mailchimp, ...).

A provider receives a batch of fully rendered, signed messages and reports one outcome per
message. It never raises for a per-message failure: it classifies it. It raises only when the
whole batch could not be attempted (for example a misconfiguration), and then with
:class:`postwise.errors.DeliveryError`.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

__all__ = ["Outcome", "OutgoingMessage", "Provider", "SendResult"]


class Outcome(enum.StrEnum):
    """What happened to one message at the provider."""

    ACCEPTED = "accepted"
    #: Worth retrying later: SMTP 4xx, connection loss, timeouts, provider throttling.
    TRANSIENT = "transient"
    #: Retrying will not help: SMTP 5xx, invalid recipient. Recorded as a bounce.
    PERMANENT = "permanent"


@dataclass(frozen=True, slots=True)
class OutgoingMessage:
    """One message ready for the wire.

    ``raw`` is the complete RFC 5322 message with CRLF line endings, DKIM-signed when signing
    is configured. ``message_id`` is postwise's deterministic id (also the ledger key), not
    necessarily the Message-ID header.
    """

    message_id: str
    sender: str
    recipient: str
    raw: bytes
    #: Provider-specific extras (categories, custom args); providers ignore unknown keys.
    metadata: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class SendResult:
    """The outcome of one message."""

    message_id: str
    outcome: Outcome
    #: Protocol status code when there is one (SMTP reply code, HTTP status).
    code: int | None = None
    #: Enhanced status code (RFC 3463) such as "5.1.1", when the provider gives one.
    status: str | None = None
    #: Human-readable reason, as the remote side phrased it.
    reason: str = ""
    #: The provider's own id for the message, when it assigns one.
    provider_message_id: str | None = None


class Provider(abc.ABC):
    """An ESP or relay that accepts messages in batches."""

    #: The name configuration uses to pick this provider (``provider = "smtp"``).
    name: str

    @abc.abstractmethod
    def send_batch(self, messages: Sequence[OutgoingMessage]) -> list[SendResult]:
        """Send ``messages`` and return exactly one result per message, in the same order."""

    def close(self) -> None:  # noqa: B027 - optional hook with a sound no-op default
        """Release pooled connections. The default has nothing to release."""
