"""Where the ClickHouse tests find the server (.ci/clickhouse.sh starts it on 127.0.0.1:9000)."""

from __future__ import annotations

import os

HOST = os.environ.get("POSTWISE_TEST_CLICKHOUSE_HOST", "127.0.0.1")
PORT = int(os.environ.get("POSTWISE_TEST_CLICKHOUSE_PORT", "9000"))
