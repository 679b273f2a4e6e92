"""Fixtures for the CRM sync tests: an in-process CRM registered as a plugin."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from crm_memory import MemoryCrm, MemoryPlugin

import postwise.crm.plugin
from postwise.runtime import Runtime
from postwise.settings import Settings


@pytest.fixture
def settings(make_settings: Any) -> Settings:
    result: Settings = make_settings(crm_options={"memory": {}})
    return result


@pytest.fixture
def memory_crm() -> MemoryCrm:
    return MemoryCrm()


@pytest.fixture
def memory_plugin(memory_crm: MemoryCrm) -> MemoryPlugin:
    return MemoryPlugin(memory_crm)


@pytest.fixture(autouse=True)
def crm_plugins(runtime: Runtime, memory_plugin: MemoryPlugin) -> Iterator[None]:
    """The crm core plugin (until its entry point is declared) and the memory connector."""
    registered_core = runtime.plugins.pm.get_plugin("crm") is None
    if registered_core:
        assert runtime.plugins.register(postwise.crm.plugin, "crm")
    assert runtime.plugins.register(memory_plugin, "memory-crm")
    try:
        yield
    finally:
        runtime.plugins.unregister("memory-crm")
        if registered_core:
            runtime.plugins.unregister("crm")
