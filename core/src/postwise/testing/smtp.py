"""A fault-injecting SMTP server for provider tests.

:class:`FaultySmtpServer` is a real aiosmtpd server on loopback that misbehaves on cue, the way
relays do in production, and records every message it accepted, so a test can assert that each
message got exactly one correct outcome and that none was accepted twice::

    with FaultySmtpServer() as server:
        server.fail_transactions(2, code=421)           # next two MAIL FROM: 421 and hang up
        server.reject_recipients("*@gone.example")      # 550 5.1.1 for those, always
        server.defer_recipients("*@busy.example", seconds=1.0)   # 451 for one second
        server.drop_connections(1, stage="data")        # hang up after 354, mid-message
        server.slow_replies(2.0, command="DATA")        # accept, then answer late
        results = provider.send_batch(messages)
        assert not server.duplicates()

Every fault applies to the next matching events (a count) or for a while (seconds), in the
order the server meets them; several faults may be armed at once. The server also speaks
STARTTLS and AUTH when given a TLS context and credentials;
:func:`self_signed_tls_contexts` makes a matching pair of server and client contexts.
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import fnmatch
import ipaddress
import random
import re
import ssl
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NoReturn

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from postwise.devtools.sink import BackgroundSmtpServer
from postwise.errors import ValidationError

__all__ = [
    "ChaosRates",
    "DropStage",
    "FaultySmtpServer",
    "ReceivedMessage",
    "self_signed_certificate",
    "self_signed_tls_contexts",
    "server_tls_context",
]

#: Where :meth:`FaultySmtpServer.drop_connections` hangs up: on ``MAIL FROM``, on ``RCPT TO``,
#: right after the 354 that invites the content (the client is mid-message), after the content
#: arrived but before it is accepted, or after it was accepted and recorded but before the 250
#: reply (the client cannot know the message went through).
DropStage = Literal["mail", "rcpt", "data", "end_of_data", "after_accept"]
_DROP_STAGES: tuple[str, ...] = ("mail", "rcpt", "data", "end_of_data", "after_accept")
_SLOW_COMMANDS: tuple[str, ...] = ("*", "EHLO", "MAIL", "RCPT", "DATA", "RSET", "NOOP")
_MESSAGE_ID = re.compile(rb"^message-id:[ \t]*<?([^>\r\n]*)", re.IGNORECASE | re.MULTILINE)


@dataclass(frozen=True, slots=True)
class ReceivedMessage:
    """A message the server accepted (it answered 250 to the end of data, or was about to)."""

    mail_from: str
    rcpt_tos: tuple[str, ...]
    #: MAIL FROM parameters as sent, upper-cased (``SIZE=...``, ``BODY=8BITMIME``, ...).
    mail_options: tuple[str, ...]
    #: The message exactly as received, dot-stuffing removed.
    content: bytes
    #: The Message-ID header without angle brackets, when there is one.
    message_id: str | None
    #: Which connection carried it, counting from 1.
    connection: int
    #: Whether the session was encrypted (STARTTLS, or implicit TLS).
    tls: bool
    #: The user the client authenticated as, when it did.
    authenticated_as: str | None


@dataclass
class _Countdown:
    remaining: int
    code: int = 0
    text: str = ""


@dataclass
class _RecipientRule:
    pattern: str
    code: int
    text: str
    until: float | None


@dataclass
class _Slowdown:
    seconds: float
    command: str
    remaining: int | None


@dataclass(frozen=True, slots=True)
class ChaosRates:
    """How often :meth:`FaultySmtpServer.chaos` misbehaves, each a probability per transaction.

    ``shutdown``: 421 to MAIL FROM and hang up; ``greylist``: 451 4.7.1 to RCPT TO;
    ``drop_after_354``: hang up once the content was invited; ``drop_after_content``: hang up
    once the content arrived, before accepting it; ``drop_after_accept``: accept and record the
    message, then hang up without the 250; ``late``: answer the end of data ``late_seconds``
    late; ``garbage``: accept and record the message, then answer the end of data with a line
    that is not an SMTP reply.
    """

    shutdown: float = 0.0
    greylist: float = 0.0
    drop_after_354: float = 0.0
    drop_after_content: float = 0.0
    drop_after_accept: float = 0.0
    late: float = 0.0
    late_seconds: float = 0.5
    garbage: float = 0.0


class _Chaos:
    def __init__(self, rates: ChaosRates, seed: int) -> None:
        self.rates = rates
        self.rng = random.Random(seed)
        self.counts: collections.Counter[str] = collections.Counter()


class FaultySmtpServer(BackgroundSmtpServer):
    """An aiosmtpd server on loopback with scripted faults and a record of accepted mail.

    ``tls_context`` enables STARTTLS (``require_starttls`` refuses mail without it);
    ``implicit_tls_context`` makes the server TLS from the first byte instead (port 465 style);
    ``credentials`` (user to password) enables AUTH PLAIN/LOGIN and requires it for mail.
    AUTH is only offered over TLS unless ``auth_require_tls`` is false. All methods are safe to
    call from the test's thread while the server runs.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        tls_context: ssl.SSLContext | None = None,
        require_starttls: bool = False,
        implicit_tls_context: ssl.SSLContext | None = None,
        credentials: Mapping[str, str] | None = None,
        auth_require_tls: bool = True,
        hostname: str = "faulty.postwise.test",
    ) -> None:
        super().__init__(host, port, ssl_context=implicit_tls_context)
        self._tls_context = tls_context
        self._require_starttls = require_starttls
        self._credentials = dict(credentials) if credentials is not None else None
        self._auth_require_tls = auth_require_tls
        self._hostname = hostname
        self._lock = threading.Lock()
        self._accepted: list[ReceivedMessage] = []
        self._connections = 0
        self._transactions = 0
        self._greeting_faults: list[_Countdown] = []
        self._transaction_faults: list[_Countdown] = []
        self._recipient_rules: list[_RecipientRule] = []
        self._drops: dict[str, int] = collections.Counter()
        self._slowdowns: list[_Slowdown] = []
        self._chaos: _Chaos | None = None

    # -- scripting -------------------------------------------------------------------------

    def fail_connections(
        self, count: int, code: int = 421, text: str = "4.3.2 Service not available"
    ) -> None:
        """Greet the next ``count`` connections with ``code`` instead of 220, then hang up."""
        with self._lock:
            self._greeting_faults.append(_Countdown(_positive(count), code, text))

    def fail_transactions(
        self, count: int, code: int = 421, text: str = "4.3.2 Service shutting down"
    ) -> None:
        """Answer the next ``count`` MAIL FROM commands with ``code``.

        A 421 also closes the connection, as a real server does when it says so.
        """
        with self._lock:
            self._transaction_faults.append(_Countdown(_positive(count), code, text))

    def reject_recipients(
        self, *patterns: str, code: int = 550, text: str = "5.1.1 User unknown"
    ) -> None:
        """Answer RCPT TO for addresses matching any glob in ``patterns`` with ``code``, always."""
        with self._lock:
            for pattern in patterns:
                self._recipient_rules.append(_RecipientRule(pattern.lower(), code, text, None))

    def defer_recipients(
        self,
        pattern: str,
        seconds: float,
        code: int = 451,
        text: str = "4.7.1 Try again later",
    ) -> None:
        """Answer RCPT TO for addresses matching the glob ``pattern`` with ``code`` for a while."""
        with self._lock:
            until = time.monotonic() + seconds
            self._recipient_rules.append(_RecipientRule(pattern.lower(), code, text, until))

    def drop_connections(self, count: int, stage: DropStage = "data") -> None:
        """Hang up without a reply at ``stage`` of the next ``count`` transactions reaching it."""
        if stage not in _DROP_STAGES:
            raise ValidationError(f"must be one of {', '.join(_DROP_STAGES)}", field="stage")
        with self._lock:
            self._drops[stage] += _positive(count)

    def slow_replies(self, seconds: float, count: int | None = 1, command: str = "*") -> None:
        """Delay the reply to the next ``count`` ``command``\\ s (all of them if ``count`` is None).

        ``command`` is EHLO, MAIL, RCPT, DATA (the reply after the content, once the message is
        accepted and recorded), RSET, NOOP, or ``*`` for any of them.
        """
        name = command.upper()
        if name not in _SLOW_COMMANDS:
            raise ValidationError(f"must be one of {', '.join(_SLOW_COMMANDS)}", field="command")
        with self._lock:
            remaining = None if count is None else _positive(count)
            self._slowdowns.append(_Slowdown(seconds, name, remaining))

    def chaos(self, rates: ChaosRates, *, seed: int = 0) -> None:
        """Misbehave at random from now on, at ``rates`` (the dice are seeded by ``seed``)."""
        with self._lock:
            self._chaos = _Chaos(rates, seed)

    def chaos_counts(self) -> dict[str, int]:
        """How many times each kind of random fault struck so far."""
        with self._lock:
            return dict(self._chaos.counts) if self._chaos is not None else {}

    def _roll(self, kind: str) -> bool:
        with self._lock:
            chaos = self._chaos
            if chaos is None:
                return False
            rate: float = getattr(chaos.rates, kind)
            if rate <= 0 or chaos.rng.random() >= rate:
                return False
            chaos.counts[kind] += 1
            return True

    def _late_seconds(self) -> float:
        with self._lock:
            return self._chaos.rates.late_seconds if self._chaos is not None else 0.0

    def clear_faults(self) -> None:
        """Disarm every scripted fault and the chaos; the record of accepted mail is kept."""
        with self._lock:
            if self._chaos is not None:
                counts = self._chaos.counts
                self._chaos = _Chaos(ChaosRates(), 0)
                self._chaos.counts = counts
            self._greeting_faults.clear()
            self._transaction_faults.clear()
            self._recipient_rules.clear()
            self._drops.clear()
            self._slowdowns.clear()

    # -- record ----------------------------------------------------------------------------

    @property
    def accepted(self) -> list[ReceivedMessage]:
        """Every message accepted so far, in order."""
        with self._lock:
            return list(self._accepted)

    @property
    def connections(self) -> int:
        """How many connections the server has received."""
        with self._lock:
            return self._connections

    @property
    def transactions(self) -> int:
        """How many MAIL FROM commands the server has received."""
        with self._lock:
            return self._transactions

    def accepted_ids(self) -> list[str | None]:
        """The Message-ID of every accepted message, in order of acceptance."""
        return [message.message_id for message in self.accepted]

    def duplicates(self) -> dict[str, int]:
        """Message-IDs accepted more than once, with how many times."""
        counts = collections.Counter(i for i in self.accepted_ids() if i is not None)
        return {message_id: n for message_id, n in counts.items() if n > 1}

    # -- serving ---------------------------------------------------------------------------

    def create_protocol(self, loop: asyncio.AbstractEventLoop) -> SMTP:
        """A session that consults this server's script; counts the connection."""
        with self._lock:
            self._connections += 1
            number = self._connections
        options: dict[str, Any] = {}
        if self._credentials is not None:
            options.update(
                authenticator=self._authenticate,
                auth_required=True,
                auth_require_tls=self._auth_require_tls,
            )
        return _FaultySession(
            self,
            number,
            _FaultyHandler(self),
            hostname=self._hostname,
            ident="postwise fault-injecting SMTP server",
            enable_SMTPUTF8=True,
            tls_context=self._tls_context,
            require_starttls=self._require_starttls,
            loop=loop,
            **options,
        )

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, data: Any
    ) -> AuthResult:
        assert self._credentials is not None
        if isinstance(data, LoginPassword):
            user = data.login.decode("utf-8", "replace")
            if self._credentials.get(user) == data.password.decode("utf-8", "replace"):
                return AuthResult(success=True, auth_data=data)
        return AuthResult(success=False, handled=False)

    def _take_greeting_fault(self) -> _Countdown | None:
        with self._lock:
            return _take(self._greeting_faults)

    def _start_transaction(self) -> _Countdown | None:
        with self._lock:
            self._transactions += 1
            return _take(self._transaction_faults)

    def _take_drop(self, stage: str) -> bool:
        with self._lock:
            if self._drops[stage] > 0:
                self._drops[stage] -= 1
                return True
            return False

    def _recipient_reply(self, address: str) -> str | None:
        now = time.monotonic()
        lowered = address.lower()
        with self._lock:
            for rule in self._recipient_rules:
                if (rule.until is None or now < rule.until) and fnmatch.fnmatchcase(
                    lowered, rule.pattern
                ):
                    return f"{rule.code} {rule.text}"
        return None

    async def _delay(self, command: str) -> None:
        with self._lock:
            delay = 0.0
            for slowdown in self._slowdowns:
                if slowdown.command in ("*", command) and slowdown.remaining != 0:
                    delay = slowdown.seconds
                    if slowdown.remaining is not None:
                        slowdown.remaining -= 1
                    break
        if delay:
            await asyncio.sleep(delay)

    def _record(self, session: Session, envelope: Envelope, connection: int) -> None:
        content = envelope.original_content or b""
        header_end = content.find(b"\r\n\r\n")
        match = _MESSAGE_ID.search(content, 0, len(content) if header_end < 0 else header_end)
        auth = session.auth_data
        login = auth.login if isinstance(auth, LoginPassword) else None
        message = ReceivedMessage(
            mail_from=envelope.mail_from or "",
            rcpt_tos=tuple(envelope.rcpt_tos),
            mail_options=tuple(envelope.mail_options),
            content=content,
            message_id=match.group(1).decode("utf-8", "replace").strip() if match else None,
            connection=connection,
            tls=session.ssl is not None or self._ssl_context is not None,
            authenticated_as=login.decode("utf-8", "replace") if login else None,
        )
        with self._lock:
            self._accepted.append(message)


class _FaultySession(SMTP):
    """aiosmtpd's session with two faults its handler hooks cannot express."""

    def __init__(
        self, server: FaultySmtpServer, number: int, handler: _FaultyHandler, **kwargs: Any
    ) -> None:
        super().__init__(handler, **kwargs)
        self.fault_server = server
        self.number = number

    async def _handle_client(self) -> None:
        fault = self.fault_server._take_greeting_fault()
        if fault is not None:
            await self.push(f"{fault.code} {fault.text}")
            assert self.transport is not None
            self.transport.close()
            return
        await super()._handle_client()

    async def smtp_DATA(self, arg: str) -> None:
        ready = self.envelope is not None and self.envelope.rcpt_tos and not arg
        server = self.fault_server
        if ready and (server._take_drop("data") or server._roll("drop_after_354")):
            await self.push("354 End data with <CR><LF>.<CR><LF>")
            _hang_up(self)
        await super().smtp_DATA(arg)


class _FaultyHandler:
    """Handler hooks for MAIL, RCPT, DATA and the commands ``slow_replies`` may delay."""

    def __init__(self, server: FaultySmtpServer) -> None:
        self._server = server

    async def handle_EHLO(
        self,
        server: SMTP,
        session: Session,
        envelope: Envelope,
        hostname: str,
        responses: list[str],
    ) -> list[str]:
        await self._server._delay("EHLO")
        session.host_name = hostname
        return responses

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        await self._server._delay("MAIL")
        fault = self._server._start_transaction()
        if fault is None and self._server._roll("shutdown"):
            fault = _Countdown(0, 421, "4.3.2 Service shutting down")
        if self._server._take_drop("mail"):
            _hang_up(server)
        if fault is not None:
            if fault.code == 421:
                await server.push(f"421 {fault.text}")
                _hang_up(server)
            return f"{fault.code} {fault.text}"
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, options: list[str]
    ) -> str:
        await self._server._delay("RCPT")
        if self._server._take_drop("rcpt"):
            _hang_up(server)
        refusal = self._server._recipient_reply(address)
        if refusal is None and self._server._roll("greylist"):
            refusal = "451 4.7.1 Greylisted, please try again later"
        if refusal is not None:
            if refusal.startswith("421 "):
                await server.push(refusal)
                _hang_up(server)
            return refusal
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(options)
        return "250 2.1.5 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        faults = self._server
        if faults._take_drop("end_of_data") or faults._roll("drop_after_content"):
            _hang_up(server)
        assert isinstance(server, _FaultySession)
        faults._record(session, envelope, server.number)
        if faults._take_drop("after_accept") or faults._roll("drop_after_accept"):
            _hang_up(server)
        await faults._delay("DATA")
        if faults._roll("late"):
            await asyncio.sleep(faults._late_seconds())
        if faults._roll("garbage"):
            return "?!# garbled relay answer"
        return f"250 2.0.0 OK: queued as c{server.number}t{self._server.transactions}"

    async def handle_RSET(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        await self._server._delay("RSET")
        return "250 2.0.0 OK"

    async def handle_NOOP(
        self, server: SMTP, session: Session, envelope: Envelope, arg: str
    ) -> str:
        await self._server._delay("NOOP")
        return "250 2.0.0 OK"


def _hang_up(server: SMTP) -> NoReturn:
    """Close the connection without a reply and end the session task, like a crashed relay."""
    if server.transport is not None:
        server.transport.close()
    raise asyncio.CancelledError


def _take(faults: list[_Countdown]) -> _Countdown | None:
    for fault in faults:
        if fault.remaining > 0:
            fault.remaining -= 1
            return fault
    return None


def _positive(count: int) -> int:
    if count < 1:
        raise ValidationError(f"must be at least 1, not {count}", field="count")
    return count


def self_signed_tls_contexts(
    hostname: str = "localhost", addresses: tuple[str, ...] = ("127.0.0.1",)
) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context with a fresh self-signed certificate, and a client context trusting it.

    The certificate names ``hostname`` and the IP ``addresses``, so a client connecting to
    127.0.0.1 verifies it with hostname checking on.
    """
    certificate_pem, key_pem = self_signed_certificate(hostname, addresses)
    return server_tls_context(certificate_pem, key_pem), ssl.create_default_context(
        cadata=certificate_pem.decode("ascii")
    )


def server_tls_context(certificate_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """A TLS server context presenting ``certificate_pem`` with ``key_pem``."""
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    # load_cert_chain only reads files; they are gone once the context holds the key.
    with tempfile.TemporaryDirectory() as folder:
        certificate_file = Path(folder, "cert.pem")
        key_file = Path(folder, "key.pem")
        certificate_file.write_bytes(certificate_pem)
        key_file.write_bytes(key_pem)
        server.load_cert_chain(certificate_file, key_file)
    return server


def self_signed_certificate(
    hostname: str = "localhost", addresses: tuple[str, ...] = ("127.0.0.1",)
) -> tuple[bytes, bytes]:
    """A fresh self-signed certificate (it is its own CA) and its key, both PEM, naming
    ``hostname`` and the IP ``addresses``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.UTC)
    alternative_names: list[x509.GeneralName] = [x509.DNSName(hostname)]
    alternative_names += [x509.IPAddress(ipaddress.ip_address(a)) for a in addresses]
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(alternative_names), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    certificate_pem = certificate.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return certificate_pem, key_pem
