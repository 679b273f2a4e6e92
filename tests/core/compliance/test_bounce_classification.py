"""Classification of SMTP replies and returned messages (postwise.compliance.bounces)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from postwise.compliance.bounces import (
    BounceClassification,
    BounceKind,
    BounceReason,
    classify_message,
    classify_smtp_reply,
    parse_status,
)

FIXTURES = Path(__file__).parent / "fixtures" / "bounces"


def fixture(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


@pytest.mark.parametrize(
    ("code", "text", "kind", "status"),
    [
        (550, "5.1.1 <bob@example.com>: Recipient address rejected: User unknown", "hard", "5.1.1"),
        (550, "No such user here", "hard", None),
        (553, "5.1.3 Bad recipient address syntax", "hard", "5.1.3"),
        # Disabled or suspended is the mailbox's state for now, not a missing address.
        (550, "5.2.1 The email account that you tried to reach is disabled", "soft", "5.2.1"),
        (452, "4.2.2 The email account that you tried to reach is over quota", "soft", "4.2.2"),
        (552, "5.2.2 Mailbox full", "soft", "5.2.2"),
        (552, "5.3.4 Message size exceeds fixed limit", "soft", "5.3.4"),
        (421, "Service not available, closing transmission channel", "soft", None),
        (451, "4.7.1 Greylisting in action, please come back later", "soft", "4.7.1"),
        (450, "4.2.0 <bob@example.com>: Recipient address rejected: Greylisted", "soft", "4.2.0"),
        (550, "5.7.1 Message rejected as spam by Content Filtering", "block", "5.7.1"),
        (
            554,
            "5.7.1 Service unavailable; Client host [192.0.2.1] blocked using zen.spamhaus.org",
            "block",
            "5.7.1",
        ),
        (550, "5.7.1 Rejected by policy", "block", "5.7.1"),
        (
            550,
            "5.7.26 Unauthenticated email from example.com is not accepted due to DMARC policy",
            "block",
            "5.7.26",
        ),
        (
            421,
            "4.7.0 [TSS04] Messages from 192.0.2.1 temporarily deferred due to user complaints",
            "block",
            "4.7.0",
        ),
        (553, "5.1.8 Domain of sender address does not exist", "block", "5.1.8"),
        # The sender refused, in words that would read as "the address does not exist":
        # never a reason to suppress the recipient.
        (550, "Sender address does not exist", "block", None),
        (550, "Sender verify failed", "block", None),
        (550, "Absenderadresse existiert nicht", "block", None),
        (550, "L'adresse de l'expéditeur n'existe pas", "block", None),
        (550, "La dirección del remitente no existe", "block", None),
        (550, "Die Adresse existiert nicht", "hard", None),
        (550, "La dirección no existe", "hard", None),
        # ...but a sender word followed by a verdict on the recipient is about the recipient.
        (550, "sender ok, recipient invalid", "hard", None),
        (550, "Sender OK - Recipient <bob@example.com> unknown", "hard", None),
        (550, "MAIL FROM ok; RCPT TO: invalid mailbox", "hard", None),
        (550, "Remitente OK, destinatario desconocido", "hard", None),
        (550, "Expéditeur OK, destinataire inconnu", "hard", None),
        # Exim's sender-verify refusal quotes the callout's 5.1.1 about *our* address.
        (
            550,
            "Verification failed for <bounce@news.example.com>\n550-Called: 192.0.2.7\n"
            "550-Sent: RCPT TO:<bounce@news.example.com>\n550-Response: 550 5.1.1 User "
            "unknown\n550 Sender verify failed",
            "block",
            "5.1.1",
        ),
        # An unrecognised 5xx is never hard: it says nothing about the address.
        (554, "Transaction failed", "soft", None),
    ],
)
def test_smtp_replies_are_classified_by_code_status_and_wording(
    code: int, text: str, kind: str, status: str | None
) -> None:
    result = classify_smtp_reply(code, text)
    assert result.kind == kind, result.explanation
    assert result.status == status
    assert result.smtp_code == code
    assert result.diagnostic.startswith(str(code))


def test_a_success_reply_is_not_a_failure() -> None:
    result = classify_smtp_reply(250, "2.0.0 OK queued")
    assert result.kind is BounceKind.UNKNOWN
    assert result.reason is BounceReason.NOT_A_BOUNCE
    assert "not a failure" in result.explanation


def test_an_enhanced_code_contradicting_the_reply_code_is_ignored() -> None:
    result = classify_smtp_reply(550, "4.2.2 over quota?")
    assert result.status is None
    assert result.kind is BounceKind.SOFT  # the wording still says quota


@pytest.mark.parametrize(
    ("text", "status"),
    [
        ("550 5.1.1 user unknown", "5.1.1"),
        ("#5.1.10 RESOLVER.ADR.RecipientNotFound", "5.1.10"),
        ("host [192.0.2.153] said: 550 user unknown", None),
        ("(5.7.606)", "5.7.606"),
        ("version 5.9.1 is not a status", None),
    ],
)
def test_parse_status_finds_rfc3463_codes_not_ip_addresses(text: str, status: str | None) -> None:
    assert parse_status(text) == status


def test_to_dict_is_json_ready_with_the_kind_as_a_string() -> None:
    result = BounceClassification(kind=BounceKind.HARD, recipient="a@example.com", status="5.1.1")
    assert result.to_dict() == {
        "kind": "hard",
        "reason": "undetermined",
        "recipient": "a@example.com",
        "status": "5.1.1",
        "diagnostic": "",
        "explanation": "",
        "smtp_code": None,
        "message_id": None,
        "feedback_type": None,
        "permanent": None,
    }


def test_a_dsn_yields_recipient_status_code_and_our_message_id() -> None:
    result = classify_message(fixture("postfix-user-unknown.eml"))
    assert result.kind is BounceKind.HARD
    assert result.recipient == "bob@example.net"
    assert result.status == "5.1.1"
    assert result.smtp_code == 550
    assert result.message_id == "pw-0a1b2c"
    assert "User unknown in virtual mailbox table" in result.diagnostic


def test_a_multiline_smtp_reply_in_a_dsn_is_joined_without_repeated_codes() -> None:
    result = classify_message(fixture("gmail-dsn-no-such-user.eml"))
    assert result.diagnostic.count("5.1.1") == 1
    assert "does not exist" in result.diagnostic


def test_an_arf_report_is_a_complaint_tied_to_the_ledger() -> None:
    result = classify_message(fixture("arf-yahoo-style-abuse.eml"))
    assert result.kind is BounceKind.COMPLAINT
    assert result.feedback_type == "abuse"
    assert result.recipient == "carol@yahoo.example.com"
    assert result.message_id == "pw-91d2"


def test_an_arf_report_without_original_rcpt_to_uses_the_returned_messages_to() -> None:
    raw = fixture("arf-yahoo-style-abuse.eml").replace(
        b"Original-Rcpt-To: carol@yahoo.example.com\n", b""
    )
    assert classify_message(raw).recipient == "carol@yahoo.example.com"


def test_not_spam_feedback_is_not_counted_as_a_complaint() -> None:
    result = classify_message(fixture("arf-not-spam.eml"))
    assert result.kind is BounceKind.UNKNOWN
    assert result.feedback_type == "not-spam"


def test_a_bounce_text_is_read_only_up_to_the_returned_message() -> None:
    # The returned copy's subject says "spam"; the diagnostic above it says "user unknown".
    result = classify_message(fixture("exim-user-unknown.eml"))
    assert result.kind is BounceKind.HARD
    assert result.message_id == "pw-ex0001"


def test_x_failed_recipients_beats_the_returned_messages_to_list() -> None:
    result = classify_message(fixture("gmail-text-user-unknown.eml"))
    assert result.recipient == "userunknown@example.jp"


def test_an_out_of_office_reply_is_not_a_bounce() -> None:
    result = classify_message(fixture("autoreply-exchange-ooo.eml"))
    assert result.kind is BounceKind.AUTO_REPLY
    assert result.recipient == "alice@contoso.example.com"


def test_a_postfix_bounce_marked_auto_replied_is_still_a_bounce() -> None:
    # Postfix and Exim set Auto-Submitted: auto-replied on bounces.
    assert classify_message(fixture("exim-quota.eml")).kind is BounceKind.SOFT


def test_a_delivery_report_of_success_is_not_a_failure() -> None:
    result = classify_message(fixture("rfc3464-a4-delivered.eml"))
    assert result.kind is BounceKind.UNKNOWN
    assert result.reason is BounceReason.DELIVERED


def test_failed_with_a_4xx_status_after_retries_is_soft_not_hard() -> None:
    result = classify_message(fixture("rfc3464-a1-simple-dsn.eml"))
    assert result.kind is BounceKind.SOFT
    assert result.status == "4.0.0"


def test_an_amazon_ses_notification_carries_our_message_id_from_its_header_list() -> None:
    result = classify_message(fixture("ses-sns-bounce-json.eml"))
    assert (result.kind, result.message_id) == (BounceKind.HARD, "pw-ses01")


@pytest.mark.parametrize(
    ("raw", "reason_part"),
    [
        (b"", "empty"),
        (b"   \r\n", "empty"),
        (b"\x00\xff" * 100, "no report part"),
        (b"From: MAILER-DAEMON@example.com\n\n", "without a status code"),
    ],
)
def test_degenerate_input_is_unknown_with_a_reason(raw: bytes, reason_part: str) -> None:
    result = classify_message(raw)
    assert result.kind is BounceKind.UNKNOWN
    assert reason_part in result.explanation


def test_deeply_nested_multiparts_do_not_raise() -> None:
    depth = 3000
    head = b"From: MAILER-DAEMON@example.com\nMIME-Version: 1.0\n"
    body = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\n\n--b%d\n' % (i, i) for i in range(depth)
    )
    result = classify_message(head + body + b"Content-Type: text/plain\n\n550 5.1.1 x\n")
    assert isinstance(result.kind, BounceKind)


def test_a_dsn_part_in_base64_is_decoded_before_reading_its_fields() -> None:
    import base64

    fields = b"Reporting-MTA: dns; mx.example.org\n\nFinal-Recipient: rfc822; ann@example.org\n"
    fields += b"Action: failed\nStatus: 5.1.1\n"
    raw = (
        b"From: MAILER-DAEMON@example.org\nMIME-Version: 1.0\n"
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="X"\n\n'
        b"--X\nContent-Type: text/plain\n\nfailed\n--X\n"
        b"Content-Type: message/delivery-status\nContent-Transfer-Encoding: base64\n\n"
        + base64.encodebytes(fields)
        + b"--X--\n"
    )
    result = classify_message(raw)
    assert (result.kind, result.recipient, result.status) == (
        BounceKind.HARD,
        "ann@example.org",
        "5.1.1",
    )


def test_a_dsn_whose_mime_structure_was_lost_is_read_from_its_text() -> None:
    raw = (
        b"From: MAILER-DAEMON@example.org\nSubject: Returned mail\n\n"
        b"Delivery failed.\n\nReporting-MTA: dns; mx.example.org\n\n"
        b"Final-Recipient: rfc822; ann@example.org\nAction: failed\nStatus: 5.2.2\n"
    )
    result = classify_message(raw)
    assert (result.kind, result.recipient, result.status) == (
        BounceKind.SOFT,
        "ann@example.org",
        "5.2.2",
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_classify_message_never_raises_on_arbitrary_bytes(raw: bytes) -> None:
    result = classify_message(raw)
    assert isinstance(result.kind, BounceKind)
    assert isinstance(result.explanation, str)


_MIME_PIECES = st.sampled_from(
    [
        b"From: MAILER-DAEMON@example.org\n",
        b'Content-Type: multipart/report; report-type=delivery-status; boundary="B"\n',
        b'Content-Type: multipart/report; report-type=feedback-report; boundary="B"\n',
        b"Content-Type: message/delivery-status\n",
        b"Content-Type: message/feedback-report\n",
        b"Content-Type: message/rfc822\n",
        b"Content-Type: text/plain; charset=x-nonsense\n",
        b"Content-Transfer-Encoding: base64\n",
        b"Content-Transfer-Encoding: quoted-printable\n",
        b"Final-Recipient: rfc822; a@example.org\n",
        b"Action: failed\n",
        b"Status: 5.1.1\n",
        b"Feedback-Type: abuse\n",
        b"Diagnostic-Code: smtp; 550 5.1.1 nope\n",
        b"--B\n",
        b"--B--\n",
        b"\n",
        b"=?utf-8?q?=FF?=\n",
        b"\xff\xfe\x00",
    ]
)


@settings(max_examples=300, deadline=None)
@given(st.lists(_MIME_PIECES, max_size=40))
def test_classify_message_never_raises_on_shuffled_report_pieces(pieces: list[bytes]) -> None:
    result = classify_message(b"".join(pieces))
    assert isinstance(result.kind, BounceKind)


# --- rules added after the held-out corpus (fixtures/bounces-heldout) -------------------------


def _dsn(action: str, status: str, diagnostic: str) -> bytes:
    return (
        "From: MAILER-DAEMON@mail.example.org\nSubject: Returned mail\nMIME-Version: 1.0\n"
        'Content-Type: multipart/report; report-type=delivery-status; boundary="b"\n\n'
        "--b\nContent-Type: text/plain\n\nReport.\n\n"
        "--b\nContent-Type: message/delivery-status\n\nReporting-MTA: dns; mail.example.org\n\n"
        f"Final-Recipient: rfc822; amy@example.com\nAction: {action}\nStatus: {status}\n"
        f"Diagnostic-Code: smtp; {diagnostic}\n\n--b--\n"
    ).encode()


def test_a_delay_for_reputation_is_a_block_and_a_delay_for_greylisting_is_soft() -> None:
    reputation = _dsn("delayed", "4.7.28", "421-4.7.28 unusual rate of unsolicited mail")
    greylisted = _dsn("delayed", "4.7.1", "450 4.7.1 Greylisted, please try again later")
    assert classify_message(reputation).kind is BounceKind.BLOCK
    assert classify_message(greylisted).kind is BounceKind.SOFT


def test_a_status_the_reporting_mta_inferred_does_not_outrank_the_servers_policy_words() -> None:
    # Sendmail reports 5.1.1 for any refused RCPT whose reply carried no enhanced code.
    inferred = classify_message(_dsn("failed", "5.1.1", "550 Relay denied"))
    stated = classify_message(_dsn("failed", "5.1.1", "550 5.1.1 User unknown"))
    assert (inferred.kind, inferred.status) == (BounceKind.BLOCK, "5.1.1")
    assert stated.kind is BounceKind.HARD


def test_an_ses_notification_wrapped_by_sns_email_json_is_unwrapped() -> None:
    inner = (
        '{"notificationType":"Bounce","bounce":{"bounceType":"Permanent","bounceSubType":'
        '"General","bouncedRecipients":[{"emailAddress":"amy@example.com","status":"5.1.1",'
        '"diagnosticCode":"smtp; 550 5.1.1 user unknown"}]},"mail":{"headers":[]}}'
    )
    body = '{\n  "Type" : "Notification",\n  "Message" : ' + json.dumps(inner) + "\n}\n"
    raw = (
        "From: AWS Notifications <no-reply@sns.amazonaws.example.com>\n"
        "Subject: AWS Notification Message\n\n" + body
    ).encode()
    result = classify_message(raw)
    assert (result.kind, result.recipient, result.status) == (
        BounceKind.HARD,
        "amy@example.com",
        "5.1.1",
    )


def test_a_person_forwarding_a_bounce_is_not_a_bounce() -> None:
    raw = (
        b"From: Leo <leo@example.com>\nSubject: Fwd: Undelivered Mail Returned to Sender\n\n"
        b"Why did I get this?\n\n> <help@example.org>: host mx said: 550 5.1.1 User unknown\n"
    )
    assert classify_message(raw).kind is BounceKind.UNKNOWN


def test_a_bounce_only_by_its_subject_needs_a_quoted_reply_code_to_decide() -> None:
    parcel = (
        b"From: Parcels <notify@parcels.example.com>\nSubject: Delivery failed: your parcel\n\n"
        b"Delivery failed: recipient unknown at address. We will try again tomorrow.\n"
    )
    quoted = (
        b"From: Gateway <gw@relay.example.com>\nSubject: Delivery failed\n\n"
        b"Your message to amy@example.com could not be delivered.\n"
        b"Server response: 550 5.1.1 User unknown\n"
    )
    assert classify_message(parcel).kind is BounceKind.UNKNOWN
    result = classify_message(quoted)
    assert (result.kind, result.recipient) == (BounceKind.HARD, "amy@example.com")


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        ("Empfänger unbekannt", BounceKind.HARD),
        ("Das Postfach des Empfängers ist voll", BounceKind.SOFT),
        ("Utilisateur inconnu", BounceKind.HARD),
        ("La boîte aux lettres du destinataire est pleine", BounceKind.SOFT),
        ("Usuario desconocido", BounceKind.HARD),
        ("宛先のメールアドレスが存在しません", BounceKind.HARD),
        ("メールボックスの容量がいっぱいです", BounceKind.SOFT),
    ],
)
def test_bounce_wording_in_other_languages_is_understood(line: str, kind: BounceKind) -> None:
    raw = (
        "From: MAILER-DAEMON@mail.example.de\nX-Failed-Recipients: amy@example.de\n"
        "Subject: Undelivered\nContent-Type: text/plain; charset=utf-8\n\n"
        f"amy@example.de\n    {line}\n"
    ).encode()
    assert classify_message(raw).kind is kind


@pytest.mark.parametrize(
    ("header", "body"),
    [
        ("Auto-Submitted: auto-generated\n", "Your request (#123) has been received.\n"),
        ("Precedence: bulk\n", "This is an automatically generated reply. Ticket 123 is open.\n"),
    ],
)
def test_a_machine_written_answer_to_our_message_is_an_auto_reply(header: str, body: str) -> None:
    raw = (
        "From: Helpdesk <help@example.net>\nSubject: [Ticket#123] Your weekly picks\n"
        f"In-Reply-To: <pw-1@shop.example.com>\n{header}\n{body}"
    ).encode()
    result = classify_message(raw)
    assert (result.kind, result.recipient) == (BounceKind.AUTO_REPLY, "help@example.net")


def test_a_persons_reply_to_our_message_is_not_an_auto_reply() -> None:
    raw = (
        b"From: Ana <ana@example.net>\nSubject: Re: Your weekly picks\n"
        b"In-Reply-To: <pw-1@shop.example.com>\n\nDo you ship to Portugal?\n"
    )
    assert classify_message(raw).kind is BounceKind.UNKNOWN
