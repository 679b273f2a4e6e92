"""A Mailchimp-style ESP for delivery tests: a local HTTP API and the provider that speaks it.

The API takes one message per request (``POST /messages/send-raw``) and answers 200 with a
status per recipient, as Mailchimp Transactional does: ``sent``, or ``rejected`` with the reason
the ESP holds against the address. The provider classifies that answer the way the Mailchimp
plugin does (a ``hard-bounce`` is ``permanent`` with ``bounce_kind`` hard, a 429 ``deferred``
for its ``Retry-After``), on the core's :class:`~postwise.delivery.http.HttpApiProvider`. Tests
register it in-process with :class:`EspPlugin` under the name :data:`PROVIDER`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from postwise import hookimpl
from postwise.delivery.http import HttpApiProvider, Verdict, rate_limited
from postwise.delivery.provider import BounceKind, Outcome, OutgoingMessage, SendResult
from postwise.hookspecs import ProviderFactory
from postwise.registry import Register
from postwise.runtime import Runtime
from postwise.testing.http import Answer, Received, ScriptedHttpServer

#: The name the provider is registered under.
PROVIDER = "mcstyle"
SERVICE = "Mailchimp-style ESP"

_BOUNCE_KINDS = {"hard-bounce": BounceKind.HARD, "soft-bounce": BounceKind.SOFT}


def rejection(email: str, reason: str, esp_id: str = "esp-rejected") -> list[dict[str, str]]:
    """The body of an answer rejecting ``email`` for ``reason`` (``hard-bounce``, ...)."""
    return [{"email": email, "status": "rejected", "reject_reason": reason, "_id": esp_id}]


class EspApi(ScriptedHttpServer):
    """Takes every message, unless its recipient is in :attr:`rejected` (address → reason)."""

    def __init__(self) -> None:
        super().__init__()
        self.rejected: dict[str, str] = {}

    def answer(self, request: Received) -> Answer:
        email = request.body["to"]
        reason = self.rejected.get(email)
        if reason is not None:
            return 200, rejection(email, reason), {}
        return 200, [{"email": email, "status": "sent", "_id": f"esp-{len(self.received)}"}], {}

    def recipients(self) -> list[str]:
        """The recipient of every request received, in order."""
        return [request.body["to"] for request in self.received]


class EspProvider(HttpApiProvider):
    """One request per message; the answer classified as the Mailchimp plugin does."""

    name = PROVIDER
    service = SERVICE

    def send_one(self, client: httpx.Client, message: OutgoingMessage) -> Verdict:
        body = {"to": message.recipient, "id": message.message_id}
        return self.post(client, message, "/messages/send-raw", body, _classifier(message))


def _classifier(message: OutgoingMessage) -> Callable[[httpx.Response], Verdict]:
    def classify(response: httpx.Response) -> Verdict:
        status = response.status_code
        if status == 429:
            return rate_limited(message.message_id, status, response.headers, service=SERVICE)
        if status != 200:
            reason = f"{SERVICE} answered HTTP {status}"
            return Verdict(
                SendResult(message.message_id, Outcome.TRANSIENT, reason=reason, http_status=status)
            )
        [entry] = response.json()
        if entry["status"] == "rejected":
            why = entry["reject_reason"]
            kind = _BOUNCE_KINDS.get(why)
            return Verdict(
                SendResult(
                    message.message_id,
                    Outcome.PERMANENT if kind is not None else Outcome.FAILED,
                    reason=f"rejected by {SERVICE}: {why}",
                    provider_message_id=entry["_id"],
                    http_status=status,
                    bounce_kind=kind,
                )
            )
        return Verdict(
            SendResult(
                message.message_id,
                Outcome.ACCEPTED,
                provider_message_id=entry["_id"],
                http_status=status,
            )
        )

    return classify


class EspPlugin:
    """Registers :class:`EspProvider`, sending to ``base_url``."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    @hookimpl
    def postwise_register_providers(self, register: Register[ProviderFactory]) -> None:
        register(PROVIDER, self._build)

    def _build(self, settings: Any, options: Any) -> EspProvider:
        return EspProvider(base_url=self.base_url, timeout=5.0, concurrency=1, headers={})


def use_esp(runtime: Runtime, api: EspApi) -> Runtime:
    """Register the provider on ``runtime``, sending to ``api``; returns ``runtime``."""
    runtime.plugins.register(EspPlugin(api.url), "esp-fake")
    return runtime
