"""A scriptable local HTTP server for testing providers that speak to an ESP's JSON API.

:class:`ScriptedHttpServer` is a real HTTP/1.1 server on loopback with keep-alive, run in a
thread. A subclass speaks one vendor's wire format by overriding :meth:`~ScriptedHttpServer.
answer` (and :meth:`~ScriptedHttpServer.precheck` for what the vendor checks before anything
else, such as the API key); a test scripts the next answers with :meth:`~ScriptedHttpServer.
reply`, the way ESPs misbehave in production::

    class FakeEsp(ScriptedHttpServer):
        def answer(self, request):
            return 202, None, {"X-Message-Id": "abc"}

    with FakeEsp() as esp:
        esp.reply(Reply(429, {"Retry-After": "2"}), Reply(drop=True))
        ...  # first request throttled, second read and then left without an answer
        assert len(esp.received) == 2

Every request is recorded in :attr:`~ScriptedHttpServer.received`, scripted or not.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Self

__all__ = ["Answer", "Received", "Reply", "ScriptedHttpServer"]

#: An answer: status, JSON body (``None`` for none, ``bytes`` as is) and extra headers.
Answer = tuple[int, Any, dict[str, str]]


@dataclass(frozen=True)
class Reply:
    """One scripted answer."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    #: JSON-encoded unless ``None`` (no body) or ``bytes`` (sent as is).
    body: Any = None
    #: Read the whole request, then close the connection without answering: the client cannot
    #: tell whether the request was acted on.
    drop: bool = False
    #: Read the whole request, wait this long, then close without answering (a client timeout).
    hang: float = 0.0


@dataclass(frozen=True)
class Received:
    """One request as the server read it: path, headers (lower-cased names), parsed body."""

    path: str
    headers: dict[str, str]
    #: The JSON body parsed, or the raw bytes when it is not JSON, or ``None`` when empty.
    body: Any
    #: When the server had read it (``time.monotonic()``).
    at: float = 0.0


class ScriptedHttpServer:
    """Start with :meth:`start` (or ``with``), stop with :meth:`stop`; ``url`` is its base URL."""

    #: The Content-Type of JSON answers.
    content_type = "application/json"

    def __init__(self) -> None:
        self.received: list[Received] = []
        #: How many TCP connections clients opened.
        self.connections = 0
        self._script: deque[Reply] = deque()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>``, once started."""
        assert self._server is not None, "start the server first"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def reply(self, *replies: Reply) -> None:
        """Answer the next requests that pass :meth:`precheck` with ``replies``, in order."""
        with self._lock:
            self._script.extend(replies)

    def precheck(self, request: Received) -> Answer | None:
        """An answer given before any scripted one (a wrong path, a refused key), or None."""
        return None

    def answer(self, request: Received) -> Answer:
        """The vendor's answer to an unscripted request."""
        raise NotImplementedError("answer as the vendor's API does")

    def _next_reply(self) -> Reply | None:
        with self._lock:
            return self._script.popleft() if self._script else None

    def start(self) -> Self:
        """Listen on a free loopback port and serve in a daemon thread."""
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def setup(self) -> None:
                super().setup()
                with fake._lock:
                    fake.connections += 1

            def log_message(self, format: str, *args: Any) -> None:
                return

            def _answer(self, status: int, body: Any, headers: dict[str, str]) -> None:
                if body is None:
                    data = b""
                elif isinstance(body, bytes):
                    data = body
                else:
                    data = json.dumps(body).encode()
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                if body is not None and not isinstance(body, bytes):
                    self.send_header("Content-Type", fake.content_type)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                try:
                    body = json.loads(raw) if raw else None
                except ValueError:
                    body = raw
                headers = {k.lower(): v for k, v in self.headers.items()}
                request = Received(self.path, headers, body, time.monotonic())
                with fake._lock:
                    fake.received.append(request)
                early = fake.precheck(request)
                if early is not None:
                    self._answer(*early)
                    return
                scripted = fake._next_reply()
                if scripted is None:
                    self._answer(*fake.answer(request))
                    return
                if scripted.drop or scripted.hang:
                    time.sleep(scripted.hang)
                    self.close_connection = True
                    return
                self._answer(scripted.status, scripted.body, scripted.headers)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the listening socket."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
