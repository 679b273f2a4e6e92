"""A local SMTP sink: an aiosmtpd server on loopback that writes every message to a folder.

``postwise demo`` and the benchmarks send real SMTP to it, so it must keep up with the provider
(1,000+ messages/s): a writer thread puts each message into a new file with one ``os.write``
and no fsync, named ``<n>-<safe Message-ID>.eml`` and holding exactly the bytes received (CRLF
line endings kept).
The envelope is not stored; the message headers carry what a reader of the outbox needs.

:class:`BackgroundSmtpServer` is the reusable part: an aiosmtpd protocol served from its own
event loop in a daemon thread, on a port the operating system picks.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import os
import queue
import re
import socket
import ssl
import threading
from pathlib import Path
from typing import Self

from aiosmtpd.smtp import SMTP, Envelope, Session

from postwise.errors import ConfigurationError

__all__ = ["BackgroundSmtpServer", "SmtpSink"]

log = logging.getLogger(__name__)

_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*<?([^>\r\n]*)", re.IGNORECASE | re.MULTILINE)
_PLAIN_PATH = re.compile(r"<([^\s<>()\[\]\\,;:@\"]+@[^\s<>()\[\]\\,;:@\"]+)>(?:\s+(.*))?")
_UNSAFE = re.compile(r"[^A-Za-z0-9._@+=-]")
_SEQUENCE = re.compile(r"(\d+)-")
_MAX_ID_LENGTH = 100
_SEQUENCE_WIDTH = 8
_BACKLOG = 10_000


class BackgroundSmtpServer(abc.ABC):
    """An aiosmtpd server with its own event loop in a background thread.

    Subclasses say which protocol object serves a connection by overriding
    :meth:`create_protocol`. Binding happens in :meth:`start`, in the caller's thread, so a port
    that is taken fails there; ``port=0`` lets the operating system pick a free one, read it back
    from :attr:`port`. ``ssl_context`` makes every connection TLS from the first byte
    (implicit TLS, as on port 465). Use it as a context manager, or call :meth:`start` and
    :meth:`stop`.
    """

    def __init__(
        self, host: str = "127.0.0.1", port: int = 0, *, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.host = host
        self._requested_port = port
        self._ssl_context = ssl_context
        self._port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._failure: Exception | None = None

    @property
    def port(self) -> int:
        """The port the server listens on."""
        if self._port is None:
            raise ConfigurationError(f"{type(self).__name__} is not running; call start() first")
        return self._port

    @abc.abstractmethod
    def create_protocol(self, loop: asyncio.AbstractEventLoop) -> SMTP:
        """Return the aiosmtpd protocol object for one new connection."""

    def start(self) -> None:
        """Bind the socket and start serving in a daemon thread; does nothing if running."""
        if self._thread is not None:
            return
        try:
            listener = _listen(self.host, self._requested_port)
        except OSError as error:
            raise ConfigurationError(
                f"cannot listen on {self.host}:{self._requested_port}: {error}; "
                f"pick another port, or 0 for any free one"
            ) from error
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._port = listener.getsockname()[1]
        self._loop = loop
        self._thread = threading.Thread(
            target=self._serve,
            args=(loop, listener, ready),
            name=f"{type(self).__name__}:{self._port}",
            daemon=True,
        )
        self._thread.start()
        ready.wait()
        if self._failure is not None:
            failure, self._failure = self._failure, None
            self._thread.join()
            self._thread = None
            self._loop = None
            self._port = None
            raise ConfigurationError(
                f"{type(self).__name__} could not serve on {self.host}: {failure}"
            ) from failure

    def stop(self) -> None:
        """Stop serving, close open connections and join the thread; does nothing if stopped."""
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._thread = None
        self._loop = None
        self._port = None

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _serve(
        self, loop: asyncio.AbstractEventLoop, listener: socket.socket, ready: threading.Event
    ) -> None:
        asyncio.set_event_loop(loop)
        try:
            server = loop.run_until_complete(
                loop.create_server(
                    lambda: self.create_protocol(loop), sock=listener, ssl=self._ssl_context
                )
            )
        except Exception as error:  # reported to start(), which raises it in the caller
            self._failure = error
            listener.close()
            loop.close()
            ready.set()
            return
        loop.call_soon(ready.set)
        try:
            loop.run_forever()
        finally:
            server.close()
            sessions = asyncio.all_tasks(loop)
            for task in sessions:
                task.cancel()
            loop.run_until_complete(asyncio.gather(*sessions, return_exceptions=True))
            loop.run_until_complete(server.wait_closed())
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()


class SmtpSink(BackgroundSmtpServer):
    """Accept every message on loopback and write it to ``outbox`` as ``<n>-<id>.eml``.

    ``n`` continues after the highest number already in ``outbox``, so a reused folder keeps
    every earlier message; ``id`` is the Message-ID header made safe for file names. The SMTP
    reply names the file (``250 2.0.0 OK: queued as <file stem>``), which the SMTP provider
    reports as the provider message id. Run one sink per folder: a file that already exists is
    never overwritten; that message is logged and counted in :attr:`failed` instead.

    Files are written by a writer thread, so the reply does not wait for the disk (creating a
    file costs from 20 us to over 1 ms depending on the file system, more than a whole SMTP
    transaction). Up to 10,000 accepted messages may wait for the writer; beyond that the sink
    slows down to the disk's pace. :meth:`flush` waits until every accepted message is on disk,
    and :meth:`stop` flushes before it returns.
    """

    def __init__(self, outbox: Path, host: str = "127.0.0.1", port: int = 0) -> None:
        super().__init__(host, port)
        self.outbox = Path(outbox)
        self._count = 0
        self._failed = 0
        self._next = 1
        self._backlog: queue.Queue[tuple[str, bytes] | None] = queue.Queue(_BACKLOG)
        self._writer: threading.Thread | None = None

    @property
    def count(self) -> int:
        """How many messages this sink has accepted; each is in ``outbox`` after :meth:`flush`."""
        return self._count

    @property
    def failed(self) -> int:
        """How many accepted messages could not be written (each one is logged)."""
        return self._failed

    def start(self) -> None:
        """Create ``outbox`` if needed, then start accepting mail; does nothing if running."""
        if self._thread is not None:
            return
        self.outbox.mkdir(parents=True, exist_ok=True)
        self._next = _next_sequence(self.outbox)
        self._writer = threading.Thread(
            target=self._write_backlog, name=f"SmtpSink writer {self.outbox}", daemon=True
        )
        self._writer.start()
        try:
            super().start()
        except BaseException:
            self._stop_writer()
            raise

    def stop(self) -> None:
        """Stop accepting mail, write every accepted message, then return."""
        super().stop()
        self._stop_writer()

    def flush(self) -> None:
        """Block until every message accepted so far is written to ``outbox``."""
        self._backlog.join()

    def create_protocol(self, loop: asyncio.AbstractEventLoop) -> SMTP:
        """An aiosmtpd session that hands each message to this sink."""
        # An explicit hostname matters: aiosmtpd would otherwise call getfqdn() per connection.
        return _SinkSession(
            _SinkHandler(self),
            hostname="postwise-sink",
            ident="postwise SMTP sink",
            enable_SMTPUTF8=True,
            loop=loop,
        )

    async def _receive(self, content: bytes) -> str:
        """Name the message's file and queue it for the writer; runs on the server's loop."""
        match = _MESSAGE_ID.search(content, 0, _header_end(content))
        safe_id = ""
        if match:
            safe_id = _UNSAFE.sub("_", match.group(1).decode("ascii", "replace").strip())
        stem = f"{self._next:0{_SEQUENCE_WIDTH}d}-{safe_id[:_MAX_ID_LENGTH] or 'no-message-id'}"
        self._next += 1
        self._count += 1
        # The loop is the only producer, so a queue that is not full now stays so until put.
        if self._backlog.full():
            await asyncio.to_thread(self._backlog.put, (stem, content))
        else:
            self._backlog.put_nowait((stem, content))
        return stem

    def _write_backlog(self) -> None:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
        while True:
            item = self._backlog.get()
            try:
                if item is None:
                    return
                stem, content = item
                path = self.outbox / f"{stem}.eml"
                try:
                    fd = os.open(path, flags, 0o644)
                    try:
                        view = memoryview(content)
                        while view:
                            view = view[os.write(fd, view) :]
                    finally:
                        os.close(fd)
                except OSError as error:
                    self._failed += 1
                    log.error("SMTP sink could not write %s: %s", path, error)
            finally:
                self._backlog.task_done()

    def _stop_writer(self) -> None:
        if self._writer is not None:
            self._backlog.put(None)
            self._writer.join()
            self._writer = None


class _SinkSession(SMTP):
    """aiosmtpd's session, with a fast path for the plain ``<local@domain>`` paths it sees."""

    def _getaddr(self, arg: str) -> tuple[str | None, str | None]:
        # aiosmtpd runs every MAIL and RCPT path through the email package's RFC 5322 parser,
        # about 50 us each and a sixth of the sink's work per message; plain paths skip it.
        match = _PLAIN_PATH.fullmatch(arg)
        if match is None or self.local_part_limit:
            return super()._getaddr(arg)
        return match.group(1), match.group(2) or ""


class _SinkHandler:
    """The aiosmtpd handler; kept tiny because aiosmtpd scans it on every connection."""

    def __init__(self, sink: SmtpSink) -> None:
        self._sink = sink

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        stem = await self._sink._receive(envelope.original_content or b"")
        return f"250 2.0.0 OK: queued as {stem}"


def _listen(host: str, port: int) -> socket.socket:
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    # proto must be IPPROTO_TCP, not 0: asyncio only sets TCP_NODELAY on sockets that say so,
    # and without it Nagle's algorithm holds back multi-line replies such as EHLO's by ~40 ms.
    listener = socket.socket(family, kind, proto)
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(address)
        listener.listen(128)
    except OSError:
        listener.close()
        raise
    return listener


def _header_end(content: bytes) -> int:
    end = content.find(b"\r\n\r\n")
    return len(content) if end < 0 else end + 2


def _next_sequence(outbox: Path) -> int:
    highest = 0
    with os.scandir(outbox) as entries:
        for entry in entries:
            match = _SEQUENCE.match(entry.name)
            if match and entry.name.endswith(".eml"):
                highest = max(highest, int(match.group(1)))
    return highest + 1
