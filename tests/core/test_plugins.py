"""The plugin system: discovery, isolation of broken plugins, block-list, named lookup."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import postwise
from postwise.errors import PluginError, UnknownComponentError
from postwise.plugins import PluginHost, create_plugin_host
from postwise.settings import load_settings


def _install_fake_distribution(
    root: Path, name: str, entry_points: dict[str, str], modules: dict[str, str]
) -> None:
    """Make a real installed distribution (dist-info + modules) under ``root``."""
    dist_info = root / f"{name.replace('-', '_')}-1.2.3.dist-info"
    dist_info.mkdir(parents=True)
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.2.3\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entry_points.items())
    (dist_info / "entry_points.txt").write_text(f"[postwise]\n{lines}\n")
    for module, source in modules.items():
        (root / f"{module}.py").write_text(textwrap.dedent(source))


@pytest.fixture
def fake_site(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    yield site
    for module in [m for m in sys.modules if m.startswith("pw_fake_")]:
        del sys.modules[module]


def test_builtins_are_discovered_through_the_entry_point_group() -> None:
    host = create_plugin_host(load_settings(environ={}))
    described = host.describe()
    names = {p["name"]: p for p in described["plugins"]}
    assert names["contacts"]["distribution"] == "postwise"
    assert names["contacts"]["version"] == postwise.__version__
    assert "popularity" in names["recommend"]["contributes"]["recommenders"]
    assert "contacts-api" in names["contacts"]["contributes"]["routes"]


def test_a_plugin_that_fails_to_import_is_reported_and_skipped(fake_site: Path) -> None:
    _install_fake_distribution(
        fake_site,
        "pw-fake-broken",
        {"broken": "pw_fake_broken", "fine": "pw_fake_fine"},
        {
            "pw_fake_broken": "raise RuntimeError('boom at import')\n",
            "pw_fake_fine": """
                import postwise
                class _P:
                    name = "fake"
                    def send_batch(self, messages): return []
                @postwise.hookimpl
                def postwise_register_providers(register):
                    register("fake-esp", lambda settings, options: _P())
            """,
        },
    )
    host = create_plugin_host(load_settings(environ={}))
    failed = {f["name"]: f for f in host.describe()["failed"]}
    assert "RuntimeError: boom at import" in failed["broken"]["error"]
    assert failed["broken"]["distribution"] == "pw-fake-broken"
    assert "fake-esp" in host.registry("providers")
    assert "contacts" in host.infos  # the host kept going


def test_disabled_plugins_are_not_loaded(fake_site: Path) -> None:
    _install_fake_distribution(
        fake_site,
        "pw-fake-noisy",
        {"noisy": "pw_fake_noisy"},
        {"pw_fake_noisy": "raise SystemExit('must never be imported')\n"},
    )
    host = create_plugin_host(load_settings(environ={}, disabled_plugins="noisy,recommend"))
    assert "noisy" not in host.infos
    assert not [f for f in host.failures if f.name == "noisy"]
    assert "popularity" not in host.registry("recommenders")


def test_a_misspelt_hook_rejects_the_plugin_with_its_name() -> None:
    class Typo:
        @postwise.hookimpl
        def postwise_register_provider(self, register: Any) -> None:  # missing "s"
            register("x", object())

    host = PluginHost()
    assert host.register(Typo(), "typo-plugin") is False
    assert host.failures[0].name == "typo-plugin"
    assert "postwise_register_provider" in host.failures[0].error
    assert "typo-plugin" not in host.infos


def test_unknown_component_names_the_kind_and_lists_what_is_installed() -> None:
    host = create_plugin_host(load_settings(environ={}))
    with pytest.raises(UnknownComponentError) as info:
        host.registry("recommenders").get("telepathy")
    message = str(info.value)
    assert "unknown recommender 'telepathy'" in message
    assert "popularity" in message


def test_two_plugins_claiming_one_name_is_an_error_naming_both() -> None:
    class A:
        @postwise.hookimpl
        def postwise_register_recommenders(self, register: Any) -> None:
            register("same", object)

    class B(A):
        pass

    host = PluginHost()
    host.register(A(), "plugin-a")
    host.register(B(), "plugin-b")
    host.registry("recommenders")
    errors = " ".join(f.error for f in host.failures)
    assert "plugin-a" in errors and "plugin-b" in errors


def test_in_process_plugins_register_and_unregister() -> None:
    class Extra:
        @postwise.hookimpl
        def postwise_register_recommenders(self, register: Any) -> None:
            register("extra", object)

    host = create_plugin_host(load_settings(environ={}))
    host.register(Extra(), "extra-plugin")
    try:
        assert host.registry("recommenders").entry("extra").plugin == "extra-plugin"
    finally:
        host.unregister("extra-plugin")
    assert "extra" not in host.registry("recommenders")


def test_a_register_hook_that_raises_is_isolated() -> None:
    class Raises:
        @postwise.hookimpl
        def postwise_register_conditions(self, register: Any) -> None:
            raise PluginError("cannot register today")

    host = create_plugin_host(load_settings(environ={}))
    host.register(Raises(), "raises")
    assert "popularity" in host.registry("recommenders")
    assert any(f.name == "raises" and "cannot register today" in f.error for f in host.failures)
