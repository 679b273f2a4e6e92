"""The plugin: registers the ``clickhouse`` analytics sink through postwise's hook."""

from __future__ import annotations

from typing import Any

from postwise import hookimpl


@hookimpl
def postwise_register_analytics_sinks(register: Any) -> None:
    from postwise_clickhouse.sink import clickhouse_sink_factory

    register("clickhouse", clickhouse_sink_factory)
