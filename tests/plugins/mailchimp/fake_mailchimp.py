"""A local HTTP server speaking Mailchimp Transactional's ``messages/send-raw`` wire format.

It checks what the API checks (the ``key`` in the JSON body, a ``raw_message``, the recipients)
and answers as the API does: ``200`` with one result per recipient (``email``, ``status``,
``reject_reason``, ``_id``), or an error object ``{"status": "error", "code", "name",
"message"}`` sent with HTTP 500, as Mailchimp Transactional sends every error. Addresses in
``rejected`` come back ``rejected`` with their reason (``hard-bounce``, ``spam``, ...). Scripted
replies (``reply()``, from :class:`postwise.testing.http.ScriptedHttpServer`) replace the
answer to the next requests: any status, headers and body, a dropped connection or a reply
that never comes.
"""

from __future__ import annotations

import email
import email.policy
import uuid
from typing import Any

from postwise.testing.http import Answer, Received, Reply, ScriptedHttpServer

__all__ = ["API_KEY", "SEND_RAW", "WEBHOOK_KEY", "FakeMailchimp", "Received", "Reply", "error"]

API_KEY = "md-test-key-0123456789"
#: The webhook key the tests configure and sign with.
WEBHOOK_KEY = "whk-test-0123456789abcdef"
SEND_RAW = "/api/1.3/messages/send-raw.json"


def error(name: str, message: str, code: int = -1) -> dict[str, Any]:
    """Mailchimp Transactional's error object."""
    return {"status": "error", "code": code, "name": name, "message": message}


class FakeMailchimp(ScriptedHttpServer):
    """Start with :meth:`start`, stop with :meth:`stop`; ``base_url`` is the API base URL."""

    content_type = "application/json; charset=utf-8"

    def __init__(self, api_key: str = API_KEY) -> None:
        super().__init__()
        self.api_key = api_key
        #: Address → the ``reject_reason`` Mailchimp gives for it.
        self.rejected: dict[str, str] = {}

    @property
    def base_url(self) -> str:
        return f"{self.url}/api/1.3"

    def precheck(self, request: Received) -> Answer | None:
        if request.path != SEND_RAW:
            return 500, error("Unknown_Method", f"unknown method {request.path}"), {}
        return None

    def answer(self, request: Received) -> Answer:
        body = request.body
        if not isinstance(body, dict):
            return 500, error("ValidationError", "You must specify a key value"), {}
        if body.get("key") != self.api_key:
            return 500, error("Invalid_Key", "Invalid API key"), {}
        raw = body.get("raw_message")
        if not isinstance(raw, str) or not raw:
            return (
                500,
                error(
                    "ValidationError", 'Validation error: {"raw_message":"Please enter a value"}'
                ),
                {},
            )
        parsed = email.message_from_string(raw, policy=email.policy.default)
        recipients = body.get("to") or [a.addr_spec for a in parsed["To"].addresses]
        results = []
        for address in recipients:
            result: dict[str, Any] = {"email": address, "_id": uuid.uuid4().hex}
            if "@" not in address:
                result["status"] = "invalid"
            elif address in self.rejected:
                result.update(status="rejected", reject_reason=self.rejected[address])
            else:
                result.update(status="sent", reject_reason=None)
            results.append(result)
        return 200, results, {}
