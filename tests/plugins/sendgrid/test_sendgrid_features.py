"""Unsubscribe groups, categories, list-management bypass and image-only HTML (issue 12),
against the local SendGrid that enforces v3 Mail Send's documented limits.

The fake is first held to SendGrid's own Python client (sendgrid 6.x): what that client builds
is taken, and what SendGrid documents as refused is refused.
"""

from __future__ import annotations

from typing import Any

import pytest
from fake_sendgrid import API_KEY, FakeSendGrid
from python_http_client.exceptions import BadRequestsError
from sendgrid import SendGridAPIClient
from sendgrid.helpers.mail import (
    Asm,
    BypassBounceManagement,
    BypassListManagement,
    Category,
    GroupId,
    GroupsToDisplay,
    Mail,
    MailSettings,
)

from postwise.delivery.message import Mailbox, build_message
from postwise.delivery.provider import Outcome, OutgoingMessage
from postwise.errors import ConfigurationError
from postwise_sendgrid.options import parse_options
from postwise_sendgrid.provider import SendGridProvider

BANNER = (
    '<a href="https://shop.example.com/sale"><img src="https://cdn.example.com/sale.png" '
    'alt="Summer sale: 30% off"></a>'
)


def vendor_client(server: FakeSendGrid) -> SendGridAPIClient:
    return SendGridAPIClient(api_key=API_KEY, host=server.url)


def vendor_mail(**extra: Any) -> Mail:
    mail = Mail(
        from_email="news@example.com",
        to_emails="ann@example.net",
        subject="Hello",
        plain_text_content="Hello Ann",
        html_content="<p>Hello Ann</p>",
    )
    for category in extra.get("categories", []):
        mail.add_category(Category(category))
    if "asm" in extra:
        mail.asm = extra["asm"]
    if "mail_settings" in extra:
        mail.mail_settings = extra["mail_settings"]
    return mail


def test_the_fake_takes_what_sendgrids_own_client_sends(sendgrid_server: FakeSendGrid) -> None:
    settings = MailSettings()
    settings.bypass_list_management = BypassListManagement(True)
    mail = vendor_mail(
        categories=["newsletter", "marketing"],
        asm=Asm(GroupId(42), GroupsToDisplay([42, 43])),
        mail_settings=settings,
    )
    response = vendor_client(sendgrid_server).send(mail)
    assert response.status_code == 202


def _refused(server: FakeSendGrid, body: dict[str, Any]) -> str:
    with pytest.raises(BadRequestsError) as info:
        vendor_client(server).client.mail.send.post(request_body=body)
    return str(info.value.body)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda b: b.update(categories=[f"c{n}" for n in range(11)]), "categories"),
        (lambda b: b.update(categories=["x" * 256]), "categories"),
        (lambda b: b.update(asm={"group_id": "42"}), "asm.group_id"),
        (lambda b: b.update(asm={"group_id": 1, "groups_to_display": list(range(1, 27))}), "asm"),
        (lambda b: b.update(custom_args={"k": "v" * 10_000}), "custom_args"),
        (lambda b: b["content"].insert(0, {"type": "text/plain", "value": ""}), "content"),
        (
            lambda b: b["personalizations"].extend(
                {"to": [{"email": f"r{n}@example.net"}]} for n in range(1000)
            ),
            "personalizations",
        ),
    ],
)
def test_the_fake_refuses_what_sendgrid_documents_as_refused(
    sendgrid_server: FakeSendGrid, change: Any, field: str
) -> None:
    body = vendor_mail().get()
    body["content"] = [c for c in body["content"] if c["type"] == "text/html"]
    change(body)
    assert field in _refused(sendgrid_server, body)


def test_bypass_list_management_combined_with_another_bypass_is_refused(
    sendgrid_server: FakeSendGrid,
) -> None:
    settings = MailSettings()
    settings.bypass_list_management = BypassListManagement(True)
    settings.bypass_bounce_management = BypassBounceManagement(True)
    assert "bypass" in _refused(sendgrid_server, vendor_mail(mail_settings=settings).get())


# -- the provider ---------------------------------------------------------------------------


def message(stream: str | None, *, html: str = "<p>Hello</p>", text: str = "Hello") -> Any:
    raw = build_message(
        sender=Mailbox("news@example.com"),
        recipient=Mailbox("ann@example.net"),
        subject="Hello",
        text=text,
        html=html,
        message_id="ledger-1",
    )
    metadata = {"stream": stream, "campaign_id": "7"} if stream else {}
    return OutgoingMessage("ledger-1", "news@example.com", "ann@example.net", raw, metadata)


def send(server: FakeSendGrid, msg: OutgoingMessage, **options: Any) -> Any:
    provider = SendGridProvider(
        parse_options({"api_key": API_KEY, "base_url": server.url, **options})
    )
    try:
        [result] = provider.send_batch([msg])
    finally:
        provider.close()
    return result


def test_an_image_only_html_message_gets_a_text_part_instead_of_a_400(
    sendgrid_server: FakeSendGrid,
) -> None:
    result = send(sendgrid_server, message("marketing", html=BANNER, text=""))
    assert result.outcome is Outcome.ACCEPTED, result.reason
    plain, html = sendgrid_server.received[0].body["content"]
    assert plain["type"] == "text/plain"
    assert "Summer sale: 30% off" in plain["value"]
    assert "https://shop.example.com/sale" in plain["value"]
    assert html["value"].strip() == BANNER


def test_images_without_alt_text_still_get_a_text_part(sendgrid_server: FakeSendGrid) -> None:
    html = '<img src="https://cdn.example.com/sale.png">'
    result = send(sendgrid_server, message("marketing", html=html, text=""))
    assert result.outcome is Outcome.ACCEPTED, result.reason
    assert "images" in sendgrid_server.received[0].body["content"][0]["value"]


def test_marketing_mail_joins_the_unsubscribe_group_and_carries_categories(
    sendgrid_server: FakeSendGrid,
) -> None:
    options = {"asm_group_id": 42, "asm_groups_to_display": [42, 43], "categories": ["news"]}
    result = send(sendgrid_server, message("marketing"), **options)
    assert result.outcome is Outcome.ACCEPTED, result.reason
    body = sendgrid_server.received[0].body
    assert body["asm"] == {"group_id": 42, "groups_to_display": [42, 43]}
    assert body["categories"] == ["news", "marketing"]
    assert "mail_settings" not in body


def test_a_transactional_message_bypasses_list_management_and_reaches_an_unsubscriber(
    sendgrid_server: FakeSendGrid,
) -> None:
    sendgrid_server.unsubscribed.add("ann@example.net")
    receipt = send(sendgrid_server, message("transactional"), asm_group_id=42)
    newsletter = send(sendgrid_server, message("marketing"), asm_group_id=42)
    assert receipt.outcome is newsletter.outcome is Outcome.ACCEPTED
    first, second = (r.body for r in sendgrid_server.received)
    assert first["mail_settings"] == {"bypass_list_management": {"enable": True}}
    assert "asm" not in first and first["categories"] == ["transactional"]
    assert second["asm"] == {"group_id": 42}
    # SendGrid delivers the receipt and drops the newsletter (the unsubscribe holds).
    assert sendgrid_server.outcomes == [("ann@example.net", True), ("ann@example.net", False)]


def test_the_bypass_can_be_switched_off(sendgrid_server: FakeSendGrid) -> None:
    send(sendgrid_server, message("transactional"), transactional_bypass_list_management=False)
    assert "mail_settings" not in sendgrid_server.received[0].body


@pytest.mark.parametrize(
    "options",
    [
        {"categories": [f"c{n}" for n in range(10)]},
        {"categories": ["x" * 256]},
        {"asm_group_id": "forty-two"},
        {"asm_groups_to_display": list(range(1, 27))},
    ],
)
def test_options_beyond_sendgrids_limits_are_configuration_errors(options: Any) -> None:
    with pytest.raises(ConfigurationError):
        parse_options({"api_key": API_KEY, **options})
