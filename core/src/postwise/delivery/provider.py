"""The contract every ESP provider implements (built-in SMTP, SendGrid, Mailchimp, ...).

A provider receives a batch of fully rendered, signed messages and reports one outcome per
message. It never raises for a per-message failure: it classifies it. It raises only when the
whole batch could not be attempted (for example a misconfiguration), and then with
:class:`postwise.errors.DeliveryError`.

What each :class:`Outcome` makes the core do (:mod:`postwise.delivery.outcomes`):

=============  ======================================================================  =======
outcome        the core                                                                attempt
=============  ======================================================================  =======
``accepted``   ledger ``accepted``, a ``sent`` event                                   yes
``permanent``  ledger ``bounced``, a ``bounce`` event for the compliance consumer      yes
``failed``     ledger ``dead``, a ``dead_letter`` event; never a bounce                yes
``transient``  retried with backoff (at least ``retry_after``), dead after the last    yes
``deferred``   put back to wait ``retry_after`` (1 s to 1 h); dead after              no
               ``delivery_max_defer_hours`` in the queue
``unknown``    ledger ``dead`` *in doubt*: never sent again automatically              yes
=============  ======================================================================  =======
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Protocol

from postwise.compliance.bounces import BounceKind
from postwise.plugins import PROVIDERS

if TYPE_CHECKING:
    from postwise.runtime import Runtime

__all__ = [
    "NOT_HANDED_OVER",
    "BounceKind",
    "Outcome",
    "OutgoingMessage",
    "Provider",
    "SendObserver",
    "SendResult",
    "get_provider",
    "not_handed_over",
    "throttles_sender",
]


class Outcome(enum.StrEnum):
    """What happened to one message at the provider."""

    #: The provider took the message.
    ACCEPTED = "accepted"
    #: Worth retrying later, and the attempt counts: SMTP 4xx, a connection lost during this
    #: message's transaction before it was handed over, a server error, a configuration the
    #: operator can fix. (Messages a provider never tried, because no session could be set up
    #: or the batch was halted, are ``DEFERRED``.)
    TRANSIENT = "transient"
    #: The recipient's side refused the message for good: SMTP 5xx, an address the ESP holds
    #: as bounced. Recorded as a bounce, classified from ``bounce_kind`` or else from ``code``.
    PERMANENT = "permanent"
    #: Retrying will not help, and the recipient is not at fault: the provider refused *our*
    #: request (a malformed payload, a message too large, an invalid sender) or its own policy
    #: (an account rule). Dead-lettered with the reason; never a bounce, never suppresses.
    FAILED = "failed"
    #: The provider did not take the message now and asked to come back later (HTTP 429, an
    #: SMTP rate-limit reply): waits ``retry_after`` seconds without using up an attempt.
    DEFERRED = "deferred"
    #: The provider may or may not have taken the message: the connection was lost, or the
    #: answer did not come, after the whole message was sent. Parked *in doubt*, never sent
    #: again automatically, so that it cannot arrive twice.
    UNKNOWN = "unknown"


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
    #: The SMTP reply code (250, 421, 550, ...), and nothing else: the compliance consumer
    #: classifies a bounce by it. ``None`` when the provider got no SMTP reply, as HTTP APIs
    #: do not relay one; their status goes in ``http_status``.
    code: int | None = None
    #: Enhanced status code (RFC 3463) such as "5.1.1", when the provider gives one.
    status: str | None = None
    #: Human-readable reason, as the remote side phrased it.
    reason: str = ""
    #: The provider's own id for the message, when it assigns one.
    provider_message_id: str | None = None
    #: The HTTP status of the answer, for providers that speak to an HTTP API.
    http_status: int | None = None
    #: What a ``permanent`` refusal means for the address, when the provider knows (an ESP that
    #: says the address hard-bounced before): the bounce event carries it as ``kind``, which
    #: compliance acts on instead of classifying ``code``. ``unknown`` says "not a verdict on
    #: the address: take no action".
    bounce_kind: BounceKind | None = None
    #: Seconds the provider asked to wait before trying again (``Retry-After``), for
    #: ``deferred`` and ``transient`` results.
    retry_after: float | None = None
    #: When the provider accepted the message (UTC), for ``accepted`` results: the SMTP
    #: provider stamps the moment the relay's 250 arrived; for providers that leave it unset,
    #: the worker stamps the moment the call returned. The ledger's ``sent_at``.
    accepted_at: datetime | None = None


class SendObserver(Protocol):
    """What a worker wants to know while a provider sends (see :meth:`Provider.send_observed`)."""

    def handing_over(self, messages: Sequence[OutgoingMessage]) -> bool:
        """``messages`` are about to leave; False: do not hand them (nor any other) over."""

    def answered(self, result: SendResult) -> None:
        """The provider's answer about one message, as soon as it is known."""


#: The reason of a message :meth:`Provider.send_observed` did not hand over when told not to.
NOT_HANDED_OVER = "not attempted: the worker stopped handing messages over"


def not_handed_over(message: OutgoingMessage) -> SendResult:
    """The result of a message not handed over because the observer said no."""
    return SendResult(message.message_id, Outcome.DEFERRED, reason=NOT_HANDED_OVER)


def throttles_sender(result: SendResult) -> bool:
    """Whether ``result`` defers the *sender* (every other message would be refused the same
    way) rather than one recipient.

    An HTTP API's 429 throttles the account. For SMTP, RFC 3463 says what a status is about:
    addressing (X.1.X) and mailbox (X.2.X) statuses concern the recipient (Gmail's 450 4.2.1 for
    a mailbox receiving mail too fast); any other status, or none, concerns the sender or the
    session, and 421 closes the session whatever it says. The SMTP provider stops a batch, and
    the worker holds back the rest of one, on this rule.
    """
    if result.outcome is not Outcome.DEFERRED:
        return False
    if result.code == 421 or result.status is None:
        return True
    return result.status.split(".")[1:2] not in (["1"], ["2"])


class Provider(abc.ABC):
    """An ESP or relay that accepts messages in batches."""

    #: The name configuration uses to pick this provider (``provider = "smtp"``).
    name: str

    @abc.abstractmethod
    def send_batch(self, messages: Sequence[OutgoingMessage]) -> list[SendResult]:
        """Send ``messages`` and return exactly one result per message, in the same order."""

    def send_observed(
        self, messages: Sequence[OutgoingMessage], observer: SendObserver
    ) -> list[SendResult]:
        """:meth:`send_batch`, telling ``observer`` what leaves and how it was answered.

        ``observer.handing_over(some)`` returns False when ``some`` must not be handed over (the
        worker is stopping, or lost its batch to the sweeper): they, and the rest, are then not
        attempted and come back :data:`NOT_HANDED_OVER`. By default the whole batch is one
        hand-over (an HTTP API that takes a batch per request), answered when the call returns.
        A provider that hands messages over one at a time (SMTP) overrides this to tell per
        message, so that a worker killed mid-call leaves only the message being transmitted in
        doubt.
        """
        if not observer.handing_over(messages):
            return [not_handed_over(m) for m in messages]
        results = self.send_batch(messages)
        for result in results:
            observer.answered(result)
        return results

    def close(self) -> None:  # noqa: B027 - optional hook with a sound no-op default
        """Release pooled connections. The default has nothing to release."""


def get_provider(runtime: Runtime, name: str | None = None) -> Provider:
    """The configured provider (or ``name``) of ``runtime``, built once and reused (pooling);
    closed when the runtime closes."""
    name = name or runtime.settings.provider

    def build() -> Provider:
        factory = runtime.component(PROVIDERS, name)
        return factory(runtime.settings, runtime.settings.provider_options.get(name, {}))

    return runtime.shared(("provider", name), build, close=lambda provider: provider.close())
