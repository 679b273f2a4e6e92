"""``smtp_ca_file``: trusting a relay whose certificate comes from a private CA."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from postwise.delivery.plugin import smtp_provider
from postwise.delivery.provider import Outcome, OutgoingMessage
from postwise.errors import ConfigurationError
from postwise.testing.smtp import FaultySmtpServer, self_signed_certificate, server_tls_context

MESSAGE = OutgoingMessage(
    message_id="ca-1",
    sender="news@example.com",
    recipient="ann@example.org",
    raw=b"From: news@example.com\r\nTo: ann@example.org\r\nSubject: hi\r\n\r\nhello\r\n",
)


def test_a_relay_signed_by_the_configured_ca_is_trusted_and_others_are_not(
    make_settings: Any, tmp_path: Path
) -> None:
    certificate, key = self_signed_certificate()
    ca_file = tmp_path / "relay-ca.pem"
    ca_file.write_bytes(certificate)
    other_ca = tmp_path / "other-ca.pem"
    other_ca.write_bytes(self_signed_certificate()[0])
    with FaultySmtpServer(
        tls_context=server_tls_context(certificate, key), require_starttls=True
    ) as server:
        base = {"smtp_host": "127.0.0.1", "smtp_port": server.port, "smtp_starttls": "required"}
        trusted = smtp_provider(make_settings(**base, smtp_ca_file=str(ca_file)), {})
        try:
            assert [r.outcome for r in trusted.send_batch([MESSAGE])] == [Outcome.ACCEPTED]
        finally:
            trusted.close()
        assert server.accepted[0].tls
        # provider_options.smtp.ca_file wins over the setting; the wrong CA fails verification.
        wrong = smtp_provider(
            make_settings(**base, smtp_ca_file=str(ca_file)), {"ca_file": other_ca}
        )
        try:
            [result] = wrong.send_batch([MESSAGE])
        finally:
            wrong.close()
        assert result.outcome is Outcome.DEFERRED  # never handed over: no attempt used
        assert "certificate verify failed" in result.reason
    assert len(server.accepted) == 1


def test_a_missing_or_unreadable_ca_file_is_a_configuration_error(
    make_settings: Any, tmp_path: Path
) -> None:
    # Only processes that send read the file (the API server and collectors need not have it).
    missing = make_settings(smtp_ca_file=str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigurationError, match="cannot load CA certificates"):
        smtp_provider(missing, {})
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ConfigurationError, match="cannot load CA certificates"):
        smtp_provider(make_settings(smtp_ca_file=str(garbage)), {})
    assert make_settings(smtp_ca_file="").smtp_ca_file is None


def test_a_worker_whose_provider_cannot_be_built_holds_the_mail_instead_of_losing_it(
    make_settings: Any, tmp_path: Path
) -> None:
    # smtp_ca_file is read only by sending processes, so a worker meets a missing file when it
    # builds the provider: the batch waits (no attempt used, no dead letter) until it is fixed.
    from delivery_helpers import add_campaign, add_contacts, add_template, ledger, statuses

    from postwise.delivery.dispatch import dispatch_campaign
    from postwise.delivery.ledger import campaign_message_id
    from postwise.delivery.worker import drain
    from postwise.runtime import Runtime

    runtime = Runtime(
        make_settings(smtp_ca_file=str(tmp_path / "missing.pem"), frequency_cap="off")
    )
    try:
        contacts = add_contacts(runtime, 2)
        campaign = add_campaign(runtime, add_template(runtime))
        dispatch_campaign(runtime, campaign)
        drain(runtime, wait_for_scheduled=False)
        assert set(statuses(runtime).values()) == {"queued"}
        row = ledger(runtime, campaign_message_id(campaign, contacts[0]))
        assert row.attempts == 0
        assert "provider 'smtp' is misconfigured" in (row.last_error or "")
        assert "cannot load CA certificates" in (row.last_error or "")
    finally:
        runtime.close()
