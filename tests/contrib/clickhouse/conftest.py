"""A ClickHouse database of each test's own, on the server .ci/clickhouse.sh starts."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest
from clickhouse_helpers import HOST, PORT

from postwise_clickhouse.sink import ClickHouseSink


def _reachable() -> str | None:
    from clickhouse_driver import Client

    try:
        Client(host=HOST, port=PORT, connect_timeout=2).execute("SELECT 1")
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


@pytest.fixture(scope="session")
def clickhouse_server() -> str:
    problem = _reachable()
    if problem is not None:
        message = f"no ClickHouse on {HOST}:{PORT} (run .ci/clickhouse.sh): {problem}"
        if os.environ.get("POSTWISE_TEST_REQUIRE_ALL"):
            pytest.fail(message)
        pytest.skip(message)
    return f"{HOST}:{PORT}"


@pytest.fixture
def clickhouse_database(clickhouse_server: str) -> Iterator[str]:
    """A fresh database name, dropped after the test."""
    name = f"pw_test_{uuid.uuid4().hex[:12]}"
    yield name
    from clickhouse_driver import Client

    Client(host=HOST, port=PORT).execute(f"DROP DATABASE IF EXISTS {name}")


@pytest.fixture
def ch_sink(clickhouse_database: str) -> Iterator[ClickHouseSink]:
    sink = ClickHouseSink(host=HOST, port=PORT, database=clickhouse_database)
    yield sink
    sink.close()
