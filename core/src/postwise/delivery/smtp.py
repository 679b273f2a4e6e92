"""The built-in SMTP provider: messages go to one relay over a pool of reused connections.

A new SMTP session costs a TCP handshake, a greeting, EHLO and possibly STARTTLS and AUTH; on a
local relay that cuts throughput to a third of a reused connection's, or less. So connections are
pooled per provider (one relay host), checked out by one sender at a time, health-checked with
RSET when they come back out of the pool, and replaced when they fail.

Reply classification (per message, one recipient each):

- 2xx to MAIL, RCPT and end of data: ACCEPTED.
- 4xx anywhere, a lost connection, a timeout, or a reply that makes no sense, before the end of
  the message was sent: TRANSIENT.
- 4xx that says the sender is being rate-limited (:func:`is_rate_limit_reply`: "rate limited",
  "throttling", "too many connections", Gmail's "receiving mail at a rate..."): DEFERRED. When it
  ends the session (421) or refuses MAIL FROM, it concerns the sender, so the rest of the batch
  is handed back DEFERRED without being attempted. Plain 4xx ("try again later") stays
  TRANSIENT: a deferral does not use up an attempt, so it is kept for what is clearly a
  throttle, never for a block that may last.
- A lost connection, a timeout or a reply that makes no sense *after* the whole message and its
  final "." were sent: UNKNOWN. The relay may have queued the message and lost the connection
  before its reply reached us (RFC 1047); sending it again could deliver it twice.
- 5xx to RCPT, DATA or end of data: PERMANENT.
- 5xx to MAIL FROM: TRANSIENT, except 552 (message too big). A rejected sender is a problem with
  the relay's configuration (unauthorised sender domain, authentication required), not with the
  recipient, so it must not be recorded as the recipient's bounce.
- A session that cannot be set up (connection refused, TLS failure, STARTTLS required but not
  offered, authentication failure): every message not yet attempted is TRANSIENT with the reason
  (DEFERRED when the relay's refusal is a rate limit), logged once rather than once per message.
"""

from __future__ import annotations

import functools
import logging
import re
import smtplib
import socket
import ssl
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parseaddr
from typing import Literal

from postwise.delivery.provider import (
    Outcome,
    OutgoingMessage,
    Provider,
    SendObserver,
    SendResult,
    not_handed_over,
    throttles_sender,
)
from postwise.errors import ConfigurationError

__all__ = ["SmtpProvider", "StartTls", "is_rate_limit_reply", "parse_enhanced_status"]

log = logging.getLogger(__name__)

StartTls = Literal["opportunistic", "required", "off"]
_STARTTLS_MODES: tuple[str, ...] = ("opportunistic", "required", "off")

#: After this many connections in a row are lost or closed by the relay within one batch, the
#: rest of the batch is handed back as TRANSIENT instead of hammering a failing relay.
MAX_CONSECUTIVE_CONNECTION_FAILURES = 3

#: A batch is spread over as many pooled connections as give each at least this many messages:
#: below that, opening a connection costs more than it saves.
MESSAGES_PER_CONNECTION = 20

_ENHANCED_STATUS = re.compile(r"([245])\.(\d{1,3})\.(\d{1,3})(?![\d.])")
_QUEUE_ID = re.compile(r"queued as\s+<?([^\s>]+)", re.IGNORECASE)
_LEADING_DOT = re.compile(rb"(?m)^\.")
_NEEDS_PARSING = re.compile(r"[<>\s\"(),;:\[\]\\]")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Wording that says the *rate* is the problem, as large receivers and relays phrase it: Gmail
# (421 4.7.28 "...has been temporarily rate limited", 450 4.2.1 "...receiving mail at a rate
# that prevents additional messages"), Microsoft ("4.7.650 ...temporarily rate limited", RP-001
# to RP-003 on Outlook.com), Amazon SES ("454 Throttling failure: Maximum sending rate
# exceeded"), Postfix ("421 4.7.0 Error: too many connections", "450 4.7.1 too much mail"),
# Exchange ("4.4.2 Message submission rate for this client has exceeded the configured limit").
# "Try again later" alone is not enough: Gmail and Yahoo say it for reputation blocks too.
_RATE_LIMITED = re.compile(
    r"rate[ -]?limit"
    r"|throttl"
    r"|too many (?:messages|mails?|e-?mails|connections|concurrent|sessions|deliveries)"
    r"|too much mail"
    r"|(?:sending|message|submission|connection) rate"
    r"|\bat a rate\b"
    r"|\bRP-00[123]\b",
    re.IGNORECASE,
)


def is_rate_limit_reply(code: int, text: str) -> bool:
    """Whether the reply ``code text`` defers mail because of the sending rate.

    Only 4xx replies qualify (a 5xx is permanent whatever it says), and only with wording that
    names the rate; see the module docs for the replies this recognises.
    """
    return 400 <= code < 500 and _RATE_LIMITED.search(text) is not None


def parse_enhanced_status(code: int, text: str) -> str | None:
    """Return the RFC 3463 enhanced status code at the start of an SMTP reply text.

    The class digit must agree with the reply code (``5.1.1`` only with a 5xx code), because a
    mismatch means the text is not an enhanced status at all.
    """
    match = _ENHANCED_STATUS.match(text)
    if match is None or str(code)[:1] != match.group(1):
        return None
    return match.group(0)


@functools.cache
def _default_local_hostname() -> str:
    # RFC 5321 wants the FQDN in EHLO, or an address literal when there is none. Looked up once
    # per process: getfqdn() can block on DNS, and smtplib would repeat it for every connection.
    fqdn = socket.getfqdn()
    if "." in fqdn:
        return fqdn
    try:
        return f"[{socket.gethostbyname(socket.gethostname())}]"
    except OSError:
        return "[127.0.0.1]"


def _envelope_address(address: str) -> str | None:
    """The bare address to put between angle brackets, or None when it cannot be used.

    A bare ``local@domain`` passes as is; ``Display Name <local@domain>`` gives its address.
    Anything else, above all a line break that would smuggle in another SMTP command, is refused.
    """
    if _CONTROL.search(address):
        return None
    if not _NEEDS_PARSING.search(address):
        return address
    bare = parseaddr(address)[1]
    if not bare or _NEEDS_PARSING.search(bare) or not address.rstrip().endswith(f"<{bare}>"):
        return None
    return bare


def _decode(text: bytes | str) -> str:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return text.replace("\n", " ")


class _SessionError(Exception):
    """A session could not be set up; every message not yet attempted gets this reason."""

    def __init__(
        self,
        reason: str,
        code: int | None = None,
        status: str | None = None,
        text: str = "",
        *,
        outcome: Outcome = Outcome.DEFERRED,
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.code = code
        self.status = status
        self.outcome = outcome
        #: The relay refused the session because of the sending rate: come back later.
        self.throttled = code is not None and is_rate_limit_reply(code, text)

    def result(self, message: OutgoingMessage) -> SendResult:
        # The message was never handed over (no session, or the relay throttles the sender):
        # it waits without using up an attempt, like an MTA's queue while its relay is away.
        return SendResult(
            message_id=message.message_id,
            outcome=self.outcome,
            code=self.code,
            status=self.status,
            reason=self.reason,
        )


class _Batch:
    """One send_batch call's messages, shared by the lanes sending them."""

    def __init__(
        self, messages: Sequence[OutgoingMessage], observer: SendObserver | None = None
    ) -> None:
        self.messages = messages
        self.observer = observer
        #: The observer said no: nothing more is sent.
        self.halted = False
        self.results: list[SendResult | None] = [None] * len(messages)
        self.gave_up: _SessionError | None = None
        #: The relay throttles the sender: what is not sent yet waits instead.
        self.throttled: _SessionError | None = None
        self._next = 0
        self._lock = threading.Lock()

    def take(self) -> int | None:
        """The index of the next message to send, or None when every one is taken."""
        with self._lock:
            if self._next == len(self.messages) or self.throttled is not None or self.halted:
                return None
            self._next += 1
            return self._next - 1

    def throttle(self, result: SendResult) -> None:
        """Stop the batch: the relay said it takes no more from this sender for now."""
        reason = f"not attempted: the relay is rate-limiting the sender ({result.code} "
        reason += f"{result.reason})"
        with self._lock:
            if self.throttled is None:
                self.throttled = _SessionError(reason, result.code, result.status, result.reason)

    def may_send(self, index: int) -> bool:
        """Ask the observer before message ``index`` leaves; a no halts the batch."""
        if self.observer is None or self.observer.handing_over([self.messages[index]]):
            return True
        with self._lock:
            self.halted = True
        return False

    def answer(self, index: int, result: SendResult) -> None:
        """Record message ``index``'s result and tell the observer."""
        self.results[index] = result
        if self.observer is not None:
            self.observer.answered(result)

    def outcomes(self) -> list[SendResult]:
        """Every result, with the reason the last lane gave up for messages no lane sent."""
        if self.halted:
            return [
                result if result is not None else not_handed_over(message)
                for message, result in zip(self.messages, self.results, strict=True)
            ]
        error = (
            self.throttled
            or self.gave_up
            or _SessionError("not attempted: no connection was available")
        )
        return [
            result if result is not None else error.result(message)
            for message, result in zip(self.messages, self.results, strict=True)
        ]


@dataclass(slots=True)
class _Connection:
    smtp: smtplib.SMTP
    generation: int
    size: bool
    eight_bit: bool
    utf8: bool


class SmtpProvider(Provider):
    """Deliver messages to one SMTP relay over pooled, reused connections.

    Thread-safe: a connection is used by one sender at a time, and at most ``pool_size`` are
    open. Each :meth:`send_batch` call sends over one pooled connection, waiting up to
    ``timeout`` seconds for a free one, and spreads a large batch over more connections when
    they are free.

    ``starttls`` applies to plain connections: ``"opportunistic"`` upgrades when the relay offers
    STARTTLS, ``"required"`` refuses to send otherwise, ``"off"`` never upgrades. With
    ``implicit_tls`` (port 465 style) the connection is TLS from the first byte and ``starttls``
    is not used. Certificates are verified with ``ssl_context``, by default the system's trust
    store. Credentials are only ever sent over TLS unless ``starttls="off"`` says the operator
    accepts a plain connection (a relay on loopback, say).
    """

    name = "smtp"

    def __init__(
        self,
        host: str,
        port: int = 25,
        *,
        username: str | None = None,
        password: str | None = None,
        starttls: StartTls = "opportunistic",
        implicit_tls: bool = False,
        pool_size: int = 4,
        timeout: float = 30.0,
        local_hostname: str | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if not host:
            raise ConfigurationError("smtp host is empty; set it to the relay's host name")
        if not 0 < port < 65536:
            raise ConfigurationError(f"smtp port {port} is out of range; use 1-65535 (often 25)")
        if starttls not in _STARTTLS_MODES:
            raise ConfigurationError(
                f"smtp starttls must be one of {', '.join(_STARTTLS_MODES)}, not {starttls!r}"
            )
        if pool_size < 1:
            raise ConfigurationError(f"smtp pool_size must be at least 1, not {pool_size}")
        if timeout <= 0:
            raise ConfigurationError(f"smtp timeout must be a positive number, not {timeout}")
        if (username is None) != (password is None):
            raise ConfigurationError("smtp username and password must be set together")
        self.host = host
        self.port = port
        self.username = username
        self._password = password
        self.starttls: StartTls = starttls
        self.implicit_tls = implicit_tls
        self.pool_size = pool_size
        self.timeout = timeout
        self.local_hostname = local_hostname
        self._ssl_context = ssl_context
        self._slots = threading.BoundedSemaphore(pool_size)
        self._lock = threading.Lock()
        self._idle: list[_Connection] = []
        self._generation = 0
        self._last_logged_failure: str | None = None

    def __repr__(self) -> str:
        return (
            f"SmtpProvider(host={self.host!r}, port={self.port}, starttls={self.starttls!r}, "
            f"implicit_tls={self.implicit_tls}, username={self.username!r}, "
            f"pool_size={self.pool_size})"
        )

    def __enter__(self) -> SmtpProvider:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def send_batch(self, messages: Sequence[OutgoingMessage]) -> list[SendResult]:
        """Send ``messages`` over pooled connections; one result per message, in order.

        See :meth:`send_observed`, which this is without an observer.
        """
        return self.send_observed(messages, None)

    def send_observed(
        self, messages: Sequence[OutgoingMessage], observer: SendObserver | None
    ) -> list[SendResult]:
        """Send ``messages`` over pooled connections; one result per message, in order.

        ``observer`` is asked before each message's transaction (its MAIL FROM), and told each
        answer as it comes; a no stops the batch there, and the messages not sent come back not
        attempted.

        A large batch is spread over up to ``pool_size`` connections at once (each gets at
        least :data:`MESSAGES_PER_CONNECTION` messages), using only connections that are free:
        the first one is waited for up to ``timeout`` seconds, the others are not. A connection
        lost mid-batch is replaced and sending goes on with the next message; the message in
        flight is TRANSIENT, or UNKNOWN when the connection was lost after its content was sent.
        A rate-limit reply about the sender hands the rest of the batch back DEFERRED. No message
        is sent twice within one call.
        """
        if not messages:
            return []
        if not self._slots.acquire(timeout=self.timeout):
            reason = (
                f"all {self.pool_size} connections to {self.host}:{self.port} stayed busy for "
                f"{self.timeout:g}s; raise pool_size or run fewer sending threads"
            )
            # Never handed over: they wait without using up an attempt.
            return [_result(m, Outcome.DEFERRED, reason) for m in messages]
        batch = _Batch(messages, observer)
        helpers: list[threading.Thread] = []
        try:
            wanted = min(self.pool_size, len(messages) // MESSAGES_PER_CONNECTION)
            while len(helpers) + 1 < wanted and self._slots.acquire(blocking=False):
                helper = threading.Thread(
                    target=self._helper_lane, args=(batch,), name="smtp-send", daemon=True
                )
                try:
                    helper.start()
                except RuntimeError:  # the process is out of threads: send with fewer lanes
                    self._slots.release()
                    break
                helpers.append(helper)
            self._lane(batch)
            for helper in helpers:
                helper.join()
        finally:
            self._slots.release()
        return batch.outcomes()

    def close(self) -> None:
        """Close idle connections; connections in use are closed when their batch ends.

        The provider stays usable: a later :meth:`send_batch` opens new connections.
        """
        with self._lock:
            idle, self._idle = self._idle, []
            self._generation += 1
        for connection in idle:
            _quit(connection.smtp)

    def _helper_lane(self, batch: _Batch) -> None:
        try:
            self._lane(batch)
        finally:
            self._slots.release()

    def _lane(self, batch: _Batch) -> None:
        """Send the batch's next messages over one connection until none are left.

        A lane that cannot get a working connection stops and leaves the rest to the other
        lanes; whatever no lane sent is DEFERRED with the reason the last lane gave up.
        """
        connection = self._checkout_idle()
        failures = 0
        last_failure = ""
        try:
            while True:
                if connection is None:
                    if failures >= MAX_CONSECUTIVE_CONNECTION_FAILURES:
                        reason = (
                            f"not attempted: {failures} connections to {self.host}:{self.port} "
                            f"failed in a row (last: {last_failure})"
                        )
                        self._give_up(batch, _SessionError(reason))
                        return
                    try:
                        connection = self._connect()
                    except _SessionError as error:
                        self._give_up(batch, error)
                        return
                index = batch.take()
                if index is None or not batch.may_send(index):
                    return
                result, usable = self._transact(connection, batch.messages[index])
                batch.answer(index, result)
                if throttles_sender(result):
                    batch.throttle(result)
                if usable:
                    failures = 0
                else:
                    connection.smtp.close()
                    connection = None
                    failures += 1
                    last_failure = result.reason
        except Exception as error:
            # A bug, not a delivery failure: the batch must still get a result per message.
            log.exception("SMTP sending via %s:%s failed unexpectedly", self.host, self.port)
            reason = f"internal error in the SMTP provider: {_describe(error)}"
            # TRANSIENT, so max_attempts ends a bug that strikes every time instead of the
            # messages waiting out delivery_max_defer_hours.
            self._give_up(batch, _SessionError(reason, outcome=Outcome.TRANSIENT))
            if connection is not None:
                connection.smtp.close()
                connection = None
        finally:
            if connection is not None:
                self._checkin(connection)

    def _give_up(self, batch: _Batch, error: _SessionError) -> None:
        batch.gave_up = error
        self._log_failure(error.reason)

    def _checkout_idle(self) -> _Connection | None:
        """Take an idle connection that still answers RSET, or None to open a new one."""
        while True:
            with self._lock:
                if not self._idle:
                    return None
                connection = self._idle.pop()
            try:
                code, _ = connection.smtp.rset()
            except (OSError, smtplib.SMTPException):
                code = -1
            if code == 250:
                return connection
            connection.smtp.close()

    def _checkin(self, connection: _Connection) -> None:
        with self._lock:
            if connection.generation == self._generation:
                self._idle.append(connection)
                return
        _quit(connection.smtp)

    def _connect(self) -> _Connection:
        with self._lock:
            generation = self._generation
        where = f"{self.host}:{self.port}"
        hostname = self.local_hostname or _default_local_hostname()
        try:
            if self.implicit_tls:
                smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                    self.host,
                    self.port,
                    local_hostname=hostname,
                    timeout=self.timeout,
                    context=self._tls_context(),
                )
            else:
                smtp = smtplib.SMTP(
                    self.host, self.port, local_hostname=hostname, timeout=self.timeout
                )
        except smtplib.SMTPConnectError as error:
            text = _decode(error.smtp_error)
            raise _SessionError(
                f"{where} refused the session: {error.smtp_code} {text}",
                error.smtp_code,
                parse_enhanced_status(error.smtp_code, text),
                text,
            ) from None
        except ssl.SSLError as error:
            raise _SessionError(f"TLS handshake with {where} failed: {error}") from None
        except (OSError, smtplib.SMTPException) as error:
            raise _SessionError(f"could not connect to {where}: {_describe(error)}") from None
        try:
            self._greet(smtp)
            encrypted = self.implicit_tls or self._upgrade(smtp)
            if self._password is not None:
                self._authenticate(smtp, encrypted)
        except _SessionError:
            smtp.close()
            raise
        except ssl.SSLError as error:
            smtp.close()
            raise _SessionError(f"TLS handshake with {where} failed: {error}") from None
        except (OSError, smtplib.SMTPException) as error:
            smtp.close()
            raise _SessionError(
                f"connection to {where} failed during setup: {_describe(error)}"
            ) from None
        with self._lock:
            self._last_logged_failure = None
        return _Connection(
            smtp=smtp,
            generation=generation,
            size=smtp.has_extn("size"),
            eight_bit=smtp.has_extn("8bitmime"),
            utf8=smtp.has_extn("smtputf8"),
        )

    def _greet(self, smtp: smtplib.SMTP) -> None:
        code, text = smtp.ehlo()
        if code == 250:
            return
        code, text = smtp.helo()
        if code != 250:
            reply = _decode(text)
            raise _SessionError(
                f"{self.host}:{self.port} rejected EHLO and HELO: {code} {reply}",
                code,
                parse_enhanced_status(code, reply),
                reply,
            )

    def _upgrade(self, smtp: smtplib.SMTP) -> bool:
        """Run STARTTLS as configured; True when the session is now encrypted."""
        if self.starttls == "off":
            return False
        if not smtp.has_extn("starttls"):
            if self.starttls == "required":
                raise _SessionError(
                    f"{self.host}:{self.port} does not offer STARTTLS and starttls is "
                    f"'required'; enable TLS on the relay or set starttls to 'opportunistic'"
                )
            return False
        try:
            smtp.starttls(context=self._tls_context())
        except smtplib.SMTPResponseException as error:
            text = _decode(error.smtp_error)
            raise _SessionError(
                f"{self.host}:{self.port} refused STARTTLS: {error.smtp_code} {text}",
                error.smtp_code,
                parse_enhanced_status(error.smtp_code, text),
            ) from None
        self._greet(smtp)
        return True

    def _authenticate(self, smtp: smtplib.SMTP, encrypted: bool) -> None:
        assert self.username is not None
        assert self._password is not None
        if not encrypted and self.starttls != "off":
            raise _SessionError(
                f"refusing to send credentials to {self.host}:{self.port} over an unencrypted "
                f"connection: the relay did not offer STARTTLS; enable TLS on the relay, or set "
                f"starttls to 'off' if a plain connection is acceptable"
            )
        try:
            smtp.login(self.username, self._password)
        except smtplib.SMTPAuthenticationError as error:
            text = _decode(error.smtp_error)
            raise _SessionError(
                f"authentication failed for user {self.username!r} at {self.host}:{self.port}: "
                f"{error.smtp_code} {text}",
                error.smtp_code,
                parse_enhanced_status(error.smtp_code, text),
            ) from None
        except smtplib.SMTPNotSupportedError:
            raise _SessionError(
                f"authentication failed: {self.host}:{self.port} does not offer AUTH on this "
                f"connection; remove the credentials or check the relay's TLS settings"
            ) from None
        except smtplib.SMTPException as error:
            raise _SessionError(f"authentication failed: {error}") from None

    def _tls_context(self) -> ssl.SSLContext:
        if self._ssl_context is None:
            # smtplib's own default verifies nothing; never fall back to it.
            self._ssl_context = ssl.create_default_context()
        return self._ssl_context

    def _transact(
        self, connection: _Connection, message: OutgoingMessage
    ) -> tuple[SendResult, bool]:
        """One MAIL/RCPT/DATA transaction; the result and whether the connection is reusable."""
        sender = _envelope_address(message.sender)
        recipient = _envelope_address(message.recipient)
        if sender is None:
            return _transient(message, f"invalid sender address {message.sender!r}"), True
        if recipient is None:
            reason = f"invalid recipient address {message.recipient!r}"
            return _result(message, Outcome.PERMANENT, reason), True
        raw = message.raw
        options = []
        if connection.size:
            options.append(f"SIZE={len(raw)}")
        if connection.eight_bit and not raw.isascii():
            options.append("BODY=8BITMIME")
        if not (sender.isascii() and recipient.isascii()):
            if not connection.utf8:
                reason = f"{self.host}:{self.port} does not support SMTPUTF8, which the address "
                if not sender.isascii():
                    return _transient(message, f"{reason}{sender!r} needs"), True
                return _result(message, Outcome.PERMANENT, f"{reason}{recipient!r} needs"), True
            options.append("SMTPUTF8")
            connection.smtp.command_encoding = "utf-8"
        smtp = connection.smtp
        stage = "MAIL FROM"
        try:
            smtp.putcmd("mail", f"FROM:<{sender}>{' ' if options else ''}{' '.join(options)}")
            code, text = smtp.getreply()
            if code != 250:
                return self._rejected(connection, message, stage, code, text)
            stage = "RCPT TO"
            smtp.putcmd("rcpt", f"TO:<{recipient}>")
            code, text = smtp.getreply()
            if not 200 <= code < 300:
                return self._rejected(connection, message, stage, code, text)
            stage = "DATA"
            smtp.putcmd("data")
            code, text = smtp.getreply()
            if code != 354:
                return self._rejected(connection, message, stage, code, text)
            stage = "message content"
            payload = _LEADING_DOT.sub(b"..", raw)
            smtp.send(payload + (b".\r\n" if payload.endswith(b"\r\n") else b"\r\n.\r\n"))
            # From here on a failure is ambiguous: the relay may have queued the message and
            # then lost the connection before its reply reached us.
            stage = "end of data"
            code, text = smtp.getreply()
        except (OSError, smtplib.SMTPException) as error:
            return self._lost(message, stage, error), False
        if not 200 <= code < 600:
            reply = _decode(text)
            reason = (
                f"unexpected reply to the end of data: {code} {reply}; the relay may have "
                "accepted the message"
            )
            return _result(message, Outcome.UNKNOWN, reason), False
        if not 200 <= code < 300:
            return self._rejected(connection, message, stage, code, text)
        reply = _decode(text)
        queue_id = _QUEUE_ID.search(reply)
        return SendResult(
            message_id=message.message_id,
            outcome=Outcome.ACCEPTED,
            accepted_at=datetime.now(UTC),
            code=code,
            status=parse_enhanced_status(code, reply),
            reason=reply,
            provider_message_id=queue_id.group(1) if queue_id else None,
        ), True

    def _rejected(
        self, connection: _Connection, message: OutgoingMessage, stage: str, code: int, text: bytes
    ) -> tuple[SendResult, bool]:
        reply = _decode(text)
        status = parse_enhanced_status(code, reply)
        if is_rate_limit_reply(code, reply):
            outcome, reason = Outcome.DEFERRED, reply
        elif 400 <= code < 500:
            outcome, reason = Outcome.TRANSIENT, reply
        elif 500 <= code < 600 and stage == "MAIL FROM" and code != 552:
            outcome = Outcome.TRANSIENT
            reason = (
                f"sender {message.sender!r} rejected by the relay (check its sender and "
                f"authentication settings): {code} {reply}"
            )
        elif 500 <= code < 600:
            outcome, reason = Outcome.PERMANENT, reply
        else:
            result = SendResult(
                message_id=message.message_id,
                outcome=Outcome.TRANSIENT,
                code=code if code > 0 else None,
                reason=f"unexpected reply to {stage}: {code} {reply}",
            )
            return result, False
        result = SendResult(
            message_id=message.message_id, outcome=outcome, code=code, status=status, reason=reason
        )
        # 421 means the relay is closing the session; anything else leaves it usable once the
        # half-open transaction is reset (after end of data there is nothing to reset).
        if code == 421:
            return result, False
        if stage == "end of data":
            return result, True
        try:
            reset, _ = connection.smtp.rset()
        except (OSError, smtplib.SMTPException):
            return result, False
        return result, reset == 250

    def _lost(self, message: OutgoingMessage, stage: str, error: Exception) -> SendResult:
        # smtplib wraps socket errors, timeouts included, in SMTPServerDisconnected.
        if isinstance(error, TimeoutError) or isinstance(error.__context__, TimeoutError):
            what = f"timed out after {self.timeout:g}s waiting for the reply to {stage}"
            if stage == "message content":
                what = f"timed out after {self.timeout:g}s sending the message content"
        else:
            what = f"connection to {self.host}:{self.port} lost at {stage}: {_describe(error)}"
        if stage == "end of data":
            consequence = "the relay may have accepted the message before the connection failed"
            return _result(message, Outcome.UNKNOWN, f"{what}; {consequence}")
        return _transient(message, f"{what}; the message was not transferred")

    def _log_failure(self, reason: str) -> None:
        # A relay that is down fails every batch the same way: say so once, not per batch.
        with self._lock:
            if reason == self._last_logged_failure:
                return
            self._last_logged_failure = reason
        log.error("SMTP delivery via %s:%s failed: %s", self.host, self.port, reason)


def _result(message: OutgoingMessage, outcome: Outcome, reason: str) -> SendResult:
    return SendResult(message_id=message.message_id, outcome=outcome, reason=reason)


def _transient(
    message: OutgoingMessage, reason: str, code: int | None = None, status: str | None = None
) -> SendResult:
    return SendResult(
        message_id=message.message_id,
        outcome=Outcome.TRANSIENT,
        code=code,
        status=status,
        reason=reason,
    )


def _describe(error: BaseException) -> str:
    text = str(error)
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _quit(smtp: smtplib.SMTP) -> None:
    try:
        smtp.quit()
    except (OSError, smtplib.SMTPException):
        smtp.close()
