"""After an experiment closes, delivery stops splitting: everyone gets one variant."""

from __future__ import annotations

from experiment_seed import add_contacts, add_template, new_experiment

from postwise.db.models import Message
from postwise.delivery.dispatch import submit_send
from postwise.delivery.requests import SendRequest, SubmitResult, SubmitStatus
from postwise.experiments.service import stop_experiment
from postwise.runtime import Runtime


def _send_all(
    runtime: Runtime, experiment_id: int, template_id: int, contacts: list[int], key: str
) -> tuple[list[SubmitResult], list[str | None]]:
    results = [
        submit_send(
            runtime,
            SendRequest(
                contact_id=contact,
                template_id=template_id,
                dedupe_key=f"{key}:{contact}",
                reason="trigger",
                experiment_id=experiment_id,
            ),
        )
        for contact in contacts
    ]
    with runtime.session() as session:
        rows = [session.get(Message, r.message_id) for r in results]
    return results, [row.variant if row is not None else None for row in rows]


def test_a_stopped_experiment_sends_everyone_the_control_and_holds_nobody_back(
    runtime: Runtime,
) -> None:
    runtime.migrate()
    template_id = add_template(runtime)
    contacts = add_contacts(runtime, 300)
    experiment_id = new_experiment(runtime, holdout=0.2)
    running, variants = _send_all(runtime, experiment_id, template_id, contacts, "before")
    # While it runs: both arms, and a holdout that is skipped.
    assert {"A", "B"} <= set(variants)
    assert any(r.reason == "holdout" for r in running)

    stop_experiment(runtime, experiment_id)
    after, variants = _send_all(runtime, experiment_id, template_id, contacts, "after")
    assert all(r.status == SubmitStatus.QUEUED for r in after), {r.reason for r in after}
    assert set(variants) == {"A"}  # the control: the first variant


def test_a_variant_shipped_at_stop_is_what_later_sends_get(runtime: Runtime) -> None:
    runtime.migrate()
    template_id = add_template(runtime)
    contacts = add_contacts(runtime, 100)
    experiment_id = new_experiment(runtime, rollout_fraction=0.5)
    stop_experiment(runtime, experiment_id, ship="B")
    after, variants = _send_all(runtime, experiment_id, template_id, contacts, "after")
    assert all(r.status == SubmitStatus.QUEUED for r in after)
    assert set(variants) == {"B"}
