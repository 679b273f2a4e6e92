"""A local HTTP server speaking SendGrid's v3 Mail Send wire format, for tests.

It checks what SendGrid checks first (``Authorization: Bearer <key>``, a JSON body with
``personalizations[].to[].email``, ``from.email``, ``subject``, ``content[]`` with text/plain
first and no empty value) and the documented limits of v3 Mail Send (docs.sendgrid.com
api-reference/mail-send, "Limitations"): at most 1000 personalizations and 1000 recipients, at
most 10 categories of at most 255 characters, custom arguments under 10,000 bytes, ``asm``
with an integer ``group_id`` and at most 25 ``groups_to_display``, ``bypass_list_management``
not combined with another bypass. It answers as SendGrid does: ``202`` with an empty body
and ``X-Message-Id``, or the error format ``{"errors": [{"message", "field", "help"}]}``.
Scripted replies (``reply()``, from :class:`postwise.testing.http.ScriptedHttpServer`)
replace the answer to the next authorised requests: any status, headers and body, a dropped
connection or a reply that never comes.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from postwise.testing.http import Answer, Received, Reply, ScriptedHttpServer

__all__ = ["API_KEY", "MAIL_SEND", "FakeSendGrid", "Received", "Reply", "errors"]

MAIL_SEND = "/v3/mail/send"
#: The API key the tests configure and the server expects.
API_KEY = "SG.test-key-0123456789"


def errors(*items: tuple[str | None, str]) -> dict[str, Any]:
    """SendGrid's error body."""
    return {"errors": [{"message": m, "field": f, "help": None} for f, m in items]}


def _validate(body: Any) -> list[tuple[str | None, str]]:
    problems: list[tuple[str | None, str]] = []
    if not isinstance(body, dict):
        return [(None, "Bad Request")]
    personalizations = body.get("personalizations")
    if not isinstance(personalizations, list) or not personalizations:
        problems.append(("personalizations", "The personalizations field is required."))
    else:
        for i, p in enumerate(personalizations):
            to = p.get("to") if isinstance(p, dict) else None
            if not isinstance(to, list) or not to:
                problems.append((f"personalizations.{i}.to", "The to array is required."))
                continue
            for j, rcpt in enumerate(to):
                if not isinstance(rcpt, dict) or "@" not in str(rcpt.get("email", "")):
                    problems.append(
                        (f"personalizations.{i}.to.{j}.email", "Does not contain a valid address.")
                    )
    sender = body.get("from")
    if not isinstance(sender, dict) or "@" not in str(sender.get("email", "")):
        problems.append(("from.email", "The from email does not contain a valid address."))
    if not body.get("subject"):
        problems.append(("subject", "The subject is required."))
    content = body.get("content")
    if not isinstance(content, list) or not content:
        problems.append(("content", "The content field is required."))
    else:
        types = [c.get("type") for c in content if isinstance(c, dict)]
        if "text/plain" in types and types[0] != "text/plain":
            problems.append(("content", "text/plain must be first in the content array."))
        if any(not c.get("value") for c in content if isinstance(c, dict)):
            problems.append(("content.0.value", "The content value must be a string."))
    headers = body.get("headers") or {}
    reserved = {"dkim-signature", "content-type", "to", "from", "subject", "reply-to", "received"}
    for name in headers:
        if name.lower() in reserved:
            problems.append(("headers", f"The header {name} is reserved."))
    for name, value in (body.get("custom_args") or {}).items():
        if not isinstance(value, str):
            problems.append((f"custom_args.{name}", "Custom args must be strings."))
    problems.extend(_check_limits(body))
    return problems


def _check_limits(body: dict[str, Any]) -> list[tuple[str | None, str]]:
    problems: list[tuple[str | None, str]] = []
    personalizations = body.get("personalizations") or []
    recipients = sum(
        len(p.get(kind) or []) for p in personalizations for kind in ("to", "cc", "bcc")
    )
    if len(personalizations) > 1000 or recipients > 1000:
        problems.append(("personalizations", "The total number of recipients must be <= 1000."))
    categories = body.get("categories")
    if categories is not None:
        if not isinstance(categories, list) or len(categories) > 10:
            problems.append(("categories", "You may not have more than 10 categories."))
        elif any(not isinstance(c, str) or not 0 < len(c) <= 255 for c in categories):
            problems.append(("categories", "A category must be 1 to 255 characters."))
        elif len(set(categories)) != len(categories):
            problems.append(("categories", "Categories must be unique."))
    custom_args = body.get("custom_args") or {}
    if len(json.dumps(custom_args).encode()) >= 10_000:
        problems.append(("custom_args", "Custom args must be less than 10000 bytes."))
    asm = body.get("asm")
    if asm is not None:
        group = asm.get("group_id") if isinstance(asm, dict) else None
        if type(group) is not int:
            problems.append(("asm.group_id", "The asm.group_id must be an integer."))
        shown = asm.get("groups_to_display", []) if isinstance(asm, dict) else []
        if not isinstance(shown, list) or len(shown) > 25 or any(type(g) is not int for g in shown):
            problems.append(("asm.groups_to_display", "At most 25 integer group ids."))
    settings = body.get("mail_settings") or {}
    others = {"bypass_spam_management", "bypass_bounce_management", "bypass_unsubscribe_management"}
    if _enabled(settings, "bypass_list_management") and any(_enabled(settings, o) for o in others):
        problems.append(
            (
                "mail_settings",
                "bypass_list_management cannot be combined with other bypass filters.",
            )
        )
    return problems


def _enabled(settings: dict[str, Any], name: str) -> bool:
    value = settings.get(name)
    return isinstance(value, dict) and value.get("enable") is True


class FakeSendGrid(ScriptedHttpServer):
    """Start with :meth:`start`, stop with :meth:`stop`; ``url`` is its base URL."""

    def __init__(self, api_key: str = API_KEY) -> None:
        super().__init__()
        self.api_key = api_key
        #: Addresses on the account's global unsubscribe list (SendGrid drops mail to them,
        #: after accepting it, unless the request bypasses list management).
        self.unsubscribed: set[str] = set()
        #: (recipient, delivered) per accepted request, in order.
        self.outcomes: list[tuple[str, bool]] = []
        #: Addresses SendGrid's validation refuses (answered 400 on the recipient's field).
        self.invalid: set[str] = set()

    def precheck(self, request: Received) -> Answer | None:
        if request.path != MAIL_SEND:
            return 404, errors((None, "not found")), {}
        if request.headers.get("authorization") != f"Bearer {self.api_key}":
            refused = "The provided authorization grant is invalid, expired, or revoked"
            return 401, errors((None, refused)), {}
        return None

    def answer(self, request: Received) -> Answer:
        if not request.headers.get("content-type", "").startswith("application/json"):
            return 415, errors((None, "Content-Type should be application/json.")), {}
        problems = _validate(request.body)
        body = request.body if isinstance(request.body, dict) else {}
        for i, personalization in enumerate(body.get("personalizations") or []):
            for j, rcpt in enumerate(personalization.get("to") or []):
                if str(rcpt.get("email", "")).lower() in self.invalid:
                    field = f"personalizations.{i}.to.{j}.email"
                    problems.append((field, "Does not contain a valid address."))
        if problems:
            return 400, errors(*problems), {}
        body = request.body
        bypass = _enabled(body.get("mail_settings") or {}, "bypass_list_management")
        for personalization in body["personalizations"]:
            for rcpt in personalization["to"]:
                address = rcpt["email"].lower()
                self.outcomes.append((address, bypass or address not in self.unsubscribed))
        return 202, None, {"X-Message-Id": uuid.uuid4().hex[:22]}
