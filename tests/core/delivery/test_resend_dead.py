"""Sending dead letters again is the operator's call; ``--in-doubt-only`` picks every message in
doubt, whether its worker stopped while the provider had it or the provider's answer was lost."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

from click.testing import CliRunner
from delivery_helpers import add_campaign, add_contacts, add_template, ledger, statuses

from postwise.cli import cli
from postwise.db.models import utcnow
from postwise.delivery.dispatch import dispatch_campaign
from postwise.delivery.journal import Journal
from postwise.delivery.ledger import MESSAGE, campaign_message_id
from postwise.delivery.outcomes import IN_DOUBT_PREFIX, IN_DOUBT_REASON
from postwise.delivery.recovery import sweep
from postwise.delivery.worker import drain
from postwise.runtime import Runtime
from postwise.testing.smtp import FaultySmtpServer


def _crash_while_sending(runtime: Runtime, message_id: str) -> None:
    """Leave ``message_id`` as a worker killed while the relay had it would."""
    token = "0badc0de" * 4
    with runtime.engine.begin() as connection:
        connection.execute(
            MESSAGE.update()
            .where(MESSAGE.c.id == message_id)
            .values(
                status="sending", claim_token=token, claimed_until=utcnow() - timedelta(seconds=5)
            )
        )
    Journal(runtime.redis, token, ttl=60).write(started=[message_id])


def _cli_env(runtime: Runtime) -> dict[str, str]:
    settings = runtime.settings
    return {
        "POSTWISE_DATA_DIR": str(settings.data_dir),
        "POSTWISE_DATABASE_URL": settings.resolved_database_url,
        "POSTWISE_REDIS_URL": settings.redis_url,
        "POSTWISE_SECRET_KEY": settings.secret_key.get_secret_value(),
        "POSTWISE_LOG_LEVEL": "WARNING",
    }


def test_in_doubt_only_resends_lost_answers_and_crashed_attempts_but_no_other_dead_letter(
    make_runtime: Any, smtp_server: FaultySmtpServer
) -> None:
    runtime: Runtime = make_runtime(max_attempts=1)
    contacts = add_contacts(runtime, 4)
    campaign = add_campaign(runtime, add_template(runtime))
    dispatch_campaign(runtime, campaign)
    lost, crashed, fine, refused = (campaign_message_id(campaign, c) for c in contacts)
    _crash_while_sending(runtime, crashed)
    assert sweep(runtime).in_doubt == 1
    smtp_server.drop_connections(1, stage="after_accept")
    smtp_server.defer_recipients("user3@example.org", seconds=60)
    drain(runtime)
    assert statuses(runtime, campaign_id=campaign) == {
        lost: "dead",
        crashed: "dead",
        fine: "accepted",
        refused: "dead",
    }
    # The two kinds of doubt have different reasons with the same beginning.
    assert ledger(runtime, crashed).last_error == IN_DOUBT_REASON
    lost_reason = ledger(runtime, lost).last_error or ""
    assert lost_reason.startswith(IN_DOUBT_PREFIX) and lost_reason != IN_DOUBT_REASON
    assert (ledger(runtime, refused).last_error or "").startswith("gave up after 1 attempts")

    result = CliRunner().invoke(
        cli,
        ["campaigns", "resend-dead", str(campaign), "--in-doubt-only", "--yes"],
        env=_cli_env(runtime),
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert "2 messages queued again" in result.output
    assert statuses(runtime, campaign_id=campaign)[refused] == "dead"
    smtp_server.clear_faults()
    drain(runtime)
    assert statuses(runtime, campaign_id=campaign) == {
        lost: "accepted",
        crashed: "accepted",
        fine: "accepted",
        refused: "dead",
    }
    # The relay had taken the lost answer's message: it now has it twice, the trade-off the
    # operator chose. The crashed attempt's message had not reached it.
    assert Counter(m.rcpt_tos[0] for m in smtp_server.accepted) == {
        "user0@example.org": 2,
        "user1@example.org": 1,
        "user2@example.org": 1,
    }


def test_the_help_of_resend_dead_names_both_kinds_of_doubt() -> None:
    result = CliRunner().invoke(cli, ["campaigns", "resend-dead", "--help"])
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "worker stopped while the provider had them" in text
    assert "answer was lost" in text
