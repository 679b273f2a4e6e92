"""Trigger definitions are validated completely when saved; errors name the field."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from postwise.db.models import Campaign, Segment, Template
from postwise.errors import ConflictError, NotFoundError, ValidationError
from postwise.runtime import Runtime
from postwise.triggers.definitions import parse_duration
from postwise.triggers.store import TriggerStore, trigger_to_dict


def _create(runtime: Runtime, **definition: Any) -> Any:
    definition.setdefault("name", "t")
    definition.setdefault("event_type", "signup")
    definition.setdefault("action", {"type": "send_template", "template": "welcome"})
    with runtime.session() as session:
        return TriggerStore(session, runtime).create(definition)


def _error(runtime: Runtime, **definition: Any) -> ValidationError:
    with pytest.raises(ValidationError) as caught:
        _create(runtime, **definition)
    return caught.value


def test_bad_condition_configuration_names_the_path_into_the_tree(
    runtime: Runtime, template_id: int
) -> None:
    error = _error(
        runtime,
        conditions={
            "all": [
                {"type": "event_property", "config": {"property": "plan", "value": "pro"}},
                {"type": "time_window", "config": {"hours": 0}},
            ]
        },
    )
    assert error.field == "conditions.all[1].config.hours"
    assert str(error) == "conditions.all[1].config.hours: must be > 0"


def test_unknown_condition_type_is_rejected_listing_the_installed_ones(
    runtime: Runtime, template_id: int
) -> None:
    error = _error(runtime, conditions={"any": [{"type": "vip_customer"}]})
    assert error.field == "conditions.any[0].type"
    assert "unknown condition type 'vip_customer'" in str(error)
    assert "engagement_score" in str(error)


def test_unknown_template_is_rejected(runtime: Runtime, template_id: int) -> None:
    error = _error(runtime, action={"type": "send_template", "template": "no-such-template"})
    assert error.field == "action.template"
    assert "no template 'no-such-template'" in str(error)


def test_unknown_segment_is_rejected_when_saved(runtime: Runtime, template_id: int) -> None:
    error = _error(
        runtime,
        conditions={"all": [{"type": "segment", "config": {"segment": "ghosts"}}]},
    )
    assert error.field == "conditions.all[0].config.segment"


def test_cross_field_configuration_errors_name_the_config(
    runtime: Runtime, template_id: int
) -> None:
    error = _error(runtime, conditions=[{"type": "engagement_score", "config": {}}])
    assert error.field == "conditions.all[0].config"
    assert "'min', 'max'" in str(error)


def test_unknown_keys_in_a_condition_config_are_rejected(
    runtime: Runtime, template_id: int
) -> None:
    error = _error(
        runtime,
        conditions=[{"type": "engagement_score", "config": {"min": 1, "mni": 2}}],
    )
    assert error.field == "conditions.all[0].config.mni"
    assert "not a known field" in str(error)


def test_nesting_all_any_not_is_accepted_and_stored_as_given(
    runtime: Runtime, template_id: int
) -> None:
    tree = {
        "all": [
            {"type": "engagement_score", "config": {"min": 5}},
            {
                "any": [
                    {"type": "contact_attribute", "config": {"attribute": "plan", "value": "pro"}},
                    {
                        "not": {
                            "type": "event_property",
                            "config": {"property": "trial", "value": True},
                        }
                    },
                ]
            },
        ]
    }
    trigger = _create(runtime, conditions=tree)
    assert trigger.conditions == tree


def test_malformed_tree_nodes_name_their_path(runtime: Runtime, template_id: int) -> None:
    error = _error(runtime, conditions={"all": [{"any": []}]})
    assert error.field == "conditions.all[0].any"
    error = _error(runtime, conditions={"all": ["engagement"]})
    assert error.field == "conditions.all[0]"


def test_exit_conditions_need_a_delay(runtime: Runtime, template_id: int) -> None:
    exit_tree = {
        "type": "action_history",
        "config": {"event_type": "purchase", "since_event": True},
    }
    error = _error(runtime, exit_conditions=exit_tree)
    assert error.field == "exit_conditions"
    trigger = _create(runtime, exit_conditions=exit_tree, delay="2h")
    assert trigger.delay_seconds == 7200
    assert trigger.exit_conditions == exit_tree


def test_defaults_cooldown_24h_priority_0_active(runtime: Runtime, template_id: int) -> None:
    trigger = _create(runtime)
    assert trigger.cooldown_seconds == 86400
    assert trigger.priority == 0
    assert trigger.active is True
    assert trigger.action == {"type": "send_template", "template_id": template_id}


def test_many_triggers_on_one_event_type(
    runtime: Runtime, make_trigger: Callable[..., int]
) -> None:
    ids = [make_trigger(priority=p) for p in (1, 5, 3)]
    with runtime.session() as session:
        listed = TriggerStore(session, runtime).list(event_type="signup")
    assert [t.id for t in listed] == [ids[1], ids[2], ids[0]]


def test_duplicate_name_is_a_conflict(runtime: Runtime, template_id: int) -> None:
    _create(runtime, name="welcome-flow")
    with pytest.raises(ConflictError):
        _create(runtime, name="welcome-flow")


def test_enrol_in_campaign_resolves_the_campaign(runtime: Runtime, template_id: int) -> None:
    with runtime.session() as session:
        campaign = Campaign(name="winback", template_id=template_id)
        session.add(campaign)
        session.flush()
        campaign_id = campaign.id
    trigger = _create(runtime, action={"type": "enrol_campaign", "campaign": "winback"})
    assert trigger.action == {"type": "enrol_campaign", "campaign_id": campaign_id}
    error = _error(runtime, name="t2", action={"type": "enrol_campaign", "campaign": "nope"})
    assert error.field == "action.campaign"
    error = _error(runtime, name="t3", action={"type": "enrol_campaign"})
    assert error.field == "action"


def test_replace_pause_resume_and_delete(runtime: Runtime, template_id: int) -> None:
    with runtime.session() as session:
        session.add(Segment(name="vip", kind="static"))
    trigger = _create(runtime, name="flow")
    with runtime.session() as session:
        store = TriggerStore(session, runtime)
        replaced = store.replace(
            "flow",
            {
                "name": "flow",
                "event_type": "purchase",
                "conditions": [{"type": "segment", "config": {"segment": "vip"}}],
                "action": {"type": "send_template", "template_id": template_id},
                "priority": 7,
            },
        )
        assert replaced.id == trigger.id
        assert replaced.event_type == "purchase"
        assert store.set_active(trigger.id, False).active is False
        assert store.set_active("flow", True).active is True
    with runtime.session() as session:
        TriggerStore(session, runtime).delete("flow")
    with runtime.session() as session, pytest.raises(NotFoundError):
        TriggerStore(session, runtime).get("flow")


def test_saving_bumps_the_version_engines_watch(runtime: Runtime, template_id: int) -> None:
    before = int(runtime.redis.get("postwise:triggers:version") or 0)
    _create(runtime)
    assert int(runtime.redis.get("postwise:triggers:version") or 0) == before + 1


def test_transactional_must_match_the_template_kind(runtime: Runtime, template_id: int) -> None:
    error = _error(runtime, transactional=True)
    assert error.field == "transactional"
    assert "template is marketing" in str(error)
    with runtime.session() as session:
        session.add(Template(name="receipt", kind="transactional"))
    trigger = _create(runtime, name="r", action={"type": "send_template", "template": "receipt"})
    assert trigger.transactional is True


def test_stored_definition_round_trips(runtime: Runtime, template_id: int) -> None:
    trigger = _create(runtime, delay="90m", cooldown="2d", priority=3, transactional=False)
    data = trigger_to_dict(trigger)
    data.pop("id")
    data.pop("created_at")
    data.pop("updated_at")
    data["name"] = "copy"
    data["exit_conditions"] = None
    copy = _create(runtime, **data)
    assert (copy.delay_seconds, copy.cooldown_seconds, copy.priority, copy.transactional) == (
        5400,
        172800,
        3,
        False,
    )


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(0, 0), (3600, 3600), ("30m", 1800), ("2h", 7200), ("1d", 86400), ("1w", 604800), ("45s", 45)],
)
def test_durations(text: int | str, seconds: int) -> None:
    assert parse_duration(text) == seconds


def test_bad_duration_names_the_field(runtime: Runtime, template_id: int) -> None:
    error = _error(runtime, cooldown="soon")
    assert error.field == "cooldown"


def test_a_stored_enrol_campaign_action_with_its_own_consent_purpose_is_skipped_with_a_reason(
    runtime: Runtime,
) -> None:
    # Stored before enrol_campaign refused consent_purpose: it must not fire and fail on every
    # event; it is compiled with an error that says what to change.
    from postwise.db.models import Trigger
    from postwise.triggers.compiled import compile_trigger

    runtime.migrate()
    with runtime.session() as session:
        template = Template(name="t-old", kind="marketing")
        session.add(template)
        session.flush()
        assert template.id is not None
        campaign = Campaign(name="c-old", template_id=template.id)
        session.add(campaign)
        session.flush()
        assert campaign.id is not None
        trigger = Trigger(
            name="old-enrol",
            event_type="signup",
            conditions={},
            action={"type": "enrol_campaign", "campaign_id": campaign.id, "consent_purpose": "x"},
        )
        session.add(trigger)
        session.flush()
        registry = runtime.plugins.registry("conditions")
        compiled = compile_trigger(trigger, registry, {campaign.id: campaign})
    assert not compiled.usable
    assert "remove action.consent_purpose" in (compiled.error or "")
