"""A local HTTP server speaking Mailchimp Transactional's ``messages/send-raw`` wire format.

It checks what the API checks (the ``key`` in the JSON body, a ``raw_message``, the recipients)
and answers as the API does: ``200`` with one result per recipient (``email``, ``status``,
``reject_reason``, ``_id``), or an error object ``{"status": "error", "code", "name",
"message"}`` sent with HTTP 500, as Mailchimp Transactional sends every error. Addresses in
``rejected`` come back ``rejected`` with their reason (``hard-bounce``, ``spam``, ...). Scripted
replies (``reply()``, from :class:`postwise.testing.http.ScriptedHttpServer`) replace the
answer to the next requests: any status, headers and body, a dropped connection or a reply
that never comes.

Mailchimp's documented rules for the ``X-MC-*`` control headers of a raw message are enforced
(mailchimp.com/developer/transactional/docs/tags-metadata, "SMTP headers"): ``X-MC-Metadata``
is a flat JSON object of at most 250 bytes; each ``X-MC-Tags`` tag is at most 50 characters and
does not start with an underscore; a ValidationError otherwise. The account tracks opens and
clicks (:attr:`FakeMailchimp.account_tracking`) unless ``X-MC-Track`` names neither;
:attr:`FakeMailchimp.sent` records, per message taken, its metadata, tags and tracking.
"""

from __future__ import annotations

import email
import email.policy
import json
import uuid
from typing import Any

from postwise.testing.http import Answer, Received, Reply, ScriptedHttpServer

__all__ = ["API_KEY", "SEND_RAW", "WEBHOOK_KEY", "FakeMailchimp", "Received", "Reply", "error"]

API_KEY = "md-test-key-0123456789"
#: The webhook key the tests configure and sign with.
WEBHOOK_KEY = "whk-test-0123456789abcdef"
SEND_RAW = "/api/1.3/messages/send-raw.json"
METADATA_LIMIT = 250
_TRACKING = {"opens", "clicks", "clicks_all", "clicks_htmlonly", "clicks_textonly"}


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
        #: Whether the account's settings track opens and clicks.
        self.account_tracking = True
        #: Per message taken: its metadata, tags and what Mailchimp tracks in it.
        self.sent: list[dict[str, Any]] = []

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
        controls = _controls(parsed, self.account_tracking)
        if isinstance(controls, str):
            return 500, error("ValidationError", controls), {}
        self.sent.append(controls)
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


def _controls(parsed: Any, account_tracking: bool) -> dict[str, Any] | str:
    """What the control headers ask for, or why Mailchimp refuses them."""
    metadata: dict[str, Any] = {}
    raw_metadata = parsed.get("X-MC-Metadata")
    if raw_metadata is not None:
        text = str(raw_metadata)
        if len(text.encode()) > METADATA_LIMIT:
            return f"metadata is limited to {METADATA_LIMIT} bytes of JSON"
        try:
            metadata = json.loads(text)
        except ValueError:
            return "X-MC-Metadata is not JSON"
        if not isinstance(metadata, dict) or any(
            isinstance(v, (dict, list)) for v in metadata.values()
        ):
            return "metadata must be a flat JSON object"
    tags = [t.strip() for t in str(parsed.get("X-MC-Tags") or "").split(",") if t.strip()]
    for tag in tags:
        if len(tag) > 50 or tag.startswith("_"):
            return f"invalid tag {tag!r}: at most 50 characters, not starting with '_'"
    track = parsed.get("X-MC-Track")
    if track is None:
        tracking = _TRACKING if account_tracking else set()
    else:
        tracking = {t.strip() for t in str(track).split(",")} & _TRACKING
    return {"metadata": metadata, "tags": tags, "tracking": tracking}
