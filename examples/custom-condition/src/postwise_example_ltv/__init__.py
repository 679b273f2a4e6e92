"""Example postwise plugin: a condition on a contact's lifetime value."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, Field

import postwise
from postwise.triggers.conditions import ConditionContext, ConditionType, TriggerEvent

if TYPE_CHECKING:
    from postwise.registry import Register
    from postwise.triggers.conditions import ConditionType


__all__ = ["LifetimeValue", "LifetimeValueConfig"]


class LifetimeValueConfig(BaseModel):
    """``{"at_least": 500, "currency": "EUR"}``."""

    at_least: float = Field(gt=0, description="Minimum lifetime value, inclusive.")
    currency: str = Field(default="EUR", min_length=3, max_length=3)


class LifetimeValue(ConditionType[LifetimeValueConfig]):
    """True when ``attributes.lifetime_value`` (in ``attributes.currency``) reaches the amount."""

    name = "lifetime_value"
    config_model = LifetimeValueConfig
    requires = frozenset({"contact"})
    description = "The contact's lifetime value reaches an amount."

    def evaluate(
        self, config: LifetimeValueConfig, event: TriggerEvent, context: ConditionContext
    ) -> bool:
        attributes = context.contact.get("attributes") or {}
        if attributes.get("currency", config.currency) != config.currency:
            return False
        try:
            return float(attributes.get("lifetime_value", 0)) >= config.at_least
        except (TypeError, ValueError):
            return False

    def explain(self, config: LifetimeValueConfig) -> str:
        return f"lifetime value at least {config.at_least:g} {config.currency}"


@postwise.hookimpl
def postwise_register_conditions(register: Register[ConditionType[Any]]) -> None:
    register(LifetimeValue.name, LifetimeValue())
