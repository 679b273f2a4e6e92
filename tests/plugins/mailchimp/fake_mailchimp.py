"""A local HTTP server speaking Mailchimp Transactional's ``messages/send-raw`` wire format.

It checks what the API checks (the ``key`` in the JSON body, a ``raw_message``, the recipients)
and answers as the API does: ``200`` with one result per recipient (``email``, ``status``,
``reject_reason``, ``_id``), or an error object ``{"status": "error", "code", "name",
"message"}`` sent with HTTP 500, as Mailchimp Transactional sends every error. Addresses in
``rejected`` come back ``rejected`` with reason ``hard-bounce``. Scripted replies
(``reply()``) replace the answer to the next requests: any status, headers and body, a dropped
connection or a reply that never comes.
"""

from __future__ import annotations

import email
import email.policy
import json
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

API_KEY = "md-test-key-0123456789"
#: The webhook key the tests configure and sign with.
WEBHOOK_KEY = "whk-test-0123456789abcdef"
SEND_RAW = "/api/1.3/messages/send-raw.json"


@dataclass(frozen=True)
class Reply:
    """One scripted answer."""

    status: int = 200
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


def error(name: str, message: str, code: int = -1) -> dict[str, Any]:
    """Mailchimp Transactional's error object."""
    return {"status": "error", "code": code, "name": name, "message": message}


class FakeMailchimp:
    """Start with :meth:`start`, stop with :meth:`stop`; ``base_url`` is the API base URL."""

    def __init__(self, api_key: str = API_KEY) -> None:
        self.api_key = api_key
        self.rejected: set[str] = set()
        self.received: list[Received] = []
        self.connections = 0
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}/api/1.3"

    def reply(self, *replies: Reply) -> None:
        """Answer the next requests with ``replies``, in order."""
        with self._lock:
            self._script.extend(replies)

    def _next_reply(self) -> Reply | None:
        with self._lock:
            return self._script.popleft() if self._script else None

    def _answer_send(self, body: Any) -> tuple[int, Any]:
        if not isinstance(body, dict):
            return 500, error("ValidationError", "You must specify a key value")
        if body.get("key") != self.api_key:
            return 500, error("Invalid_Key", "Invalid API key")
        raw = body.get("raw_message")
        if not isinstance(raw, str) or not raw:
            return 500, error(
                "ValidationError", 'Validation error: {"raw_message":"Please enter a value"}'
            )
        parsed = email.message_from_string(raw, policy=email.policy.default)
        recipients = body.get("to") or [a.addr_spec for a in parsed["To"].addresses]
        results = []
        for address in recipients:
            if "@" not in address:
                results.append({"email": address, "status": "invalid", "_id": uuid.uuid4().hex})
            elif address in self.rejected:
                results.append(
                    {
                        "email": address,
                        "status": "rejected",
                        "reject_reason": "hard-bounce",
                        "_id": uuid.uuid4().hex,
                    }
                )
            else:
                results.append(
                    {
                        "email": address,
                        "status": "sent",
                        "reject_reason": None,
                        "_id": uuid.uuid4().hex,
                    }
                )
        return 200, results

    def start(self) -> FakeMailchimp:
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
                if body is not None:
                    self.send_header("Content-Type", "application/json; charset=utf-8")
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
                if self.path != SEND_RAW:
                    self._answer(500, error("Unknown_Method", f"unknown method {self.path}"))
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
                status, answer = fake._answer_send(body)
                self._answer(status, answer)

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
