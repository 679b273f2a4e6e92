"""Automatic rollout through the real pipeline: dispatch, RQ, SMTP; the reserve gets the winner."""

from __future__ import annotations

import email
import json
from collections import Counter
from collections.abc import Iterator
from email.policy import default as default_policy
from typing import Any

import pytest
import sqlalchemy as sa
from click.testing import CliRunner
from experiment_seed import (
    add_campaign,
    add_contacts,
    add_template,
    assigned,
    expose,
    new_experiment,
    record,
    split,
)
from sqlmodel import col, select

from postwise.cli import cli
from postwise.db.models import Campaign, Experiment, Message
from postwise.delivery.dispatch import dispatch_campaign
from postwise.delivery.rollouts import run_rollout
from postwise.delivery.worker import drain
from postwise.experiments.assignment import VariantAssigner
from postwise.experiments.service import experiment_report
from postwise.runtime import Runtime
from postwise.testing.smtp import FaultySmtpServer

CONTACTS = 600
HOLDOUT = 0.1
ROLLOUT = 0.5


@pytest.fixture
def smtp_server() -> Iterator[FaultySmtpServer]:
    with FaultySmtpServer() as server:
        yield server


@pytest.fixture
def delivery(make_settings: Any, smtp_server: FaultySmtpServer) -> Iterator[Runtime]:
    """A runtime on this test's database and Redis whose SMTP provider sends to the test server."""
    runtime = Runtime(
        make_settings(
            smtp_host="127.0.0.1",
            smtp_port=smtp_server.port,
            smtp_starttls="off",
            smtp_timeout=5.0,
            frequency_cap="off",
            batch_size=50,
        )
    )
    yield runtime
    runtime.close()


def _mailbox(server: FaultySmtpServer) -> dict[str, list[str]]:
    """Recipient address -> subjects of the messages it received."""
    received: dict[str, list[str]] = {}
    for message in server.accepted:
        subject = str(email.message_from_bytes(message.content, policy=default_policy)["Subject"])
        for rcpt in message.rcpt_tos:
            received.setdefault(rcpt, []).append(subject)
    return received


def _send_test(runtime: Runtime) -> tuple[int, list[int]]:
    """A campaign with an A/B subject test, sent to its test cell; (experiment, contacts)."""
    template_id = add_template(runtime, subject="Spring news")
    contacts = add_contacts(runtime, CONTACTS)
    campaign_id = add_campaign(runtime, template_id)
    experiment_id = new_experiment(
        runtime,
        campaign_id=campaign_id,
        variants=[
            {"name": "A", "weight": 0.5},
            {"name": "B", "weight": 0.5, "subject": "Spring is here"},
        ],
        holdout=HOLDOUT,
        rollout_fraction=ROLLOUT,
    )
    dispatch_campaign(runtime, campaign_id)
    drain(runtime)
    return experiment_id, contacts


def _cells(experiment_id: int, contacts: list[int], arms: dict[int, str]) -> dict[str, set[int]]:
    bucket = VariantAssigner(experiment_id, {"_": 1.0}).bucket
    floor = round(HOLDOUT * 2**64)
    held = [c for c in contacts if c not in arms]
    return {
        "test": set(arms),
        "holdout": {c for c in held if bucket(c) < floor},
        "reserve": {c for c in held if bucket(c) >= floor},
    }


def _address(contacts: list[int], contact: int) -> str:
    return f"person{contacts.index(contact)}@example.org"


def test_the_winner_is_rolled_out_to_the_held_back_audience_through_dispatch(
    delivery: Runtime, smtp_server: FaultySmtpServer
) -> None:
    experiment_id, contacts = _send_test(delivery)
    arms = assigned(delivery, experiment_id, contacts)
    cells = _cells(experiment_id, contacts, arms)
    assert len(smtp_server.accepted) == len(cells["test"])
    assert 0.3 < len(cells["reserve"]) / CONTACTS < 0.7 and cells["holdout"]

    by_arm = split(arms)
    record(delivery, experiment_id, by_arm["A"][:4], "A")
    record(delivery, experiment_id, by_arm["B"][:8], "B")
    early = experiment_report(delivery, experiment_id)
    assert early["winner"] is None and early["experiment"]["rollout"] is None

    record(delivery, experiment_id, by_arm["B"][8:70], "B")
    decided = experiment_report(delivery, experiment_id)
    assert decided["winner"] == "B"
    assert decided["experiment"]["rollout"]["status"] == "queued"
    exposures = [v["exposures"] for v in decided["analysis"]["variants"]]

    drain(delivery)  # the workers: the rollout job, then the batches its dispatch queued
    mailbox = _mailbox(smtp_server)
    for contact in cells["reserve"]:
        assert mailbox[_address(contacts, contact)] == ["Spring is here"]
    for contact in cells["test"]:
        expected = "Spring is here" if arms[contact] == "B" else "Spring news"
        assert mailbox[_address(contacts, contact)] == [expected]
    for contact in cells["holdout"]:
        assert _address(contacts, contact) not in mailbox
    assert len(smtp_server.accepted) == len(cells["test"]) + len(cells["reserve"])

    with delivery.session() as session:
        experiment = session.get(Experiment, experiment_id)
        assert experiment is not None
        rollout = experiment.state["rollout"]
        assert rollout["status"] == "done" and rollout["contacts"] == len(cells["reserve"])
        campaign = session.get(Campaign, rollout["campaign_id"])
        assert campaign is not None and campaign.experiment_id is None
        assert campaign.template_version == 2  # the version B was sent with
    again = experiment_report(delivery, experiment_id)
    assert [v["exposures"] for v in again["analysis"]["variants"]] == exposures

    assert run_rollout(delivery, experiment_id)["status"] == "done"  # a repeated job: no-op
    drain(delivery)
    assert len(smtp_server.accepted) == len(cells["test"]) + len(cells["reserve"])


def test_stopping_without_a_winner_can_ship_a_variant_to_the_reserve_from_the_cli(
    delivery: Runtime, smtp_server: FaultySmtpServer
) -> None:
    experiment_id, contacts = _send_test(delivery)
    cells = _cells(experiment_id, contacts, assigned(delivery, experiment_id, contacts))
    result = CliRunner().invoke(
        cli,
        ["experiments", "stop", str(experiment_id), "--ship", "A", "--drain", "--json"],
        obj={"runtime": delivery},
    )
    assert result.exit_code == 0, result.output
    stopped = json.loads(result.output)
    assert stopped["winner"] is None
    assert stopped["experiment"]["rollout"]["reason"] == "shipped"
    mailbox = _mailbox(smtp_server)  # --drain ran the rollout in this process
    assert {s for c in cells["reserve"] for s in mailbox[_address(contacts, c)]} == {"Spring news"}
    assert Counter(len(subjects) for subjects in mailbox.values()) == {1: len(mailbox)}


def test_the_rollout_waits_until_the_campaign_has_finished_dispatching(runtime: Runtime) -> None:
    template_id = add_template(runtime)
    campaign_id = add_campaign(runtime, template_id)
    experiment_id = new_experiment(runtime, campaign_id=campaign_id, rollout_fraction=0.5)
    contacts = add_contacts(runtime, 800)
    arms = assigned(runtime, experiment_id, contacts)
    expose(runtime, experiment_id, arms, campaign_id=campaign_id, template_id=template_id)
    by_arm = split(arms)
    record(runtime, experiment_id, by_arm["A"][:3], "A")
    record(runtime, experiment_id, by_arm["B"][:60], "B")
    decided = experiment_report(runtime, experiment_id)
    assert decided["winner"] == "B"
    waiting = decided["experiment"]["rollout"]
    assert waiting["status"] == "waiting" and f"campaign {campaign_id}" in waiting["detail"]

    with runtime.session() as session:
        campaign = session.get(Campaign, campaign_id)
        assert campaign is not None
        campaign.counts = {**campaign.counts, "dispatched": True}
        session.add(campaign)
    queued = experiment_report(runtime, experiment_id)
    assert queued["experiment"]["rollout"]["status"] == "queued"
    done = run_rollout(runtime, experiment_id)
    assert done["status"] == "done" and done["contacts"] == 0  # nobody was held back here
    with runtime.session() as session:
        rolled = session.execute(
            sa.select(sa.func.count()).where(col(Message.campaign_id) == done["campaign_id"])
        ).scalar_one()
        names = session.exec(select(Campaign.name).where(Campaign.id == done["campaign_id"]))
        assert rolled == 0 and names.one() == "subject-test: rollout of B"


def test_the_rollout_to_a_consent_list_needs_that_consent(
    delivery: Runtime, smtp_server: FaultySmtpServer
) -> None:
    # The experiment's campaign mails the "newsletter" list; a held-back contact who withdraws
    # that consent before the winner is declared must not get the rollout.
    from postwise.compliance import consent
    from postwise.db.models import Segment, SegmentMember

    template_id = add_template(delivery, subject="Spring news")
    contacts = add_contacts(delivery, CONTACTS)
    campaign_id = add_campaign(delivery, template_id)
    with delivery.session() as session:
        for contact in contacts:
            consent.grant_consent(session, delivery.settings, contact, "newsletter", source="t")
        segment = Segment(name="newsletter", kind="static", consent_purpose="newsletter")
        session.add(segment)
        session.flush()
        session.add_all(SegmentMember(segment_id=segment.id, contact_id=c) for c in contacts)
        campaign = session.get(Campaign, campaign_id)
        assert campaign is not None
        campaign.segment_id = segment.id
        session.add(campaign)
    experiment_id = new_experiment(
        delivery,
        campaign_id=campaign_id,
        variants=[{"name": "A", "weight": 0.5}, {"name": "B", "weight": 0.5, "subject": "Hi"}],
        holdout=HOLDOUT,
        rollout_fraction=ROLLOUT,
    )
    dispatch_campaign(delivery, campaign_id)
    drain(delivery)
    arms = assigned(delivery, experiment_id, contacts)
    cells = _cells(experiment_id, contacts, arms)
    withdrawn = sorted(cells["reserve"])[:5]
    with delivery.session() as session:
        for contact in withdrawn:
            consent.withdraw_consent(session, contact, "newsletter", source="link")
    by_arm = split(arms)
    record(delivery, experiment_id, by_arm["A"][:4], "A")
    record(delivery, experiment_id, by_arm["B"][:70], "B")
    assert experiment_report(delivery, experiment_id)["winner"] == "B"
    drain(delivery)
    mailbox = _mailbox(smtp_server)
    for contact in withdrawn:
        assert _address(contacts, contact) not in mailbox
    still = cells["reserve"] - set(withdrawn)
    assert all(mailbox[_address(contacts, c)] == ["Hi"] for c in still)
