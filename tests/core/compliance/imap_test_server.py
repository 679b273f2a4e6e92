"""A small real IMAP4rev1 server on loopback, for testing ``postwise.compliance.mailbox``.

It speaks the part of RFC 3501 that a bounce reader uses, over a real TCP socket, so imaplib
runs unmodified against it: CAPABILITY, NOOP, LOGIN, SELECT, CLOSE, EXPUNGE, LOGOUT and UID
SEARCH / FETCH / STORE / COPY, plus UID MOVE (RFC 6851) and UID EXPUNGE (RFC 4315) when those
capabilities are switched on. State lives in :class:`MailStore`, which tests inspect.
"""

from __future__ import annotations

import re
import socketserver
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

_TOKEN_RE = re.compile(r'"(?:[^"\\]|\\.)*"|\([^)]*\)|\S+')


@dataclass
class StoredMessage:
    uid: int
    raw: bytes
    flags: set[str] = field(default_factory=set)


@dataclass
class MailStore:
    username: str
    password: str
    capabilities: tuple[str, ...] = ("IMAP4rev1", "MOVE", "UIDPLUS")
    folders: dict[str, list[StoredMessage]] = field(default_factory=lambda: {"INBOX": []})
    next_uid: int = 1
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, folder: str, raw: bytes, flags: set[str] | None = None) -> int:
        with self.lock:
            uid = self.next_uid
            self.next_uid += 1
            self.folders.setdefault(folder, []).append(StoredMessage(uid, raw, set(flags or ())))
            return uid


def _unquote(token: str) -> str:
    if token.startswith('"') and token.endswith('"'):
        return re.sub(r"\\(.)", r"\1", token[1:-1])
    return token


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        self.selected: str | None = None
        self.authenticated = False
        self._send("* OK IMAP4rev1 postwise test server ready")
        while True:
            line = self.rfile.readline()
            if not line:
                return
            tokens = _TOKEN_RE.findall(line.decode("utf-8", "replace").strip())
            if len(tokens) < 2:
                self._send("* BAD missing tag or command")
                continue
            tag, command, args = tokens[0], tokens[1].upper(), tokens[2:]
            if command == "UID" and args:
                command, args = "UID " + args[0].upper(), args[1:]
            if not self._dispatch(tag, command, args):
                return

    def _send(self, text: str) -> None:
        self.wfile.write(text.encode() + b"\r\n")

    def _dispatch(self, tag: str, command: str, args: list[str]) -> bool:
        store = self.server.store
        if command == "CAPABILITY":
            self._send("* CAPABILITY " + " ".join(store.capabilities))
        elif command == "NOOP":
            pass
        elif command == "LOGOUT":
            self._send("* BYE logging out")
            self._send(f"{tag} OK LOGOUT completed")
            return False
        elif command == "LOGIN":
            user, password = (_unquote(a) for a in args[:2])
            if (user, password) != (store.username, store.password):
                self._send(f"{tag} NO [AUTHENTICATIONFAILED] invalid credentials")
                return True
            self.authenticated = True
        elif not self.authenticated:
            self._send(f"{tag} BAD log in first")
            return True
        elif command == "SELECT":
            name = _unquote(args[0])
            if name not in store.folders:
                self._send(f"{tag} NO no such mailbox")
                return True
            self.selected = name
            self._send(f"* {len(store.folders[name])} EXISTS")
            self._send("* 0 RECENT")
            self._send("* OK [UIDVALIDITY 1] UIDs valid")
            self._send(r"* FLAGS (\Seen \Deleted)")
            self._send(f"{tag} OK [READ-WRITE] SELECT completed")
            return True
        elif self.selected is None:
            self._send(f"{tag} BAD select a mailbox first")
            return True
        else:
            return self._selected_command(tag, command, args)
        self._send(f"{tag} OK {command} completed")
        return True

    def _selected_command(self, tag: str, command: str, args: list[str]) -> bool:
        store = self.server.store
        assert self.selected is not None
        with store.lock:
            messages = store.folders[self.selected]
            uid_set = args[0] if command.startswith("UID ") and command != "UID SEARCH" else ""
            wanted = {int(u) for u in uid_set.split(",") if u}
            if command == "UID SEARCH" and [a.upper() for a in args] == ["UNSEEN"]:
                uids = [str(m.uid) for m in messages if "\\Seen" not in m.flags]
                self._send("* SEARCH" + "".join(f" {u}" for u in uids))
            elif command == "UID FETCH" and args[1].upper() == "(BODY.PEEK[])":
                for seq, message in enumerate(messages, start=1):
                    if message.uid in wanted:
                        head = f"* {seq} FETCH (UID {message.uid} BODY[] {{{len(message.raw)}}}"
                        self.wfile.write(head.encode() + b"\r\n" + message.raw + b")\r\n")
            elif command == "UID STORE" and args[1].upper() == "+FLAGS.SILENT":
                flags = set(args[2].strip("()").split())
                for message in messages:
                    if message.uid in wanted:
                        message.flags |= flags
            elif command in {"UID COPY", "UID MOVE"}:
                if command == "UID MOVE" and "MOVE" not in store.capabilities:
                    self._send(f"{tag} BAD MOVE is not supported")
                    return True
                target = _unquote(args[1])
                if target not in store.folders:
                    self._send(f"{tag} NO [TRYCREATE] no such mailbox")
                    return True
                for message in [m for m in messages if m.uid in wanted]:
                    store.folders[target].append(StoredMessage(store.next_uid, message.raw))
                    store.next_uid += 1
                if command == "UID MOVE":
                    self._expunge(messages, lambda m: m.uid in wanted)
            elif command == "UID EXPUNGE" and "UIDPLUS" in store.capabilities:
                self._expunge(messages, lambda m: m.uid in wanted and "\\Deleted" in m.flags)
            elif command in {"EXPUNGE", "CLOSE"}:
                self._expunge(messages, lambda m: "\\Deleted" in m.flags, quiet=command == "CLOSE")
                if command == "CLOSE":
                    self.selected = None
            else:
                self._send(f"{tag} BAD unsupported command {command}")
                return True
        self._send(f"{tag} OK {command} completed")
        return True

    def _expunge(
        self,
        messages: list[StoredMessage],
        doomed: Callable[[StoredMessage], bool],
        quiet: bool = False,
    ) -> None:
        seq = 1
        for message in list(messages):
            if doomed(message):
                messages.remove(message)
                if not quiet:
                    self._send(f"* {seq} EXPUNGE")
            else:
                seq += 1


class _Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, store: MailStore) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.store = store


@contextmanager
def running_imap_server(store: MailStore) -> Iterator[tuple[str, int]]:
    """Serve ``store`` on 127.0.0.1 at a free port; yields ``(host, port)``."""
    server = _Server(store)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        host, port = server.server_address[:2]
        yield str(host), int(port)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
