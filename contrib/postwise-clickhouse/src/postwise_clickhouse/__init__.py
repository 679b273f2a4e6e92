"""ClickHouse analytics sink and metric queries for postwise (``analytics_sink = "clickhouse"``)."""

from __future__ import annotations

__all__ = ["__version__"]
__version__ = "0.1.0"
