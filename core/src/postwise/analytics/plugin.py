"""The analytics subsystem as a plugin: its routes and the built-in ``sql`` sink."""

from __future__ import annotations

from typing import TYPE_CHECKING

from postwise import hookimpl

if TYPE_CHECKING:
    from postwise.hookspecs import AnalyticsSinkFactory, RouteHandler
    from postwise.registry import Register


@hookimpl
def postwise_register_routes(register: Register[RouteHandler]) -> None:
    from postwise.analytics.api import EventsController, MetricsController
    from postwise.analytics.tracking import TrackingController

    register("events-api", EventsController)
    register("metrics-api", MetricsController)
    register("tracking", TrackingController)


@hookimpl
def postwise_register_analytics_sinks(register: Register[AnalyticsSinkFactory]) -> None:
    from postwise.analytics.sql_sink import sql_sink_factory

    register("sql", sql_sink_factory)
