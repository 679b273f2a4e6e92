"""The built-in experiments plugin: the built-in stats tests and the ``/v1/experiments`` API.

The stats tests are registered through ``postwise_register_stats_tests`` exactly as a
third-party plugin registers its own, so disabling this plugin by name removes them like any
other, and an experiment picks its test from the same registry whoever contributed it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from postwise import hookimpl

if TYPE_CHECKING:
    from postwise.experiments.stats import StatsTest
    from postwise.hookspecs import RouteHandler
    from postwise.registry import Register


@hookimpl
def postwise_register_stats_tests(register: Register[StatsTest]) -> None:
    from postwise.experiments.stats import builtin_tests

    for name, test in builtin_tests().items():
        register(name, test)


@hookimpl
def postwise_register_routes(register: Register[RouteHandler]) -> None:
    from postwise.experiments.api import ExperimentsController

    register("experiments-api", ExperimentsController)
