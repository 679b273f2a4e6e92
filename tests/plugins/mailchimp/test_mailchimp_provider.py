"""The mailchimp provider against a local server speaking Mailchimp Transactional's format."""

from __future__ import annotations

import json
from typing import Any

import dkim
import pytest
from fake_mailchimp import API_KEY, FakeMailchimp, Reply, error

from postwise.delivery.dkim import DkimSigner, generate_key
from postwise.delivery.message import Mailbox, build_message
from postwise.delivery.provider import BounceKind, Outcome, OutgoingMessage, get_provider
from postwise.errors import ConfigurationError
from postwise.runtime import Runtime
from postwise.settings import load_settings
from postwise.testing.contracts import HttpProviderContract
from postwise_mailchimp.options import parse_options
from postwise_mailchimp.provider import MailchimpProvider, classify_response


def make_provider(server: FakeMailchimp, **options: Any) -> MailchimpProvider:
    values: dict[str, Any] = {"api_key": API_KEY, "base_url": server.base_url, "timeout": 5}
    values.update(options)
    return MailchimpProvider(parse_options(values))


def plain(index: int) -> OutgoingMessage:
    raw = (
        f"From: news@example.com\r\nTo: rcpt{index}@example.net\r\nSubject: hello {index}\r\n"
        "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
        f"Hello {index}\r\n"
    ).encode()
    return OutgoingMessage(f"m{index}", "news@example.com", f"rcpt{index}@example.net", raw)


class TestMailchimpProviderContract(HttpProviderContract):
    secret = API_KEY
    service = "Mailchimp Transactional"

    def make_server(self) -> FakeMailchimp:
        return FakeMailchimp(API_KEY)

    def provider_for(self, url: str, **options: Any) -> MailchimpProvider:
        values = {"api_key": API_KEY, "base_url": url + "/api/1.3", **options}
        return MailchimpProvider(parse_options(values))

    def error_body(self, status: int, message: str) -> Any:
        return error("ValidationError" if status < 500 else "GeneralError", message)

    def refusal(self) -> Reply:
        # Mailchimp Transactional sends every error with HTTP 500, named.
        return Reply(500, body=error("Invalid_Key", "Invalid API key"))

    def reject_recipient(self, address: str) -> None:
        self.server.rejected[address] = "hard-bounce"  # type: ignore[attr-defined]


def test_the_raw_message_is_sent_as_signed_with_the_ledger_id_as_metadata(
    mailchimp_server: FakeMailchimp,
) -> None:
    signer = DkimSigner("s1", "example.com", generate_key().private_key_pem)
    raw = signer.sign(
        build_message(
            sender=Mailbox("news@example.com", "Example News"),
            recipient=Mailbox("ann@example.net", "Ann Example"),
            subject="Grüße",
            text="Hello Ann",
            html="<p>Hello Ann</p>",
            message_id="ledger-0001",
            unsubscribe_url="https://mail.example.com/u/token",
        )
    )
    message = OutgoingMessage(
        "ledger-0001", "news@example.com", "ann@example.net", raw, {"campaign_id": "7"}
    )
    provider = make_provider(mailchimp_server, ip_pool="Main Pool")
    try:
        [result] = provider.send_batch([message])
    finally:
        provider.close()
    assert result.outcome is Outcome.ACCEPTED, result.reason
    assert (result.code, result.http_status) == (None, 200) and result.provider_message_id
    [request] = mailchimp_server.received
    body = request.body
    assert body["key"] == API_KEY
    assert body["from_email"] == "news@example.com"
    assert body["to"] == ["ann@example.net"]
    assert body["async"] is False
    assert body["ip_pool"] == "Main Pool"
    sent = body["raw_message"].encode()
    assert sent.endswith(raw)
    controls = dict(line.split(b": ", 1) for line in sent[: -len(raw)].splitlines())
    assert set(controls) == {b"X-MC-Metadata", b"X-MC-Track"}
    metadata = json.loads(controls[b"X-MC-Metadata"])
    assert metadata == {"postwise_message_id": "ledger-0001", "postwise_campaign_id": "7"}
    assert controls[b"X-MC-Track"] == b"none"
    record = signer.dns_record().encode()
    assert dkim.verify(body["raw_message"].encode(), dnsfunc=lambda *_a, **_k: record)


@pytest.mark.parametrize(
    ("reject_reason", "outcome", "kind"),
    [
        ("hard-bounce", Outcome.PERMANENT, BounceKind.HARD),
        ("invalid", Outcome.PERMANENT, BounceKind.HARD),
        ("soft-bounce", Outcome.PERMANENT, BounceKind.SOFT),
        ("spam", Outcome.PERMANENT, BounceKind.COMPLAINT),
        ("unsub", Outcome.FAILED, None),
        ("custom", Outcome.FAILED, None),
        ("rule", Outcome.FAILED, None),
        ("invalid-sender", Outcome.FAILED, None),
        ("some-future-reason", Outcome.FAILED, None),
        ("unsigned", Outcome.TRANSIENT, None),
        ("test-mode-limit", Outcome.TRANSIENT, None),
    ],
)
def test_a_rejected_recipient_is_classified_by_its_reject_reason(
    mailchimp_server: FakeMailchimp, reject_reason: str, outcome: Outcome, kind: BounceKind | None
) -> None:
    mailchimp_server.rejected["rcpt1@example.net"] = reject_reason
    provider = make_provider(mailchimp_server, concurrency=1)
    try:
        rejected, after = provider.send_batch([plain(1), plain(2)])
    finally:
        provider.close()
    assert rejected.outcome is outcome
    assert rejected.bounce_kind is kind
    assert rejected.reason.startswith(f"rejected by Mailchimp Transactional: {reject_reason}")
    # Mailchimp's HTTP 200 is no SMTP reply: compliance must never read it as one.
    assert (rejected.code, rejected.http_status) == (None, 200)
    assert rejected.provider_message_id
    if reject_reason == "test-mode-limit":
        # The account's limit holds for every message: the rest of the batch waits.
        assert after.outcome is Outcome.DEFERRED and after.reason.startswith("not attempted")
        assert len(mailchimp_server.received) == 1
    else:
        assert after.outcome is Outcome.ACCEPTED


def test_an_invalid_recipient_is_a_hard_bounce(mailchimp_server: FakeMailchimp) -> None:
    mailchimp_server.reply(
        Reply(200, body=[{"email": "rcpt1@example.net", "status": "invalid", "_id": "x1"}])
    )
    provider = make_provider(mailchimp_server)
    try:
        [result] = provider.send_batch([plain(1)])
    finally:
        provider.close()
    assert result.outcome is Outcome.PERMANENT
    assert result.bounce_kind is BounceKind.HARD
    assert "invalid" in result.reason


def test_a_validation_error_fails_the_message_although_mailchimp_sends_it_as_http_500(
    mailchimp_server: FakeMailchimp,
) -> None:
    mailchimp_server.reply(
        Reply(500, body=error("ValidationError", 'Validation error: {"to":"bad address"}'))
    )
    provider = make_provider(mailchimp_server, concurrency=1)
    try:
        first, second = provider.send_batch([plain(1), plain(2)])
    finally:
        provider.close()
    assert first.outcome is Outcome.FAILED
    assert "ValidationError" in first.reason and "bad address" in first.reason
    # Mailchimp's HTTP 500 is no SMTP reply: compliance must not classify it as a hard bounce.
    assert (first.code, first.http_status, first.bounce_kind) == (None, 500, None)
    assert second.outcome is Outcome.ACCEPTED


def test_an_invalid_key_is_transient_and_stops_the_batch(mailchimp_server: FakeMailchimp) -> None:
    provider = make_provider(mailchimp_server, api_key="md-revoked", concurrency=1)
    try:
        results = provider.send_batch([plain(i) for i in range(3)])
    finally:
        provider.close()
    # The request that was refused used up an attempt; the others were never sent.
    assert [r.outcome for r in results] == [Outcome.TRANSIENT] + [Outcome.DEFERRED] * 2
    assert "Invalid_Key" in results[0].reason
    assert results[0].bounce_kind is None
    assert results[2].reason.startswith("not attempted: Mailchimp Transactional refused")
    assert len(mailchimp_server.received) == 1


def test_a_general_error_is_transient_and_sending_goes_on(mailchimp_server: FakeMailchimp) -> None:
    mailchimp_server.reply(Reply(500, body=error("GeneralError", "something broke")))
    provider = make_provider(mailchimp_server, concurrency=1)
    try:
        first, second = provider.send_batch([plain(1), plain(2)])
    finally:
        provider.close()
    assert first.outcome is Outcome.TRANSIENT and "GeneralError" in first.reason
    assert second.outcome is Outcome.ACCEPTED


def test_a_bad_gateway_without_json_is_transient(mailchimp_server: FakeMailchimp) -> None:
    mailchimp_server.reply(Reply(502, {"Content-Type": "text/html"}))
    provider = make_provider(mailchimp_server)
    try:
        [result] = provider.send_batch([plain(1)])
    finally:
        provider.close()
    assert result.outcome is Outcome.TRANSIENT
    assert (result.code, result.http_status) == (None, 502)


def test_settings_from_the_environment_pick_and_configure_the_provider(
    mailchimp_server: FakeMailchimp, tmp_path: Any
) -> None:
    settings = load_settings(
        environ={
            "POSTWISE_PROVIDER": "mailchimp",
            "POSTWISE_PROVIDER_OPTIONS__MAILCHIMP__API_KEY": API_KEY,
            "POSTWISE_PROVIDER_OPTIONS__MAILCHIMP__BASE_URL": mailchimp_server.base_url,
        },
        config_file=None,
        data_dir=tmp_path,
        redis_url="fakeredis://mailchimp-settings",
    )
    runtime = Runtime(settings)
    try:
        provider = get_provider(runtime)
        assert isinstance(provider, MailchimpProvider)
        results = provider.send_batch([plain(1)])
    finally:
        runtime.close()
    assert results[0].outcome is Outcome.ACCEPTED


def test_a_missing_api_key_is_a_configuration_error_naming_the_setting() -> None:
    with pytest.raises(ConfigurationError, match="POSTWISE_PROVIDER_OPTIONS__MAILCHIMP__API_KEY"):
        MailchimpProvider(parse_options({}))
    with pytest.raises(ConfigurationError, match="unknown option"):
        parse_options({"apikey": "x"})


A = "a@example.net"


@pytest.mark.parametrize(
    ("status", "body", "outcome", "halt"),
    [
        (200, [{"email": A, "status": "queued", "_id": "1"}], Outcome.ACCEPTED, False),
        (200, [{"email": A, "status": "scheduled", "_id": "1"}], Outcome.ACCEPTED, False),
        (200, [{"email": A, "status": "rejected"}], Outcome.FAILED, False),
        (200, [{"email": A, "status": "bounced?"}], Outcome.UNKNOWN, False),
        # Taken (2xx) but no readable result: it may have been sent, so it is not retried.
        (200, [], Outcome.UNKNOWN, False),
        (200, {"not": "a list"}, Outcome.UNKNOWN, False),
        (200, None, Outcome.UNKNOWN, False),
        (500, error("PaymentRequired", "no credits"), Outcome.TRANSIENT, True),
        (500, error("Unknown_Subaccount", "no such subaccount"), Outcome.TRANSIENT, True),
        (401, None, Outcome.TRANSIENT, True),
        (400, {"message": "bad"}, Outcome.FAILED, False),
        (429, None, Outcome.DEFERRED, True),
        (503, None, Outcome.TRANSIENT, False),
    ],
)  # fmt: skip
def test_each_answer_is_classified(status: int, body: Any, outcome: Outcome, halt: bool) -> None:
    data = b"" if body is None else json.dumps(body).encode()
    verdict = classify_response("m1", A, status, {}, data)
    assert verdict.result.outcome is outcome
    assert verdict.halt is halt
    assert (verdict.result.code, verdict.result.http_status) == (None, status)
