"""The metadata limit, per-message tracking and tags (issue 12), against the local Mailchimp
Transactional that enforces the documented rules of the X-MC-* headers.

The fake is first held to Mailchimp's own Python client (mailchimp-transactional 1.4): what
that client sends is taken, and what the documentation says is refused is refused.
"""

from __future__ import annotations

import json
from typing import Any

import mailchimp_transactional
import pytest
from fake_mailchimp import API_KEY, FakeMailchimp
from mailchimp_transactional.api_client import ApiClientError

from postwise.delivery.message import Mailbox, build_message
from postwise.delivery.provider import Outcome, OutgoingMessage
from postwise.errors import ConfigurationError
from postwise_mailchimp.options import parse_options
from postwise_mailchimp.provider import MailchimpProvider

RAW = build_message(
    sender=Mailbox("news@example.com"),
    recipient=Mailbox("ann@example.net"),
    subject="Hello",
    text="Hello Ann",
    html="<p>Hello <a href='https://shop.example.com'>Ann</a></p>",
    message_id="ledger-1",
)


def vendor_send(server: FakeMailchimp, headers: str) -> Any:
    client = mailchimp_transactional.Client(API_KEY)
    client.api_client.host = server.base_url
    raw = headers.encode() + RAW
    return client.messages.send_raw({"raw_message": raw.decode(), "to": ["ann@example.net"]})


def test_the_fake_takes_what_mailchimps_own_client_sends(mailchimp_server: FakeMailchimp) -> None:
    [result] = vendor_send(
        mailchimp_server,
        'X-MC-Metadata: {"user_id":"45829"}\r\nX-MC-Tags: welcome,receipt\r\n'
        "X-MC-Track: opens, clicks_all\r\n",
    )
    assert result["status"] == "sent"
    assert mailchimp_server.sent == [
        {"metadata": {"user_id": "45829"}, "tags": ["welcome", "receipt"],
         "tracking": {"opens", "clicks_all"}}
    ]  # fmt: skip


@pytest.mark.parametrize(
    "headers",
    [
        "X-MC-Metadata: " + json.dumps({"k": "v" * 250}) + "\r\n",
        'X-MC-Metadata: {"nested": {"a": 1}}\r\n',
        "X-MC-Tags: " + "t" * 51 + "\r\n",
        "X-MC-Tags: _reserved\r\n",
    ],
)
def test_the_fake_refuses_what_mailchimp_documents_as_refused(
    mailchimp_server: FakeMailchimp, headers: str
) -> None:
    with pytest.raises(ApiClientError) as info:
        vendor_send(mailchimp_server, headers)
    assert info.value.text["name"] == "ValidationError"


def test_without_x_mc_track_the_account_tracks_opens_and_clicks(
    mailchimp_server: FakeMailchimp,
) -> None:
    vendor_send(mailchimp_server, "")
    assert mailchimp_server.sent[0]["tracking"] == {
        "opens", "clicks", "clicks_all", "clicks_htmlonly", "clicks_textonly"
    }  # fmt: skip


# -- the provider ---------------------------------------------------------------------------


def send(server: FakeMailchimp, metadata: dict[str, str], **options: Any) -> Any:
    provider = MailchimpProvider(
        parse_options({"api_key": API_KEY, "base_url": server.base_url, **options})
    )
    message = OutgoingMessage("ledger-1", "news@example.com", "ann@example.net", RAW, metadata)
    try:
        [result] = provider.send_batch([message])
    finally:
        provider.close()
    return result


def test_large_metadata_never_loses_the_ledger_link(mailchimp_server: FakeMailchimp) -> None:
    metadata = {"stream": "marketing", "campaign_id": "7", "note": "x" * 300, "variant": "b"}
    result = send(mailchimp_server, metadata)
    assert result.outcome is Outcome.ACCEPTED, result.reason
    kept = mailchimp_server.sent[0]["metadata"]
    assert kept["postwise_message_id"] == "ledger-1"
    assert kept["postwise_campaign_id"] == "7" and kept["postwise_variant"] == "b"
    assert "postwise_note" not in kept
    assert len(json.dumps(kept, separators=(",", ":")).encode()) <= 200


def test_vendor_tracking_is_switched_off_per_message(mailchimp_server: FakeMailchimp) -> None:
    send(mailchimp_server, {"stream": "marketing"})
    assert mailchimp_server.sent[0]["tracking"] == set()


def test_vendor_tracking_can_be_left_to_the_account(mailchimp_server: FakeMailchimp) -> None:
    send(mailchimp_server, {}, vendor_tracking=True)
    assert "opens" in mailchimp_server.sent[0]["tracking"]


def test_messages_are_tagged_with_the_configured_tags_and_their_stream(
    mailchimp_server: FakeMailchimp,
) -> None:
    send(mailchimp_server, {"stream": "transactional"}, tags=["postwise", "receipts"])
    assert mailchimp_server.sent[0]["tags"] == ["postwise", "receipts", "transactional"]


@pytest.mark.parametrize("tag", ["_internal", "x" * 51, "a,b", ""])
def test_tags_mailchimp_would_refuse_are_configuration_errors(tag: str) -> None:
    with pytest.raises(ConfigurationError):
        parse_options({"api_key": API_KEY, "tags": [tag]})
