"""Prometheus metrics: what each process counts, and the shared state read at scrape time.

Counters live in the process that does the work and are exposed by it: the server at
``/metrics``, every other long-running process on its own ``metrics_port`` when that setting is
set (``postwise run --metrics-port-base`` gives each child one). Under ``serve --workers N`` the
server processes share one view through prometheus_client's multiprocess mode.

The state that belongs to no process — queue depths, how far each consumer group is behind, the
processes alive, paused streams — is read from Redis when ``/metrics`` is scraped
(:class:`SharedStateCollector`), from the same readings as ``/health``.

Label values are bounded: event types outside :data:`postwise.events.EMAIL_EVENT_TYPES` are
counted as ``product``; routes are route templates (``/v1/contacts/{contact_id:int}``), never
raw paths.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Final

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
    multiprocess,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from postwise.events import EMAIL_EVENT_TYPES

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from postwise.runtime import Runtime

__all__ = [
    "CONTENT_TYPE_LATEST",
    "EVENTS_PUBLISHED",
    "HTTP_LATENCY",
    "HTTP_REQUESTS",
    "MESSAGES_SETTLED",
    "RATE_LIMIT_WAITS",
    "TRIGGER_COUNTS",
    "SharedStateCollector",
    "count_events",
    "render",
    "serve_metrics",
]

# A "_created" timestamp per series doubles what a scrape carries, for nothing we use.
disable_created_metrics()

HTTP_REQUESTS: Final = Counter(
    "postwise_http_requests",
    "HTTP requests answered, by route and status.",
    ["method", "route", "status"],
)
HTTP_LATENCY: Final = Histogram(
    "postwise_http_request_duration_seconds",
    "Time to answer an HTTP request, by route.",
    ["method", "route"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
)
MESSAGES_SETTLED: Final = Counter(
    "postwise_messages_settled",
    "Messages whose attempt was settled, by outcome (accepted, bounced, dead, deferred, "
    "retrying, skipped...) and reason where one applies (skip reasons).",
    ["outcome", "reason"],
)
RATE_LIMIT_WAITS: Final = Counter(
    "postwise_rate_limit_waits", "Messages held back by a provider's token bucket.", ["provider"]
)
EVENTS_PUBLISHED: Final = Counter(
    "postwise_events_published",
    "Events appended to the event stream by this process, by type (product events as "
    "'product'): sends, bounces, complaints, opens, clicks, unsubscribes...",
    ["type"],
)
TRIGGER_COUNTS: Final = Counter(
    "postwise_trigger_outcomes",
    "Trigger engine outcomes: matched, fired, and each suppression (cooldown, capped, quiet "
    "hours, skipped, exited...).",
    ["outcome"],
)


def count_events(types: Iterable[str]) -> None:
    """Count events published by this process (email types by name, others as 'product')."""
    for event_type in types:
        EVENTS_PUBLISHED.labels(event_type if event_type in EMAIL_EVENT_TYPES else "product").inc()


class SharedStateCollector(Collector):
    """Gauges read from Redis at scrape time: backlog, live processes, lag."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime

    def collect(self) -> Iterator[Metric]:
        from postwise.ops.health import readiness

        result = readiness(self.runtime)
        ready = GaugeMetricFamily("postwise_ready", "1 when /health answers 200.")
        ready.add_metric([], 1.0 if result.ready else 0.0)
        yield ready
        live = GaugeMetricFamily(
            "postwise_processes_live", "Long-running processes beating, by kind.", labels=["kind"]
        )
        for kind, info in result.processes.items():
            live.add_metric([kind], float(info["live"]))
        yield live
        depth = GaugeMetricFamily("postwise_queue_depth", "Jobs waiting.", labels=["queue"])
        oldest = GaugeMetricFamily(
            "postwise_queue_oldest_seconds", "Age of the oldest waiting job.", labels=["queue"]
        )
        overdue = GaugeMetricFamily(
            "postwise_scheduled_overdue", "Scheduled jobs past due.", labels=["queue"]
        )
        behind = GaugeMetricFamily(
            "postwise_stream_lag_seconds",
            "How far each consumer group of the event stream is behind.",
            labels=["group"],
        )
        waiting = GaugeMetricFamily(
            "postwise_stream_waiting", "Events not yet read by each group.", labels=["group"]
        )
        for key, values in result.backlog.items():
            kind, _, name = key.partition(":")
            if kind == "queue":
                depth.add_metric([name], float(values["depth"]))
                oldest.add_metric([name], float(values["oldest_seconds"]))
                overdue.add_metric([name], float(values["scheduled_overdue"]))
            else:
                behind.add_metric([name], float(values["behind_seconds"]))
                waiting.add_metric([name], float(values["waiting"] or 0))
        yield from (depth, oldest, overdue, behind, waiting)


def _registry(runtime: Runtime | None) -> CollectorRegistry:
    from prometheus_client import REGISTRY

    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    elif runtime is None:
        return REGISTRY
    else:
        registry = CollectorRegistry()
        registry.register(_ProcessCounters())
    if runtime is not None:
        registry.register(SharedStateCollector(runtime))
    return registry


class _ProcessCounters(Collector):
    """This process's own counters, re-exported into a registry that adds shared state."""

    def collect(self) -> Iterator[Metric]:
        from prometheus_client import REGISTRY

        yield from REGISTRY.collect()


def render(runtime: Runtime | None = None) -> bytes:
    """The metrics text a scrape gets; with ``runtime``, the shared state too."""
    return generate_latest(_registry(runtime))


def serve_metrics(port: int, address: str) -> None:
    """Expose this process's counters on ``address:port`` (a daemon thread)."""
    start_http_server(port, addr=address)
