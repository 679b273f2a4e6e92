"""Guardrails: the one-sided always-valid test, its false stops under peeking, and the stop.

The formula of the half-normal mixture is checked against scipy's numerical integration of the
mixture it stands for; a harmful arm found by a look is stopped in the experiment's state, and
delivery's assignment (``Arms``) sends nobody that arm afterwards.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from experiment_seed import (
    add_contacts,
    add_template,
    assigned,
    expose,
    new_experiment,
    record,
    split,
)
from scipy import integrate, stats

from postwise.db.models import Experiment, Message
from postwise.errors import StatsError
from postwise.experiments.arms import Arms
from postwise.experiments.guardrails import (
    GUARDRAIL_TUNING,
    MIN_EVENTS,
    check_guardrails,
    one_sided_p_value,
)
from postwise.experiments.sequential import rho_squared
from postwise.experiments.service import experiment_report
from postwise.experiments.stats import VariantData, analyze
from postwise.runtime import Runtime


@pytest.mark.parametrize(("z", "n"), [(1.0, 4000.0), (2.5, 10000.0), (3.3, 500.0), (-1.0, 2000.0)])
def test_the_closed_form_is_the_half_normal_mixture_integrated_by_scipy(z: float, n: float) -> None:
    rho2 = rho_squared(0.05, 5000.0)
    # Standardised units: the statistic after n units is S = z sqrt(n), drift per unit u.
    s = z * math.sqrt(n)

    def integrand(u: float) -> float:
        prior = 2 * stats.norm.pdf(u, scale=math.sqrt(rho2))
        return float(prior * math.exp(u * s - u * u * n / 2))

    lr, _ = integrate.quad(integrand, 0, 20 * math.sqrt(rho2), limit=200)
    assert one_sided_p_value(z, n, rho2) == pytest.approx(min(1.0, 1 / lr), rel=1e-6)


def test_a_harmless_arm_is_stopped_at_most_alpha_of_the_time_under_peeking() -> None:
    rng = np.random.default_rng(31)
    replicates, looks, step, rate = 1500, 40, 1000, 0.004  # unsubscribe rate 0.4%
    harm_a = np.cumsum(rng.binomial(step, rate, (replicates, looks)), axis=1)
    harm_b = np.cumsum(rng.binomial(step, rate, (replicates, looks)), axis=1)
    stops = 0
    for r in range(replicates):
        for k in range(looks):
            n = (k + 1) * step
            counts = {
                "unsubscribe": [
                    VariantData("A", n, int(harm_a[r, k])),
                    VariantData("B", n, int(harm_b[r, k])),
                ]
            }
            if check_guardrails(counts, alpha=0.05)[0].harmful:
                stops += 1
                break
    assert float(stats.beta.ppf(0.995, stops + 1, replicates - stops)) <= 0.05


def test_a_real_harm_is_found_and_worded() -> None:
    counts = {
        "unsubscribe": [VariantData("A", 20000, 40), VariantData("B", 20000, 110)],
        "complaint": [VariantData("A", 20000, 2), VariantData("B", 20000, 3)],
        "hard_bounce": [VariantData("A", 20000, 30), VariantData("B", 20000, 10)],
    }
    results = {r.metric: r for r in check_guardrails(counts, alpha=0.05)}
    assert results["unsubscribe"].harmful
    assert results["unsubscribe"].level == pytest.approx(0.05 / 3)
    assert "guardrail unsubscribe" in (results["unsubscribe"].reason or "")
    assert not results["complaint"].harmful and not results["hard_bounce"].harmful
    # Fewer bounces is not a harm, however clear: the test is one-sided.
    assert results["hard_bounce"].p_value == 1.0


def test_too_few_events_never_stop_an_arm() -> None:
    counts = {"complaint": [VariantData("A", 50000, 0), VariantData("B", 50000, MIN_EVENTS - 1)]}
    assert not check_guardrails(counts)[0].harmful
    counts = {
        "unsubscribe": [VariantData("A", 100, 1), VariantData("B", 100, 2)],
        "complaint": [VariantData("B", 100, 1), VariantData("A", 100, 2)],
    }
    with pytest.raises(StatsError, match="guardrail 'complaint'"):
        check_guardrails(counts)


def test_outcome_index_tuning_is_small() -> None:
    assert GUARDRAIL_TUNING["outcomes"] < 100


def test_a_stopped_arm_cannot_win_and_leaves_the_ratio_check() -> None:
    variants = [
        VariantData("A", 20000, 600),
        VariantData("B", 9000, 400),
        VariantData("C", 20000, 610),
    ]
    result = analyze(variants, stopped={"B": "guardrail unsubscribe: ..."})
    assert result.winner is None and not result.srm_flagged
    assert result.variant("B").stopped and "stopped: B" in result.reason
    with pytest.raises(StatsError, match="control cannot be stopped"):
        analyze(variants, stopped={"A": "x"})


def test_a_look_stops_a_harmful_arm_and_delivery_sends_it_to_nobody(runtime: Runtime) -> None:
    template_id = add_template(runtime)
    other = add_template(runtime, name="other", subject="Other")
    variants = [{"name": "A", "weight": 0.5}, {"name": "B", "weight": 0.5, "template_id": other}]
    experiment_id = new_experiment(runtime, target="trigger", variants=variants)
    contacts = add_contacts(runtime, 400)
    arms = assigned(runtime, experiment_id, contacts)
    expose(runtime, experiment_id, arms)
    groups = split(arms)
    record(runtime, experiment_id, groups["B"][:40], "B", kind="unsubscribe")
    record(runtime, experiment_id, groups["A"][:1], "A", kind="unsubscribe")
    record(runtime, experiment_id, groups["B"][:3], "B", kind="bounce", kind_="x")

    report = experiment_report(runtime, experiment_id)
    harms = {(g["variant"], g["metric"]): g for g in report["guardrails"]}
    assert harms[("B", "unsubscribe")]["harmful"]
    stopped = report["experiment"]["stopped_arms"]
    assert set(stopped) == {"B"} and "guardrail unsubscribe" in stopped["B"]["reason"]
    assert report["analysis"]["variants"][1]["stopped"].startswith("guardrail unsubscribe")
    assert report["winner"] is None

    with runtime.session() as session:
        experiment = session.get(Experiment, experiment_id)
        assert experiment is not None
        loaded = Arms.load(session, experiment, template_id, 1)
        for contact in groups["B"][:20]:
            variant, template, _ = loaded.assign(contact)
            assert variant is None and template == template_id  # the control's email, no arm
        for contact in groups["A"][:20]:
            assert loaded.assign(contact)[0] == "A"

    from postwise.delivery.dispatch import submit_send
    from postwise.delivery.requests import SendRequest

    contact = groups["B"][-1]
    result = submit_send(
        runtime, SendRequest(contact, template_id, f"t:{contact}", experiment_id=experiment_id)
    )
    with runtime.session() as session:
        row = session.get(Message, result.message_id)
        assert row is not None and row.variant is None and row.template_id == template_id
    # The stop holds at the next look even if the harm rates drift back.
    again = experiment_report(runtime, experiment_id)
    assert set(again["experiment"]["stopped_arms"]) == {"B"}
