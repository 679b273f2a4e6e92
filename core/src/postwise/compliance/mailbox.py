"""Read returned mail (DSNs, complaints, auto-replies) from a maildir or an IMAP mailbox.

Both sources yield :class:`InboundMessage` objects and change nothing until the caller calls
:meth:`InboundMessage.acknowledge`, typically after the message has been classified and its
outcome recorded. A message that is never acknowledged (the process crashed, the database was
down) stays unseen and is read again on the next run, so nothing is lost; the price is that
the consumer must tolerate seeing a message twice.

Both sources offer ``messages()`` (for IMAP the same as ``fetch_unseen()``). Acknowledging
marks the message seen (maildir: moved to ``cur/`` with the ``S`` flag; IMAP:
``\\Seen``) or, when ``move_to`` is given, moves it to another maildir or IMAP folder.

:func:`open_mailbox` builds a source from the ``bounce_mailbox`` setting: a maildir path or an
``imap://`` / ``imaps://user@host[:port]/FOLDER`` URL.
"""

from __future__ import annotations

import imaplib
import mailbox
import os
import ssl
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from urllib.parse import unquote, urlsplit

from postwise.errors import ConfigurationError

__all__ = ["ImapSource", "InboundMessage", "MaildirSource", "open_mailbox"]


@dataclass
class InboundMessage:
    """One message read from a source, not yet acknowledged."""

    #: The message exactly as stored (RFC 5322 bytes).
    raw: bytes
    #: Where it came from: the maildir key, or ``FOLDER/UID`` for IMAP.
    source_id: str
    _acknowledge: Callable[[], None] = field(repr=False)
    acknowledged: bool = False

    def acknowledge(self) -> None:
        """Mark the message seen (or move it), so the next read skips it. Idempotent."""
        if not self.acknowledged:
            self._acknowledge()
            self.acknowledged = True


class MaildirSource:
    """Unseen messages of a maildir: those in ``new/`` and those in ``cur/`` without ``S``."""

    def __init__(self, path: str | Path, *, move_to: str | Path | None = None) -> None:
        self.path = Path(path)
        if not (self.path / "new").is_dir() or not (self.path / "cur").is_dir():
            raise ConfigurationError(
                f"{self.path} is not a maildir (it needs new/, cur/ and tmp/ folders); "
                "point bounce_mailbox at the maildir your MTA delivers bounces to"
            )
        self._maildir = mailbox.Maildir(self.path, factory=None, create=False)
        self._target = (
            mailbox.Maildir(Path(move_to), factory=None, create=True) if move_to else None
        )

    def messages(self) -> Iterator[InboundMessage]:
        """Yield every unseen message, in key order (maildir keys start with the arrival time)."""
        located = self._listing()
        for key in sorted(located):
            folder, name = located[key]
            if self._is_seen(folder, name):
                continue
            try:
                raw = self._maildir.get_bytes(key)
            except (KeyError, FileNotFoundError):
                continue  # taken by another reader since the listing
            yield InboundMessage(
                raw=raw, source_id=key, _acknowledge=self._acknowledger(key, folder, name, raw)
            )

    def close(self) -> None:
        """Release the maildir handles (nothing is locked; this is for symmetry with IMAP)."""
        self._maildir.close()
        if self._target is not None:
            self._target.close()

    def __enter__(self) -> MaildirSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _listing(self) -> dict[str, tuple[str, str]]:
        """key -> (folder, file name) for every message in ``new/`` and ``cur/``."""
        located: dict[str, tuple[str, str]] = {}
        for folder in ("new", "cur"):
            for name in os.listdir(self.path / folder):
                if not name.startswith("."):
                    located[name.split(self._maildir.colon)[0]] = (folder, name)
        return located

    def _is_seen(self, folder: str, name: str) -> bool:
        info = name.partition(self._maildir.colon)[2]
        return folder == "cur" and info.startswith("2,") and "S" in info[2:]

    def _acknowledger(self, key: str, folder: str, name: str, raw: bytes) -> Callable[[], None]:
        def acknowledge() -> None:
            if self._target is not None:
                self._target.add(raw)
                self._maildir.discard(key)
                return
            # Rename in place, as the maildir convention does: the bytes stay untouched
            # (mailbox.Maildir.__setitem__ would re-serialize the message instead).
            info = name.partition(self._maildir.colon)[2]
            flags = set(info[2:]) if info.startswith("2,") else set()
            flags.add("S")
            seen_name = f"{key}{self._maildir.colon}2,{''.join(sorted(flags))}"
            try:
                os.replace(self.path / folder / name, self.path / "cur" / seen_name)
            except FileNotFoundError:
                return  # another reader acknowledged it first

        return acknowledge


class ImapSource:
    """Unseen messages of one IMAP folder (RFC 3501), read without setting ``\\Seen``.

    Messages are fetched with ``BODY.PEEK[]`` so that reading does not mark them seen; only
    :meth:`InboundMessage.acknowledge` does, or moves them to ``move_to`` (``UID MOVE`` when
    the server supports RFC 6851, else ``COPY`` + ``\\Deleted`` + ``EXPUNGE``). Acknowledge
    while the source is open: the connection is closed with the source.
    """

    def __init__(
        self,
        host: str,
        *,
        username: str,
        password: str,
        folder: str = "INBOX",
        port: int | None = None,
        use_ssl: bool = True,
        move_to: str | None = None,
        timeout: float = 30.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.folder = folder
        self.move_to = move_to
        where = f"{host}:{port or (993 if use_ssl else 143)}"
        try:
            if use_ssl:
                self._conn: imaplib.IMAP4 = imaplib.IMAP4_SSL(
                    host,
                    port or 993,
                    ssl_context=ssl_context or ssl.create_default_context(),
                    timeout=timeout,
                )
            else:
                self._conn = imaplib.IMAP4(host, port or 143, timeout=timeout)
        except (OSError, imaplib.IMAP4.error) as exc:
            raise ConfigurationError(
                f"could not connect to the IMAP server {where} ({exc}); check bounce_mailbox "
                "and that the server is reachable"
            ) from exc
        try:
            self._conn.login(username, password)
            status, data = self._conn.select(_quote(folder))
        except imaplib.IMAP4.error as exc:
            self._conn.shutdown()
            raise ConfigurationError(
                f"IMAP login or SELECT as {username!r} on {where} failed ({exc}); check the "
                "user, the password and the folder name in bounce_mailbox"
            ) from exc
        if status != "OK":
            self.close()
            raise ConfigurationError(
                f"IMAP folder {folder!r} on {where} cannot be selected ({_text(data)})"
            )
        self._capabilities = {c.upper() for c in self._conn.capabilities}

    def fetch_unseen(self) -> Iterator[InboundMessage]:
        """Yield every message without ``\\Seen``, in UID order, leaving it unseen."""
        status, data = self._conn.uid("SEARCH", "UNSEEN")
        if status != "OK":
            raise ConfigurationError(f"IMAP SEARCH UNSEEN failed in {self.folder!r}: {_text(data)}")
        found = data[0] if data and isinstance(data[0], bytes) else b""
        for uid in sorted((u.decode() for u in found.split()), key=int):
            status, fetched = self._conn.uid("FETCH", uid, "(BODY.PEEK[])")
            raw = next(
                (item[1] for item in fetched if isinstance(item, tuple) and len(item) == 2),
                None,
            )
            if status != "OK" or not isinstance(raw, bytes):
                continue  # expunged by another client between SEARCH and FETCH
            yield InboundMessage(
                raw=raw,
                source_id=f"{self.folder}/{uid}",
                _acknowledge=self._acknowledger(uid),
            )

    def messages(self) -> Iterator[InboundMessage]:
        """The interface both sources share; for IMAP it is :meth:`fetch_unseen`."""
        return self.fetch_unseen()

    def close(self) -> None:
        """Log out and close the connection. Safe to call twice."""
        if self._conn.state == "LOGOUT":
            return
        try:
            if self._conn.state == "SELECTED":
                self._conn.close()
            self._conn.logout()
        except (OSError, imaplib.IMAP4.error):
            self._conn.shutdown()

    def __enter__(self) -> ImapSource:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _acknowledger(self, uid: str) -> Callable[[], None]:
        def acknowledge() -> None:
            if self.move_to is None:
                self._check(self._conn.uid("STORE", uid, "+FLAGS.SILENT", r"(\Seen)"), "STORE")
                return
            target = _quote(self.move_to)
            if "MOVE" in self._capabilities:
                self._check(self._conn.uid("MOVE", uid, target), "MOVE")
                return
            self._check(self._conn.uid("COPY", uid, target), "COPY")
            self._check(self._conn.uid("STORE", uid, "+FLAGS.SILENT", r"(\Deleted)"), "STORE")
            if "UIDPLUS" in self._capabilities:
                self._check(self._conn.uid("EXPUNGE", uid), "UID EXPUNGE")
            else:
                # Without UIDPLUS, EXPUNGE also removes what other clients marked \Deleted in
                # this folder; that is what \Deleted asks for, so it is safe.
                self._check(self._conn.expunge(), "EXPUNGE")

        return acknowledge

    def _check(self, response: tuple[str, list[object]], command: str) -> None:
        status, data = response
        if status != "OK":
            raise ConfigurationError(
                f"IMAP {command} failed in {self.folder!r}: {_text(data)}; check that "
                f"the account may change this folder"
                + (f" and that {self.move_to!r} exists" if self.move_to else "")
            )


def open_mailbox(
    spec: str, *, password: str | None = None, move_to: str | None = None
) -> MaildirSource | ImapSource:
    """A source for ``spec``: a maildir path, or ``imap[s]://user[:password]@host[:port]/FOLDER``.

    The password comes from ``password`` when given, else from the URL (percent-decoded).
    ``move_to`` is a maildir path or an IMAP folder, matching the source.
    """
    if not spec.strip():
        raise ConfigurationError(
            "no bounce mailbox is configured; set bounce_mailbox to a maildir path or an "
            "imaps://user@host/FOLDER URL"
        )
    if "://" not in spec:
        return MaildirSource(spec, move_to=move_to)
    url = urlsplit(spec)
    if url.scheme not in {"imap", "imaps"} or not url.hostname or not url.username:
        raise ConfigurationError(
            f"bounce_mailbox {spec!r} is neither a maildir path nor an "
            "imap[s]://user@host[:port]/FOLDER URL"
        )
    secret = password if password is not None else unquote(url.password or "")
    if not secret:
        raise ConfigurationError(
            f"no password for the IMAP mailbox {url.hostname}; pass it separately or in the URL"
        )
    return ImapSource(
        url.hostname,
        username=unquote(url.username),
        password=secret,
        folder=unquote(url.path.lstrip("/")) or "INBOX",
        port=url.port,
        use_ssl=url.scheme == "imaps",
        move_to=move_to,
    )


def _quote(name: str) -> str:
    """An IMAP mailbox name as a quoted string (imaplib sends arguments as they are)."""
    return '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _text(data: object) -> str:
    if isinstance(data, list):
        return " ".join(_text(d) for d in data)
    if isinstance(data, bytes):
        return data.decode("utf-8", "replace")
    return str(data)
