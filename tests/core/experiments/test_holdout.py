"""Program holdouts: a persistent random share never mailed, and the program's incremental lift."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from experiment_seed import add_contacts, add_template, expose, new_experiment

from postwise.analytics.sinks import StoredEvent
from postwise.analytics.sql_sink import SqlSink
from postwise.db.models import Experiment, Message, MessageStatus
from postwise.errors import ValidationError
from postwise.experiments.arms import HOLDOUT, Arms
from postwise.experiments.holdout import holdout_counts
from postwise.experiments.service import experiment_report, stop_experiment
from postwise.runtime import Runtime

PROGRAM = [{"name": "welcome", "weight": 1.0}]


def _conversions(runtime: Runtime, contacts: list[int], at: datetime, tag: str) -> None:
    SqlSink(runtime.engine).write_batch(
        [
            StoredEvent(f"conv-{tag}-{c}", "conversion", at, contact_id=c)  # no attribution
            for c in contacts
        ]
    )


def test_a_single_variant_needs_a_holdout(runtime: Runtime) -> None:
    with pytest.raises(ValidationError, match="program measured against its holdout"):
        new_experiment(runtime, variants=PROGRAM, target="trigger")
    with pytest.raises(ValidationError, match="program measured against its holdout"):
        new_experiment(runtime, variants=PROGRAM, holdout=0.05, rollout_fraction=0.5)


def test_the_holdout_is_persistent_across_sends_and_never_mailed(runtime: Runtime) -> None:
    template_id = add_template(runtime)
    experiment_id = new_experiment(runtime, variants=PROGRAM, holdout=0.1, target="trigger")
    with runtime.session() as session:
        experiment = session.get(Experiment, experiment_id)
        assert experiment is not None
        arms = Arms.load(session, experiment, template_id, 1)
        first = {c: arms.assign(c)[0] for c in range(1, 3001)}
        again = Arms.load(session, experiment, template_id, 1)
        assert {c: again.assign(c)[0] for c in range(1, 3001)} == first
    held = sum(v == HOLDOUT for v in first.values())
    assert 240 <= held <= 360  # 10% of 3,000

    from postwise.delivery.dispatch import submit_send
    from postwise.delivery.requests import SendRequest

    for contact in add_contacts(runtime, 40):
        for send in range(2):  # a trigger firing twice: the same answer each time
            result = submit_send(
                runtime,
                SendRequest(
                    contact, template_id, f"t:{contact}:{send}", experiment_id=experiment_id
                ),
            )
            with runtime.session() as session:
                row = session.get(Message, result.message_id)
                assert row is not None
                if first.get(contact) == HOLDOUT or (
                    contact not in first and row.last_error == HOLDOUT
                ):
                    assert row.status == MessageStatus.SKIPPED.value and row.variant is None


def test_the_report_measures_incremental_conversions_against_the_holdout(
    runtime: Runtime,
) -> None:
    experiment_id = new_experiment(
        runtime,
        name="welcome-program",
        variants=PROGRAM,
        holdout=0.2,
        target="trigger",
        metric="conversion",
        min_exposures=50,
    )
    contacts = add_contacts(runtime, 3000)
    with runtime.session() as session:
        experiment = session.get(Experiment, experiment_id)
        assert experiment is not None
        arms = Arms.load(session, experiment, 1, 1)
        groups: dict[str, list[int]] = {HOLDOUT: [], "welcome": []}
        for contact in contacts:
            groups[str(arms.assign(contact)[0])].append(contact)
    sent = datetime.now(UTC) - timedelta(hours=2)
    expose(runtime, experiment_id, dict.fromkeys(groups["welcome"], "welcome"), at=sent)
    expose(
        runtime,
        experiment_id,
        dict.fromkeys(groups[HOLDOUT]),  # type: ignore[arg-type]
        status=MessageStatus.SKIPPED.value,
        at=sent,
    )
    # The program converts 30% of its contacts, the holdout 5%; a conversion before the first
    # send counts for nobody.
    welcome, holdout = groups["welcome"], groups[HOLDOUT]
    _conversions(runtime, welcome[: int(0.3 * len(welcome))], datetime.now(UTC), "p")
    _conversions(runtime, holdout[: int(0.05 * len(holdout))], datetime.now(UTC), "h")
    _conversions(runtime, holdout[-50:], sent - timedelta(days=1), "old")

    with runtime.session() as session:
        experiment = session.get(Experiment, experiment_id)
        assert experiment is not None
        counts = holdout_counts(session.connection(), experiment)
    assert counts[0].name == "holdout" and counts[0].exposures == len(holdout)
    assert counts[0].conversions == int(0.05 * len(holdout))
    assert counts[1].exposures == len(welcome)

    report = experiment_report(runtime, experiment_id)
    program = report["holdout"]
    assert program["incremental"] is True and report["winner"] is None
    assert program["incremental_conversions"] == pytest.approx(
        (0.3 - int(0.05 * len(holdout)) / len(holdout)) * len(welcome), rel=0.02
    )
    assert "always-valid" in program["analysis"]["guarantees"]
    # The look is recorded with its own sequential state and the holdout goes on.
    again = experiment_report(runtime, experiment_id)
    assert again["experiment"]["status"] == "running" and again["experiment"]["looks"] == 2
    stopped = stop_experiment(runtime, experiment_id)
    assert stopped["holdout"]["incremental"] is True


def test_a_recurring_campaign_holds_back_the_same_contacts_at_every_send(runtime: Runtime) -> None:
    from sqlmodel import select

    from postwise.delivery.campaigns import create_campaign
    from postwise.delivery.dispatch import dispatch_campaign

    template_id = add_template(runtime)
    add_contacts(runtime, 300)
    experiment_id = new_experiment(
        runtime, name="newsletter-holdout", variants=PROGRAM, holdout=0.1, metric="conversion"
    )
    held: list[set[int]] = []
    for week in range(2):
        with runtime.session() as session:
            campaign = create_campaign(
                session,
                name=f"newsletter week {week}",
                template=template_id,
                experiment_id=experiment_id,
            )
            campaign_id = campaign.id
        assert campaign_id is not None
        dispatch_campaign(runtime, campaign_id)
        with runtime.session() as session:
            rows = session.exec(select(Message).where(Message.campaign_id == campaign_id)).all()
        assert len(rows) == 300
        held.append({r.contact_id for r in rows if r.last_error == HOLDOUT})
        assert all(r.variant in (None, "welcome") for r in rows)
    assert held[0] == held[1] and 15 <= len(held[0]) <= 45
    report = experiment_report(runtime, experiment_id)
    assert report["holdout"]["analysis"]["variants"][0]["exposures"] == len(held[0])
