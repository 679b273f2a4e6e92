"""The built-in triggers plugin: the built-in condition types and the ``/v1/triggers`` API.

The conditions are registered through ``postwise_register_conditions`` exactly as a third-party
plugin registers its own (see examples/custom-condition), so disabling this plugin by name
removes them like any other.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from postwise import hookimpl

if TYPE_CHECKING:
    from postwise.hookspecs import RouteHandler
    from postwise.registry import Register
    from postwise.triggers.conditions import ConditionType


@hookimpl
def postwise_register_conditions(register: Register[ConditionType[Any]]) -> None:
    from postwise.triggers.builtin import BUILTIN_CONDITIONS

    for condition in BUILTIN_CONDITIONS:
        register(condition.name, condition)


@hookimpl
def postwise_register_routes(register: Register[RouteHandler]) -> None:
    from postwise.triggers.api import TriggersController

    register("triggers-api", TriggersController)
