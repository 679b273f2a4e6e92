"""A local HTTP server speaking SendGrid's v3 Mail Send wire format, for tests.

It checks what SendGrid checks first (``Authorization: Bearer <key>``, a JSON body with
``personalizations[].to[].email``, ``from.email``, ``subject``, ``content[]`` with text/plain
first) and answers as SendGrid does: ``202`` with an empty body and ``X-Message-Id``, or the
error format ``{"errors": [{"message", "field", "help"}]}``. Scripted replies (``reply()``)
replace the answer to the next requests: any status, headers and body, a dropped connection or
a reply that never comes.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MAIL_SEND = "/v3/mail/send"
#: The API key the tests configure and the server expects.
API_KEY = "SG.test-key-0123456789"


@dataclass(frozen=True)
class Reply:
    """One scripted answer."""

    status: int = 202
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    #: Close the connection without answering.
    drop: bool = False
    #: Wait this long before closing without answering (a timeout on the client side).
    hang: float = 0.0


@dataclass(frozen=True)
class Received:
    path: str
    headers: dict[str, str]
    body: Any


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
    return problems


class FakeSendGrid:
    """Start with :meth:`start`, stop with :meth:`stop`; ``url`` is its base URL."""

    def __init__(self, api_key: str = API_KEY) -> None:
        self.api_key = api_key
        self.received: list[Received] = []
        self.connections = 0
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.server_address[1]
        return f"http://127.0.0.1:{port}"

    def reply(self, *replies: Reply) -> None:
        """Answer the next requests with ``replies``, in order."""
        with self._lock:
            self._script.extend(replies)

    def _next_reply(self) -> Reply | None:
        with self._lock:
            return self._script.popleft() if self._script else None

    def start(self) -> FakeSendGrid:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with fake._lock:
                    fake.connections += 1

            def log_message(self, format: str, *args: Any) -> None:
                return

            def _answer(
                self, status: int, body: Any, headers: dict[str, str] | None = None
            ) -> None:
                data = b"" if body is None else json.dumps(body).encode()
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                if data:
                    self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw
                headers = {k.lower(): v for k, v in self.headers.items()}
                with fake._lock:
                    fake.received.append(Received(self.path, headers, body))
                if self.path != MAIL_SEND:
                    self._answer(404, errors((None, "not found")))
                    return
                if headers.get("authorization") != f"Bearer {fake.api_key}":
                    self._answer(
                        401,
                        errors(
                            (
                                None,
                                "The provided authorization grant is invalid, expired, or revoked",
                            )
                        ),
                    )
                    return
                scripted = fake._next_reply()
                if scripted is not None:
                    if scripted.hang:
                        time.sleep(scripted.hang)
                    if scripted.drop or scripted.hang:
                        self.close_connection = True
                        return
                    self._answer(scripted.status, scripted.body, scripted.headers)
                    return
                if not headers.get("content-type", "").startswith("application/json"):
                    self._answer(415, errors((None, "Content-Type should be application/json.")))
                    return
                problems = _validate(body)
                if problems:
                    self._answer(400, errors(*problems))
                    return
                self._answer(202, None, {"X-Message-Id": uuid.uuid4().hex[:22]})

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
