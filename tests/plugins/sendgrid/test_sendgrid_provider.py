"""The sendgrid provider against a local server speaking SendGrid's v3 Mail Send format."""

from __future__ import annotations

import time
from typing import Any

import pytest
from fake_sendgrid import API_KEY, FakeSendGrid, Reply, errors

from postwise.delivery.dkim import DkimSigner, generate_key
from postwise.delivery.message import Mailbox, build_message
from postwise.delivery.provider import BounceKind, Outcome, OutgoingMessage, get_provider
from postwise.errors import ConfigurationError
from postwise.runtime import Runtime
from postwise.settings import load_settings
from postwise.testing.contracts import HttpProviderContract
from postwise_sendgrid.options import parse_options
from postwise_sendgrid.provider import SendGridProvider, classify_response


def make_provider(server: FakeSendGrid, **options: Any) -> SendGridProvider:
    values: dict[str, Any] = {"api_key": API_KEY, "base_url": server.url, "timeout": 5}
    values.update(options)
    return SendGridProvider(parse_options(values))


def plain(index: int, *, sender: str = "news@example.com") -> OutgoingMessage:
    raw = (
        f"From: Example News <{sender}>\r\nTo: rcpt{index}@example.net\r\n"
        f"Subject: hello {index}\r\nMIME-Version: 1.0\r\n"
        "Content-Type: text/plain; charset=utf-8\r\n\r\n"
        f"Hello {index}\r\n"
    ).encode()
    return OutgoingMessage(f"m{index}", sender, f"rcpt{index}@example.net", raw)


class TestSendGridProviderContract(HttpProviderContract):
    secret = API_KEY
    service = "SendGrid"

    def make_server(self) -> FakeSendGrid:
        return FakeSendGrid(API_KEY)

    def provider_for(self, url: str, **options: Any) -> SendGridProvider:
        return SendGridProvider(parse_options({"api_key": API_KEY, "base_url": url, **options}))

    def error_body(self, status: int, message: str) -> Any:
        return errors((None, message))

    def reject_recipient(self, address: str) -> None:
        self.server.invalid.add(address.lower())  # type: ignore[attr-defined]


def test_an_accepted_message_keeps_sendgrids_message_id(sendgrid_server: FakeSendGrid) -> None:
    sendgrid_server.reply(Reply(202, {"X-Message-Id": "sg-abc123"}))
    provider = make_provider(sendgrid_server)
    try:
        [result] = provider.send_batch([plain(1)])
    finally:
        provider.close()
    assert result.outcome is Outcome.ACCEPTED
    assert (result.code, result.http_status) == (None, 202)
    assert result.provider_message_id == "sg-abc123"


def test_the_request_carries_the_parsed_message_and_the_ledger_id(
    sendgrid_server: FakeSendGrid,
) -> None:
    raw = build_message(
        sender=Mailbox("news@example.com", "Example News"),
        recipient=Mailbox("ann@example.net", "Ann Example"),
        subject="Grüße aus Köln",
        text="Hello Ann,\nthis is the text part.",
        html="<p>Hello <b>Ann</b></p>",
        message_id="ledger-0001",
        unsubscribe_url="https://mail.example.com/u/token",
        unsubscribe_mailto="unsubscribe@example.com",
        reply_to=Mailbox("help@example.com"),
        headers={"Feedback-ID": "c1:news:postwise"},
    )
    signed = DkimSigner("s1", "example.com", generate_key().private_key_pem).sign(raw)
    message = OutgoingMessage(
        "ledger-0001", "news@example.com", "ann@example.net", signed, {"campaign_id": "7"}
    )
    provider = make_provider(sendgrid_server)
    try:
        [result] = provider.send_batch([message])
    finally:
        provider.close()
    assert result.outcome is Outcome.ACCEPTED, result.reason
    [request] = sendgrid_server.received
    assert request.headers["authorization"] == f"Bearer {API_KEY}"
    assert request.headers["content-type"] == "application/json"
    body = request.body
    assert body["from"] == {"email": "news@example.com", "name": "Example News"}
    assert body["personalizations"] == [
        {"to": [{"email": "ann@example.net", "name": "Ann Example"}]}
    ]
    assert body["reply_to"] == {"email": "help@example.com"}
    assert body["subject"] == "Grüße aus Köln"
    assert [c["type"] for c in body["content"]] == ["text/plain", "text/html"]
    assert "this is the text part." in body["content"][0]["value"]
    assert "<b>Ann</b>" in body["content"][1]["value"]
    headers = body["headers"]
    assert headers["List-Unsubscribe"] == (
        "<https://mail.example.com/u/token>, <mailto:unsubscribe@example.com>"
    )
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert headers["X-Postwise-Message-Id"] == "ledger-0001"
    assert headers["Feedback-ID"] == "c1:news:postwise"
    assert not {"DKIM-Signature", "Message-ID", "Date", "MIME-Version"} & set(headers)
    assert body["custom_args"] == {
        "postwise_message_id": "ledger-0001",
        "postwise_campaign_id": "7",
    }
    assert body["tracking_settings"]["click_tracking"]["enable"] is False
    assert body["tracking_settings"]["open_tracking"]["enable"] is False


def test_vendor_tracking_leaves_tracking_to_the_account(sendgrid_server: FakeSendGrid) -> None:
    provider = make_provider(sendgrid_server, vendor_tracking=True, sandbox_mode=True)
    try:
        provider.send_batch([plain(1)])
    finally:
        provider.close()
    body = sendgrid_server.received[0].body
    assert "tracking_settings" not in body
    assert body["mail_settings"] == {"sandbox_mode": {"enable": True}}


def test_a_validation_error_fails_the_message_without_blaming_the_recipient(
    sendgrid_server: FakeSendGrid,
) -> None:
    sendgrid_server.reply(
        Reply(400, body=errors(("from.email", "The from email does not contain a valid address.")))
    )
    provider = make_provider(sendgrid_server, concurrency=1)
    try:
        first, second = provider.send_batch([plain(1), plain(2)])
    finally:
        provider.close()
    assert first.outcome is Outcome.FAILED
    assert "HTTP 400" in first.reason
    assert "from.email: The from email does not contain a valid address." in first.reason
    # An HTTP status is no SMTP reply: it never goes where compliance reads one.
    assert (first.code, first.http_status, first.bounce_kind) == (None, 400, None)
    assert second.outcome is Outcome.ACCEPTED


def test_an_invalid_recipient_address_is_a_bounce_compliance_does_not_act_on(
    sendgrid_server: FakeSendGrid,
) -> None:
    sendgrid_server.reply(
        Reply(
            400, body=errors(("personalizations.0.to.0.email", "Does not contain a valid address."))
        )
    )
    provider = make_provider(sendgrid_server)
    try:
        [result] = provider.send_batch([plain(1)])
    finally:
        provider.close()
    assert result.outcome is Outcome.PERMANENT
    assert (result.code, result.http_status) == (None, 400)
    assert result.bounce_kind is BounceKind.UNKNOWN
    assert "personalizations.0.to.0.email: Does not contain a valid address." in result.reason


def test_a_429_without_retry_after_waits_until_the_rate_limit_resets() -> None:
    reset = str(int(time.time()) + 30)
    verdict = classify_response("m1", 429, {"x-ratelimit-reset": reset}, b"")
    assert verdict.result.outcome is Outcome.DEFERRED and verdict.halt
    assert verdict.result.retry_after is not None
    assert 28 <= verdict.result.retry_after <= 30


def test_a_refused_api_key_is_transient_and_stops_the_batch(
    sendgrid_server: FakeSendGrid,
) -> None:
    provider = make_provider(sendgrid_server, api_key="SG.revoked", concurrency=1)
    try:
        results = provider.send_batch([plain(i) for i in range(3)])
    finally:
        provider.close()
    # The request that was refused used up an attempt; the others were never sent.
    assert [r.outcome for r in results] == [Outcome.TRANSIENT] + [Outcome.DEFERRED] * 2
    assert "HTTP 401" in results[0].reason and "API key" in results[0].reason
    assert (results[0].code, results[0].http_status, results[0].bounce_kind) == (None, 401, None)
    assert results[2].reason.startswith("not attempted: SendGrid answered HTTP 401")
    assert len(sendgrid_server.received) == 1


def test_a_message_that_cannot_be_converted_fails_and_is_not_sent(
    sendgrid_server: FakeSendGrid,
) -> None:
    raw = b"To: a@example.net\r\nSubject: x\r\n\r\nno sender\r\n"
    provider = make_provider(sendgrid_server)
    try:
        [result] = provider.send_batch([OutgoingMessage("m1", "", "a@example.net", raw)])
    finally:
        provider.close()
    assert result.outcome is Outcome.FAILED
    assert "no From header" in result.reason
    assert sendgrid_server.received == []


def test_settings_from_the_environment_pick_and_configure_the_provider(
    sendgrid_server: FakeSendGrid, tmp_path: Any
) -> None:
    settings = load_settings(
        environ={
            "POSTWISE_PROVIDER": "sendgrid",
            "POSTWISE_PROVIDER_OPTIONS__SENDGRID__API_KEY": API_KEY,
            "POSTWISE_PROVIDER_OPTIONS__SENDGRID__BASE_URL": sendgrid_server.url,
            "POSTWISE_PROVIDER_OPTIONS__SENDGRID__CONCURRENCY": "2",
        },
        config_file=None,
        data_dir=tmp_path,
        redis_url="fakeredis://sendgrid-settings",
    )
    runtime = Runtime(settings)
    try:
        provider = get_provider(runtime)
        assert isinstance(provider, SendGridProvider)
        assert provider.options.concurrency == 2
        results = provider.send_batch([plain(1), plain(2)])
    finally:
        runtime.close()
    assert [r.outcome for r in results] == [Outcome.ACCEPTED] * 2


def test_a_missing_api_key_is_a_configuration_error_naming_the_setting() -> None:
    with pytest.raises(ConfigurationError, match="POSTWISE_PROVIDER_OPTIONS__SENDGRID__API_KEY"):
        SendGridProvider(parse_options({}))


def test_an_unknown_option_is_a_configuration_error_listing_the_known_ones() -> None:
    with pytest.raises(ConfigurationError, match=r"apikey: unknown option; known: api_key"):
        parse_options({"apikey": "x"})
    with pytest.raises(ConfigurationError, match="base_url"):
        parse_options({"base_url": "api.sendgrid.com"})


@pytest.mark.parametrize(
    ("status", "outcome", "halt"),
    [
        (200, Outcome.ACCEPTED, False),
        (202, Outcome.ACCEPTED, False),
        (400, Outcome.FAILED, False),
        (413, Outcome.FAILED, False),
        (415, Outcome.FAILED, False),
        (401, Outcome.TRANSIENT, True),
        (403, Outcome.TRANSIENT, True),
        (404, Outcome.TRANSIENT, True),
        (429, Outcome.DEFERRED, True),
        (500, Outcome.TRANSIENT, False),
        (502, Outcome.TRANSIENT, False),
    ],
)
def test_each_status_is_classified(status: int, outcome: Outcome, halt: bool) -> None:
    verdict = classify_response("m1", status, {}, b"")
    assert verdict.result.outcome is outcome
    assert verdict.halt is halt
    # Never an SMTP code from an HTTP API, never a verdict on the recipient from our request.
    assert (verdict.result.code, verdict.result.http_status) == (None, status)
    assert verdict.result.bounce_kind is None
