"""Fixtures for the delivery pipeline: a real SMTP server, seeded contacts and templates."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from delivery_helpers import delivery_overrides

from postwise.runtime import Runtime
from postwise.testing.smtp import FaultySmtpServer


@pytest.fixture
def smtp_server() -> Iterator[FaultySmtpServer]:
    """A real SMTP server on loopback that records what it accepted."""
    with FaultySmtpServer() as server:
        yield server


@pytest.fixture
def make_runtime(make_settings: Any, smtp_server: FaultySmtpServer) -> Iterator[Any]:
    """Build runtimes wired to ``smtp_server``; closed after the test."""
    made: list[Runtime] = []

    def make(**overrides: Any) -> Runtime:
        runtime = Runtime(make_settings(**delivery_overrides(smtp_server, **overrides)))
        made.append(runtime)
        return runtime

    yield make
    for runtime in made:
        runtime.close()


@pytest.fixture
def delivery(make_runtime: Callable[..., Runtime]) -> Runtime:
    """A runtime on this test's database and Redis, sending to ``smtp_server``."""
    return make_runtime()
