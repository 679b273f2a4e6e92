"""Fixtures of the analytics tests."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest

from postwise.analytics.collector import Collector, CollectorConfig, open_sink
from postwise.runtime import Runtime


@pytest.fixture
def collect(runtime: Runtime) -> Iterator[Callable[..., Any]]:
    """Run a collector in-process until the stream has been idle briefly; returns its stats."""
    sinks = []

    def run(**config: Any) -> Any:
        sink = open_sink(runtime)
        sinks.append(sink)
        options = {"flush_interval": 0.05, **config}
        collector = Collector(runtime, sink, config=CollectorConfig(**options))
        return collector.run(exit_when_idle=0.3)

    yield run
    for sink in sinks:
        sink.close()
