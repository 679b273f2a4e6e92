"""The plugin: registers the ``clickhouse`` analytics sink through postwise's hook."""

from __future__ import annotations

from typing import TYPE_CHECKING

from postwise import hookimpl

if TYPE_CHECKING:
    from postwise.hookspecs import AnalyticsSinkFactory
    from postwise.registry import Register


@hookimpl
def postwise_register_analytics_sinks(register: Register[AnalyticsSinkFactory]) -> None:
    from postwise_clickhouse.sink import clickhouse_sink_factory

    register("clickhouse", clickhouse_sink_factory)
