"""The built-in condition types pass the same contract suite third-party conditions run."""

from __future__ import annotations

from typing import Any

from postwise.testing.contracts import ConditionContract
from postwise.triggers.builtin import (
    ActionHistory,
    ContactAttribute,
    EngagementScore,
    EventProperty,
    SegmentMembership,
    TimeWindow,
)
from postwise.triggers.conditions import ConditionType


class TestTimeWindow(ConditionContract):
    valid_configs = [{"hours": 2}, {"days_of_week": ["sat", "sun"], "hour_from": 22, "hour_to": 6}]
    invalid_configs = [({"hours": 0}, "hours"), ({"days_of_week": ["funday"]}, "days_of_week")]

    def make_condition(self) -> ConditionType[Any]:
        return TimeWindow()


class TestEngagementScore(ConditionContract):
    valid_configs = [{"min": 10}, {"min": 1, "max": 5}]
    invalid_configs = [({"min": "high"}, "min")]

    def make_condition(self) -> ConditionType[Any]:
        return EngagementScore()


class TestSegmentMembership(ConditionContract):
    valid_configs = [{"segment": "vip"}, {"segment": "vip", "member": False}]
    invalid_configs = [({"segment": ""}, "segment")]

    def make_condition(self) -> ConditionType[Any]:
        return SegmentMembership()


class TestActionHistory(ConditionContract):
    valid_configs = [
        {"event_type": "purchase", "within_days": 30},
        {"event_type": "purchase", "since_event": True, "did": False},
    ]
    invalid_configs = [({"event_type": "purchase", "within_days": 0}, "within_days")]

    def make_condition(self) -> ConditionType[Any]:
        return ActionHistory()


class TestContactAttribute(ConditionContract):
    valid_configs = [
        {"attribute": "plan", "value": "pro"},
        {"attribute": "seats", "op": "gt", "value": 3},
        {"attribute": "company", "op": "exists"},
    ]
    invalid_configs = [({"attribute": "plan", "op": "like", "value": "p"}, "op")]

    def make_condition(self) -> ConditionType[Any]:
        return ContactAttribute()


class TestEventProperty(ConditionContract):
    valid_configs = [{"property": "total", "op": "gte", "value": 50}]
    invalid_configs = [({"property": "", "value": 1}, "property")]

    def make_condition(self) -> ConditionType[Any]:
        return EventProperty()
