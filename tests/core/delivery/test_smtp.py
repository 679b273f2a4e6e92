"""The SMTP provider against real aiosmtpd servers, healthy and misbehaving."""

from __future__ import annotations

import logging
import socket
import ssl
import threading
import time
from collections.abc import Iterator

import pytest

from postwise.delivery.provider import Outcome, OutgoingMessage, SendResult
from postwise.delivery.smtp import (
    MAX_CONSECUTIVE_CONNECTION_FAILURES,
    SmtpProvider,
    parse_enhanced_status,
)
from postwise.errors import ConfigurationError
from postwise.testing.contracts import ProviderContract
from postwise.testing.smtp import DropStage, FaultySmtpServer, self_signed_tls_contexts

PASSWORD = "correct horse battery staple"


def make_message(index: int, recipient: str | None = None) -> OutgoingMessage:
    recipient = recipient or f"rcpt{index}@example.com"
    raw = (
        f"From: News <news@example.com>\r\nTo: {recipient}\r\nSubject: Issue {index}\r\n"
        f"Message-ID: <m{index}@postwise.test>\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
        f"Hello {index}.\r\n.a line that starts with a dot\r\n..and one with two\r\nBye\r\n"
    ).encode()
    return OutgoingMessage(f"m{index}", "news@example.com", recipient, raw)


def make_messages(count: int) -> list[OutgoingMessage]:
    return [make_message(index) for index in range(count)]


def outcomes(results: list[SendResult]) -> list[Outcome]:
    return [result.outcome for result in results]


def accepted_ids(results: list[SendResult]) -> list[str]:
    return [f"{r.message_id}@postwise.test" for r in results if r.outcome is Outcome.ACCEPTED]


def assert_exactly_once(server: FaultySmtpServer, results: list[SendResult]) -> None:
    """What the provider reports as accepted is what the server accepted, each once."""
    assert server.duplicates() == {}
    assert server.accepted_ids() == accepted_ids(results)


@pytest.fixture
def server() -> Iterator[FaultySmtpServer]:
    with FaultySmtpServer() as running:
        yield running


@pytest.fixture(scope="module")
def tls() -> tuple[ssl.SSLContext, ssl.SSLContext]:
    return self_signed_tls_contexts()


@pytest.fixture
def provider(server: FaultySmtpServer) -> Iterator[SmtpProvider]:
    with SmtpProvider("127.0.0.1", server.port, timeout=5.0) as smtp:
        yield smtp


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class TestSmtpProviderContract(ProviderContract):
    @pytest.fixture(autouse=True)
    def _server(self, server: FaultySmtpServer) -> None:
        self.server = server

    def make_provider(self) -> SmtpProvider:
        return SmtpProvider("127.0.0.1", self.server.port, timeout=5.0)

    def throttle_next(self, retry_after: int) -> None:
        self.server.fail_transactions(
            1, code=421, text="4.7.28 Our system has detected an unusual rate; rate limited"
        )

    def reject_recipient(self, address: str) -> None:
        self.server.reject_recipients(address)

    def refuse_next_request(self) -> None:
        self.server.fail_transactions(1, code=553, text="5.7.1 Sender address not allowed")

    def lose_next_answer(self) -> None:
        self.server.drop_connections(1, stage="after_accept")


# -- healthy relay ---------------------------------------------------------------------------


def test_accepted_messages_arrive_byte_for_byte_with_their_envelope(
    server: FaultySmtpServer, provider: SmtpProvider
) -> None:
    messages = make_messages(3)
    results = provider.send_batch(messages)
    assert outcomes(results) == [Outcome.ACCEPTED] * 3
    assert [r.message_id for r in results] == ["m0", "m1", "m2"]
    assert results[0].code == 250
    assert results[0].status == "2.0.0"
    assert results[0].provider_message_id == "c1t1"
    received = server.accepted
    assert [m.content for m in received] == [m.raw for m in messages]
    assert received[1].mail_from == "news@example.com"
    assert received[1].rcpt_tos == ("rcpt1@example.com",)
    assert f"SIZE={len(messages[1].raw)}" in received[1].mail_options


def test_one_connection_carries_every_message_of_consecutive_batches(
    server: FaultySmtpServer, provider: SmtpProvider
) -> None:
    provider.send_batch(make_messages(5))
    provider.send_batch([make_message(index) for index in range(5, 10)])
    assert len(server.accepted) == 10
    assert server.connections == 1


def test_close_releases_the_pool_and_the_next_batch_opens_a_new_connection(
    server: FaultySmtpServer, provider: SmtpProvider
) -> None:
    provider.send_batch(make_messages(2))
    provider.close()
    results = provider.send_batch([make_message(2)])
    assert outcomes(results) == [Outcome.ACCEPTED]
    assert server.connections == 2


def test_a_stale_pooled_connection_is_replaced_without_losing_a_message(
    server: FaultySmtpServer,
) -> None:
    port = server.port
    with SmtpProvider("127.0.0.1", port, timeout=5.0) as provider:
        provider.send_batch(make_messages(1))
        server.stop()  # the pooled connection is now dead
        with FaultySmtpServer(port=port) as restarted:
            results = provider.send_batch([make_message(1), make_message(2)])
            assert outcomes(results) == [Outcome.ACCEPTED, Outcome.ACCEPTED]
            assert restarted.accepted_ids() == ["m1@postwise.test", "m2@postwise.test"]


def test_an_eight_bit_body_is_declared_and_sent_unchanged(
    server: FaultySmtpServer, provider: SmtpProvider
) -> None:
    raw = "Subject: Grüße\r\nMessage-ID: <u@postwise.test>\r\n\r\nGrüße aus Köln\r\n".encode()
    results = provider.send_batch([OutgoingMessage("u", "a@example.com", "b@example.com", raw)])
    assert outcomes(results) == [Outcome.ACCEPTED]
    assert server.accepted[0].content == raw
    assert "BODY=8BITMIME" in server.accepted[0].mail_options


def test_a_non_ascii_address_is_sent_with_smtputf8(
    server: FaultySmtpServer, provider: SmtpProvider
) -> None:
    message = make_message(0, recipient="jürgen@exämple.de")
    results = provider.send_batch([message])
    assert outcomes(results) == [Outcome.ACCEPTED]
    assert server.accepted[0].rcpt_tos == ("jürgen@exämple.de",)
    assert "SMTPUTF8" in server.accepted[0].mail_options


def test_an_address_with_a_line_break_is_permanent_and_never_reaches_the_wire(
    server: FaultySmtpServer, provider: SmtpProvider
) -> None:
    evil = make_message(0, recipient="victim@example.com>\r\nRCPT TO:<other@example.com")
    results = provider.send_batch([evil, make_message(1)])
    assert outcomes(results) == [Outcome.PERMANENT, Outcome.ACCEPTED]
    assert "invalid recipient address" in results[0].reason
    assert server.transactions == 1
    assert server.accepted[0].rcpt_tos == ("rcpt1@example.com",)


def test_concurrent_senders_share_at_most_pool_size_connections(server: FaultySmtpServer) -> None:
    results: dict[int, list[SendResult]] = {}

    shared = SmtpProvider("127.0.0.1", server.port, pool_size=2, timeout=10.0)

    def send(worker: int) -> None:
        batch = [make_message(worker * 100 + index) for index in range(25)]
        results[worker] = shared.send_batch(batch)

    with shared:
        threads = [threading.Thread(target=send, args=(worker,)) for worker in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert all(outcomes(batch) == [Outcome.ACCEPTED] * 25 for batch in results.values())
    assert len(server.accepted) == 150
    assert server.duplicates() == {}
    assert server.connections <= 2


def test_a_sender_waits_for_a_busy_connection_instead_of_opening_another(
    server: FaultySmtpServer,
) -> None:
    server.slow_replies(0.5, count=1, command="DATA")
    with SmtpProvider("127.0.0.1", server.port, pool_size=1, timeout=5.0) as provider:
        first = threading.Thread(target=provider.send_batch, args=([make_message(0)],))
        first.start()
        while server.transactions == 0:
            time.sleep(0.01)
        results = provider.send_batch([make_message(1)])
        first.join()
    assert outcomes(results) == [Outcome.ACCEPTED]
    assert set(server.accepted_ids()) == {"m0@postwise.test", "m1@postwise.test"}
    assert server.connections == 1


def test_a_large_batch_is_spread_over_the_pool_and_each_message_is_sent_once(
    server: FaultySmtpServer,
) -> None:
    messages = make_messages(200)
    with SmtpProvider("127.0.0.1", server.port, pool_size=4, timeout=10.0) as provider:
        results = provider.send_batch(messages)
    assert [r.message_id for r in results] == [m.message_id for m in messages]
    assert outcomes(results) == [Outcome.ACCEPTED] * 200
    assert server.connections == 4
    assert server.duplicates() == {}
    assert sorted(server.accepted_ids(), key=str) == sorted(accepted_ids(results))


def test_connections_the_relay_refuses_leave_their_share_to_the_others(
    server: FaultySmtpServer, caplog: pytest.LogCaptureFixture
) -> None:
    server.fail_connections(3, code=421, text="4.7.0 Too many connections")
    with (
        SmtpProvider("127.0.0.1", server.port, pool_size=4, timeout=10.0) as provider,
        caplog.at_level(logging.ERROR, logger="postwise.delivery.smtp"),
    ):
        results = provider.send_batch(make_messages(100))
    assert outcomes(results) == [Outcome.ACCEPTED] * 100
    assert server.connections == 4
    assert "4.7.0 Too many connections" in caplog.text
    # Logged once, not once per refused connection (aiosmtpd's own records are not ours).
    ours = [r for r in caplog.records if r.name == "postwise.delivery.smtp"]
    assert len(ours) == 1


def test_faults_spread_over_several_connections_still_give_one_outcome_each(
    server: FaultySmtpServer,
) -> None:
    server.drop_connections(2, stage="rcpt")
    server.reject_recipients("rcpt1?@example.com")
    with SmtpProvider("127.0.0.1", server.port, pool_size=3, timeout=10.0) as provider:
        results = provider.send_batch(make_messages(90))
    assert outcomes(results).count(Outcome.TRANSIENT) == 2
    assert outcomes(results).count(Outcome.PERMANENT) == 10
    assert outcomes(results).count(Outcome.ACCEPTED) == 78
    assert server.duplicates() == {}
    assert sorted(server.accepted_ids(), key=str) == sorted(accepted_ids(results))


# -- replies and faults ----------------------------------------------------------------------


def test_rejected_recipients_are_permanent_with_code_and_enhanced_status(
    server: FaultySmtpServer, provider: SmtpProvider
) -> None:
    server.reject_recipients("rcpt1@example.com", "rcpt3@*")
    results = provider.send_batch(make_messages(5))
    assert outcomes(results) == [
        Outcome.ACCEPTED,
        Outcome.PERMANENT,
        Outcome.ACCEPTED,
        Outcome.PERMANENT,
        Outcome.ACCEPTED,
    ]
    assert (results[1].code, results[1].status) == (550, "5.1.1")
    assert results[1].reason == "5.1.1 User unknown"
    assert server.connections == 1
    assert_exactly_once(server, results)


def test_deferred_recipients_are_transient_until_the_deferral_ends(
    server: FaultySmtpServer, provider: SmtpProvider
) -> None:
    server.defer_recipients("*@busy.example", seconds=0.5)
    busy = make_message(0, recipient="a@busy.example")
    first = provider.send_batch([busy, make_message(1)])
    assert outcomes(first) == [Outcome.TRANSIENT, Outcome.ACCEPTED]
    assert (first[0].code, first[0].status) == (451, "4.7.1")
    time.sleep(0.6)
    assert outcomes(provider.send_batch([busy])) == [Outcome.ACCEPTED]
    assert server.accepted_ids() == ["m1@postwise.test", "m0@postwise.test"]


def test_421_ends_the_session_and_the_batch_continues_on_a_new_connection(
    server: FaultySmtpServer, provider: SmtpProvider
) -> None:
    server.fail_transactions(2, code=421)
    results = provider.send_batch(make_messages(5))
    assert outcomes(results) == [Outcome.TRANSIENT] * 2 + [Outcome.ACCEPTED] * 3
    assert (results[0].code, results[0].status) == (421, "4.3.2")
    assert server.connections == 3
    assert_exactly_once(server, results)


def test_451_at_mail_from_is_transient_and_keeps_the_connection(
    server: FaultySmtpServer, provider: SmtpProvider
) -> None:
    server.fail_transactions(1, code=451, text="4.3.0 Queue full")
    results = provider.send_batch(make_messages(3))
    assert outcomes(results) == [Outcome.TRANSIENT, Outcome.ACCEPTED, Outcome.ACCEPTED]
    assert results[0].status == "4.3.0"
    assert server.connections == 1


def test_a_rejected_sender_is_transient_because_it_is_not_the_recipients_bounce(
    server: FaultySmtpServer, provider: SmtpProvider
) -> None:
    server.fail_transactions(1, code=553, text="5.7.1 Sender address not allowed")
    results = provider.send_batch(make_messages(2))
    assert outcomes(results) == [Outcome.TRANSIENT, Outcome.ACCEPTED]
    assert (results[0].code, results[0].status) == (553, "5.7.1")
    assert "sender 'news@example.com' rejected" in results[0].reason


def test_a_message_too_big_for_the_relay_is_permanent(
    server: FaultySmtpServer, provider: SmtpProvider
) -> None:
    server.fail_transactions(1, code=552, text="5.3.4 Message size exceeds fixed limit")
    results = provider.send_batch(make_messages(1))
    assert outcomes(results) == [Outcome.PERMANENT]
    assert results[0].status == "5.3.4"


@pytest.mark.parametrize(
    ("stage", "outcome", "consequence"),
    [
        ("mail", Outcome.TRANSIENT, "the message was not transferred"),
        ("rcpt", Outcome.TRANSIENT, "the message was not transferred"),
        # Dropped right after the 354: the content fits in the socket buffer, so the provider
        # has sent all of it before it sees the connection go, and cannot rule out delivery.
        ("data", Outcome.UNKNOWN, "may have accepted"),
        ("end_of_data", Outcome.UNKNOWN, "may have accepted"),
    ],
)
def test_a_connection_dropped_before_acceptance_fails_only_the_message_in_flight(
    server: FaultySmtpServer,
    provider: SmtpProvider,
    stage: DropStage,
    outcome: Outcome,
    consequence: str,
) -> None:
    server.drop_connections(1, stage=stage)
    results = provider.send_batch(make_messages(4))
    assert outcomes(results) == [outcome] + [Outcome.ACCEPTED] * 3
    assert results[0].code is None
    assert "lost" in results[0].reason
    assert consequence in results[0].reason
    assert server.transactions == 4
    assert server.connections == 2
    assert_exactly_once(server, results)


def test_a_drop_after_the_relay_accepted_is_unknown_and_says_it_may_be_delivered(
    server: FaultySmtpServer, provider: SmtpProvider
) -> None:
    server.drop_connections(1, stage="after_accept")
    results = provider.send_batch(make_messages(3))
    assert outcomes(results) == [Outcome.UNKNOWN, Outcome.ACCEPTED, Outcome.ACCEPTED]
    assert "may have accepted" in results[0].reason
    # The relay has it once; the provider never sent it a second time within the batch.
    assert server.accepted_ids() == ["m0@postwise.test", "m1@postwise.test", "m2@postwise.test"]
    assert server.duplicates() == {}


def test_a_reply_slower_than_the_timeout_is_transient_and_the_batch_continues(
    server: FaultySmtpServer,
) -> None:
    server.slow_replies(1.5, count=1, command="RCPT")
    with SmtpProvider("127.0.0.1", server.port, timeout=0.4) as provider:
        results = provider.send_batch(make_messages(3))
    assert outcomes(results) == [Outcome.TRANSIENT, Outcome.ACCEPTED, Outcome.ACCEPTED]
    assert "timed out after 0.4s waiting for the reply to RCPT TO" in results[0].reason
    assert "not transferred" in results[0].reason
    assert_exactly_once(server, results)


def test_a_slow_final_reply_is_unknown_because_the_relay_may_have_kept_the_message(
    server: FaultySmtpServer,
) -> None:
    server.slow_replies(1.5, count=1, command="DATA")
    with SmtpProvider("127.0.0.1", server.port, timeout=0.4) as provider:
        results = provider.send_batch(make_messages(3))
    assert outcomes(results) == [Outcome.UNKNOWN, Outcome.ACCEPTED, Outcome.ACCEPTED]
    assert "may have accepted" in results[0].reason
    assert server.accepted_ids() == ["m0@postwise.test", "m1@postwise.test", "m2@postwise.test"]


def test_a_relay_that_keeps_dropping_connections_gets_the_rest_back_unattempted(
    server: FaultySmtpServer, provider: SmtpProvider
) -> None:
    server.drop_connections(100, stage="mail")
    results = provider.send_batch(make_messages(6))
    tries = MAX_CONSECUTIVE_CONNECTION_FAILURES
    # The ones tried used up an attempt; the rest were never handed over and wait without one.
    assert outcomes(results) == [Outcome.TRANSIENT] * tries + [Outcome.DEFERRED] * (6 - tries)
    assert server.transactions == tries
    assert all(r.reason.startswith("not attempted") for r in results[tries:])
    assert server.accepted == []


def test_every_message_gets_one_correct_outcome_under_mixed_faults(
    server: FaultySmtpServer, provider: SmtpProvider
) -> None:
    server.fail_transactions(1, code=421)  # m0, on the first MAIL FROM
    server.reject_recipients("rcpt1@example.com", "rcpt7@example.com")
    server.drop_connections(1, stage="data")  # m2, the first message to reach DATA
    server.drop_connections(1, stage="after_accept")  # m3, the next one
    server.defer_recipients("rcpt9@example.com", seconds=30)
    messages = make_messages(12)
    results = provider.send_batch(messages)
    assert [r.message_id for r in results] == [m.message_id for m in messages]
    assert [(r.outcome, r.code) for r in results[:4]] == [
        (Outcome.TRANSIENT, 421),
        (Outcome.PERMANENT, 550),
        (Outcome.UNKNOWN, None),
        (Outcome.UNKNOWN, None),
    ]
    assert "lost at end of data" in results[2].reason
    assert "may have accepted" in results[3].reason
    assert (results[7].outcome, results[9].outcome) == (Outcome.PERMANENT, Outcome.TRANSIENT)
    assert accepted_ids(results) == [f"m{i}@postwise.test" for i in (4, 5, 6, 8, 10, 11)]
    assert server.accepted_ids() == ["m3@postwise.test", *accepted_ids(results)]
    assert server.duplicates() == {}
    assert server.connections == 4


# -- sessions that cannot be set up ----------------------------------------------------------


def test_an_unreachable_relay_defers_the_batch_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with (
        SmtpProvider("127.0.0.1", free_port(), timeout=2.0) as provider,
        caplog.at_level(logging.ERROR, logger="postwise.delivery.smtp"),
    ):
        first = provider.send_batch(make_messages(3))
        second = provider.send_batch(make_messages(2))
    # Nothing was handed over: deferred, no attempt used (an MTA keeps mail queued while its
    # relay is away, within delivery_max_defer_hours).
    assert outcomes(first + second) == [Outcome.DEFERRED] * 5
    assert "could not connect to 127.0.0.1" in first[0].reason
    assert len(caplog.records) == 1


def test_a_relay_that_refuses_the_greeting_fails_the_batch_with_its_code(
    server: FaultySmtpServer, provider: SmtpProvider
) -> None:
    server.fail_connections(1, code=554, text="5.7.1 No service for you")
    results = provider.send_batch(make_messages(2))
    assert outcomes(results) == [Outcome.DEFERRED, Outcome.DEFERRED]
    assert (results[0].code, results[0].status) == (554, "5.7.1")
    assert outcomes(provider.send_batch(make_messages(1))) == [Outcome.ACCEPTED]


def test_starttls_upgrades_when_required_and_offered(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_context, client_context = tls
    with (
        FaultySmtpServer(tls_context=server_context, require_starttls=True) as server,
        SmtpProvider(
            "127.0.0.1", server.port, starttls="required", ssl_context=client_context
        ) as provider,
    ):
        results = provider.send_batch(make_messages(2))
    assert outcomes(results) == [Outcome.ACCEPTED, Outcome.ACCEPTED]
    assert all(message.tls for message in server.accepted)


def test_opportunistic_starttls_upgrades_when_offered(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_context, client_context = tls
    with (
        FaultySmtpServer(tls_context=server_context) as server,
        SmtpProvider("127.0.0.1", server.port, ssl_context=client_context) as provider,
    ):
        assert outcomes(provider.send_batch(make_messages(1))) == [Outcome.ACCEPTED]
    assert server.accepted[0].tls


def test_opportunistic_starttls_sends_in_the_clear_when_not_offered(
    server: FaultySmtpServer, provider: SmtpProvider
) -> None:
    assert outcomes(provider.send_batch(make_messages(1))) == [Outcome.ACCEPTED]
    assert not server.accepted[0].tls


def test_required_starttls_that_is_not_offered_defers_the_batch(
    server: FaultySmtpServer,
) -> None:
    with SmtpProvider("127.0.0.1", server.port, starttls="required") as provider:
        results = provider.send_batch(make_messages(2))
    assert outcomes(results) == [Outcome.DEFERRED, Outcome.DEFERRED]
    assert "does not offer STARTTLS" in results[0].reason
    assert server.transactions == 0


def test_a_certificate_the_provider_does_not_trust_defers_the_batch(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_context, _ = tls
    with (
        FaultySmtpServer(tls_context=server_context) as server,
        SmtpProvider("127.0.0.1", server.port) as provider,
    ):
        results = provider.send_batch(make_messages(1))
    assert outcomes(results) == [Outcome.DEFERRED]
    assert "certificate verify failed" in results[0].reason
    assert server.transactions == 0


def test_implicit_tls_is_encrypted_from_the_first_byte(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_context, client_context = tls
    with (
        FaultySmtpServer(implicit_tls_context=server_context) as server,
        SmtpProvider(
            "127.0.0.1", server.port, implicit_tls=True, ssl_context=client_context
        ) as provider,
    ):
        assert outcomes(provider.send_batch(make_messages(2))) == [Outcome.ACCEPTED] * 2
    assert all(message.tls for message in server.accepted)


def test_credentials_authenticate_over_starttls(
    tls: tuple[ssl.SSLContext, ssl.SSLContext],
) -> None:
    server_context, client_context = tls
    with (
        FaultySmtpServer(tls_context=server_context, credentials={"postwise": PASSWORD}) as server,
        SmtpProvider(
            "127.0.0.1",
            server.port,
            username="postwise",
            password=PASSWORD,
            ssl_context=client_context,
        ) as provider,
    ):
        assert outcomes(provider.send_batch(make_messages(2))) == [Outcome.ACCEPTED] * 2
    assert [m.authenticated_as for m in server.accepted] == ["postwise", "postwise"]


def test_a_wrong_password_defers_every_message_and_is_logged_once(
    tls: tuple[ssl.SSLContext, ssl.SSLContext], caplog: pytest.LogCaptureFixture
) -> None:
    server_context, client_context = tls
    wrong = "not-the-password"
    with (
        FaultySmtpServer(tls_context=server_context, credentials={"postwise": PASSWORD}) as server,
        SmtpProvider(
            "127.0.0.1",
            server.port,
            username="postwise",
            password=wrong,
            ssl_context=client_context,
        ) as provider,
        caplog.at_level(logging.DEBUG, logger="postwise"),
    ):
        first = provider.send_batch(make_messages(3))
        second = provider.send_batch(make_messages(1))
    assert outcomes(first + second) == [Outcome.DEFERRED] * 4
    assert first[0].reason.startswith("authentication failed for user 'postwise'")
    assert (first[0].code, first[0].status) == (535, "5.7.8")
    assert server.transactions == 0
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1
    assert wrong not in caplog.text
    assert wrong not in repr(provider)
    assert all(wrong not in r.reason for r in first)


def test_credentials_are_never_sent_unencrypted_unless_starttls_is_off(
    server: FaultySmtpServer,
) -> None:
    with SmtpProvider("127.0.0.1", server.port, username="postwise", password=PASSWORD) as provider:
        results = provider.send_batch(make_messages(1))
    assert outcomes(results) == [Outcome.DEFERRED]
    assert "refusing to send credentials" in results[0].reason


@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")
def test_credentials_go_over_a_plain_connection_when_starttls_is_off() -> None:
    with (
        FaultySmtpServer(credentials={"postwise": PASSWORD}, auth_require_tls=False) as server,
        SmtpProvider(
            "127.0.0.1", server.port, username="postwise", password=PASSWORD, starttls="off"
        ) as provider,
    ):
        assert outcomes(provider.send_batch(make_messages(1))) == [Outcome.ACCEPTED]
    assert server.accepted[0].authenticated_as == "postwise"


# -- configuration and parsing ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "complaint"),
    [
        ({"starttls": "sometimes"}, "starttls must be one of"),
        ({"pool_size": 0}, "pool_size must be at least 1"),
        ({"timeout": 0}, "timeout must be a positive number"),
        ({"username": "postwise"}, "username and password must be set together"),
        ({"port": 70000}, "out of range"),
    ],
)
def test_invalid_settings_are_refused_with_the_reason(
    arguments: dict[str, object], complaint: str
) -> None:
    with pytest.raises(ConfigurationError, match=complaint):
        SmtpProvider("relay.example.com", **arguments)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("code", "text", "status"),
    [
        (550, "5.1.1 <x@example.com>: Recipient address rejected", "5.1.1"),
        (451, "4.7.1 Greylisted, try again", "4.7.1"),
        (250, "2.0.0 Ok: queued as 4XyZ", "2.0.0"),
        (552, "5.3.4 Message too big", "5.3.4"),
        (554, "5.7.100 policy", "5.7.100"),
        (250, "5.1.1 class does not match the code", None),
        (550, "User unknown", None),
        (550, "5.1 incomplete", None),
        (550, "10.1.1 not a class", None),
    ],
)
def test_enhanced_status_is_read_from_the_start_of_the_reply(
    code: int, text: str, status: str | None
) -> None:
    assert parse_enhanced_status(code, text) == status


def test_a_bug_in_the_provider_is_transient_so_max_attempts_ends_it(
    server: FaultySmtpServer, provider: SmtpProvider, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A failure that strikes every time must not wait out delivery_max_defer_hours as a
    # deferral would: each try uses up an attempt.
    def broken(*_args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(SmtpProvider, "_transact", broken)
    results = provider.send_batch(make_messages(2))
    assert outcomes(results) == [Outcome.TRANSIENT, Outcome.TRANSIENT]
    assert "internal error in the SMTP provider" in results[0].reason
