"""Plugin discovery and the registries they fill.

There is one discovery path: the entry-point group ``postwise``. stevedore loads each entry point
(the built-ins are among them, one per subsystem: ``delivery = postwise.delivery.plugin``...);
each loaded module or object is registered with a fresh pluggy :class:`~pluggy.PluginManager`.
A plugin that fails to import, or
that implements a hook no spec defines (a typo), is reported with its name and error and skipped:
the host keeps running. The ``disabled_plugins`` setting keeps named plugins from loading at all.

Build a host with :func:`create_plugin_host` per application (never a module-level global), so
tests can add plugins in-process with :meth:`PluginHost.register`.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from importlib import metadata
from typing import TYPE_CHECKING, Any, Generic, TypeVar, overload

import pluggy

from postwise import hookspecs
from postwise.errors import PluginError
from postwise.registry import Register, Registry

if TYPE_CHECKING:
    from stevedore.extension import Extension

    from postwise.experiments.stats import StatsTest
    from postwise.hookspecs import (
        AnalyticsSinkFactory,
        CrmConnectorFactory,
        HealthCheck,
        ProviderFactory,
        RecommenderFactory,
        RouteHandler,
    )
    from postwise.settings import Settings
    from postwise.triggers.conditions import ConditionType

__all__ = [
    "ANALYTICS_SINKS",
    "CONDITIONS",
    "CRM_CONNECTORS",
    "ENTRY_POINT_GROUP",
    "HEALTH_CHECKS",
    "KINDS",
    "PROVIDERS",
    "RECOMMENDERS",
    "ROUTES",
    "STATS_TESTS",
    "Kind",
    "PluginFailure",
    "PluginHost",
    "PluginInfo",
    "create_plugin_host",
]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "postwise"

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Kind(Generic[T]):
    """One extension kind: its registry's name, a label for messages, the hook that fills it.

    The type parameter is what its components are, so a lookup is typed:
    ``runtime.component(PROVIDERS, "smtp")`` is a :data:`~postwise.hookspecs.ProviderFactory`.
    """

    name: str
    label: str
    hook: str


PROVIDERS: Kind[ProviderFactory] = Kind("providers", "provider", "postwise_register_providers")
CRM_CONNECTORS: Kind[CrmConnectorFactory] = Kind(
    "crm_connectors", "CRM connector", "postwise_register_crm_connectors"
)
CONDITIONS: Kind[ConditionType[Any]] = Kind(
    "conditions", "condition", "postwise_register_conditions"
)
RECOMMENDERS: Kind[RecommenderFactory] = Kind(
    "recommenders", "recommender", "postwise_register_recommenders"
)
STATS_TESTS: Kind[StatsTest] = Kind("stats_tests", "stats test", "postwise_register_stats_tests")
ANALYTICS_SINKS: Kind[AnalyticsSinkFactory] = Kind(
    "analytics_sinks", "analytics sink", "postwise_register_analytics_sinks"
)
ROUTES: Kind[RouteHandler] = Kind("routes", "route", "postwise_register_routes")
HEALTH_CHECKS: Kind[HealthCheck] = Kind(
    "health_checks", "health check", "postwise_register_health_checks"
)

#: Every extension kind, by registry name.
KINDS: dict[str, Kind[Any]] = {
    kind.name: kind
    for kind in (
        PROVIDERS,
        CRM_CONNECTORS,
        CONDITIONS,
        RECOMMENDERS,
        STATS_TESTS,
        ANALYTICS_SINKS,
        ROUTES,
        HEALTH_CHECKS,
    )
}


@dataclass(frozen=True, slots=True)
class PluginFailure:
    """A plugin that could not be used, and why."""

    name: str
    error: str
    distribution: str | None = None


@dataclass(slots=True)
class PluginInfo:
    """A loaded plugin: where it comes from and what it contributes per kind."""

    name: str
    distribution: str | None
    version: str | None
    module: str
    hooks: list[str] = field(default_factory=list)
    contributes: dict[str, list[str]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "distribution": self.distribution,
            "version": self.version,
            "module": self.module,
            "hooks": self.hooks,
            "contributes": self.contributes,
        }


class PluginHost:
    """A plugin manager, the plugins it loaded, and the registries they filled."""

    def __init__(self) -> None:
        self.pm = pluggy.PluginManager("postwise")
        self.pm.add_hookspecs(hookspecs)
        self.infos: dict[str, PluginInfo] = {}
        self.failures: list[PluginFailure] = []
        self._registries: dict[str, Registry[Any]] | None = None

    @property
    def hook(self) -> Any:
        return self.pm.hook

    def register(
        self,
        plugin: object,
        name: str,
        *,
        distribution: str | None = None,
        version: str | None = None,
    ) -> bool:
        """Register ``plugin`` under ``name``; a hook with no matching spec rejects it.

        Returns whether the plugin was accepted; a rejected one is recorded in ``failures``.
        """
        try:
            self.pm.register(plugin, name=name)
            unknown = [
                hookname
                for hookname in _hook_names(plugin)
                if getattr(self.pm.hook, hookname, None) is None
                or not getattr(self.pm.hook, hookname).has_spec()
            ]
            if unknown:
                raise PluginError(
                    f"implements {', '.join(unknown)}, which no postwise hook spec defines "
                    "(a misspelt hook name?)"
                )
        except Exception as exc:  # any failure must leave the host usable
            if self.pm.is_registered(plugin):
                self.pm.unregister(plugin)
            self._fail(name, exc, distribution)
            return False
        module = getattr(plugin, "__name__", None) or type(plugin).__module__
        self.infos[name] = PluginInfo(
            name=name,
            distribution=distribution,
            version=version,
            module=module,
            hooks=sorted(_hook_names(plugin)),
        )
        self._registries = None
        return True

    def unregister(self, name: str) -> None:
        plugin = self.pm.get_plugin(name)
        if plugin is not None:
            self.pm.unregister(plugin)
        self.infos.pop(name, None)
        self._registries = None

    def _fail(self, name: str, exc: BaseException, distribution: str | None = None) -> None:
        message = f"{type(exc).__name__}: {exc}"
        log.error("plugin %r was skipped: %s", name, message)
        self.failures.append(PluginFailure(name, message, distribution))

    @overload
    def registry(self, kind: Kind[T]) -> Registry[T]: ...
    @overload
    def registry(self, kind: str) -> Registry[Any]: ...
    def registry(self, kind: Kind[Any] | str) -> Registry[Any]:
        """The registry of ``kind`` (:data:`PROVIDERS`..., or its name), filled on first use."""
        return self.registries()[kind if isinstance(kind, str) else kind.name]

    def registries(self) -> dict[str, Registry[Any]]:
        if self._registries is None:
            self._registries = self._collect()
        return self._registries

    def _collect(self) -> dict[str, Registry[Any]]:
        registries: dict[str, Registry[Any]] = {}
        for kind, spec in KINDS.items():
            registry: Registry[Any] = Registry(spec.label)
            caller = getattr(self.pm.hook, spec.hook)
            # Call each plugin's implementation with a register bound to that plugin, so every
            # entry records who contributed it.
            for impl in caller.get_hookimpls():
                try:
                    impl.function(register=Register(registry, impl.plugin_name))
                except Exception as exc:
                    self._fail(impl.plugin_name, exc)
            registries[kind] = registry
        for info in self.infos.values():
            info.contributes = {
                kind: names
                for kind, reg in registries.items()
                if (names := reg.by_plugin(info.name))
            }
        return registries

    def describe(self) -> dict[str, Any]:
        """Every plugin with its distribution, version and contributions, and the failures."""
        self.registries()
        return {
            "plugins": [
                info.to_dict() for info in sorted(self.infos.values(), key=lambda i: i.name)
            ],
            "failed": [
                {"name": f.name, "distribution": f.distribution, "error": f.error}
                for f in self.failures
            ],
        }


def _hook_names(plugin: object) -> Iterable[str]:
    for attr in dir(plugin):
        if attr.startswith("postwise_") and callable(getattr(plugin, attr, None)):
            yield attr


def create_plugin_host(settings: Settings | None = None, *, discover: bool = True) -> PluginHost:
    """A fresh host with every entry-point plugin not disabled by ``settings`` registered."""
    host = PluginHost()
    if not discover:
        return host
    disabled = set(settings.disabled_plugins if settings else ())
    origins = _entry_point_origins()
    names = sorted(set(origins) - disabled)
    if not names:
        return host

    from stevedore import NamedExtensionManager

    def on_failure(_manager: Any, entry_point: Any, exc: BaseException) -> None:
        host._fail(entry_point.name, exc, origins.get(entry_point.name, (None, None))[0])

    # stevedore memoises entry points per namespace for the life of the process; a fresh host
    # must see plugins installed since the last one (a new distribution, a test's fake site).
    NamedExtensionManager.ENTRY_POINT_CACHE.pop(ENTRY_POINT_GROUP, None)
    manager = NamedExtensionManager(
        namespace=ENTRY_POINT_GROUP,
        names=names,
        invoke_on_load=False,
        on_load_failure_callback=on_failure,
        name_order=True,
    )
    ext: Extension
    for ext in manager:
        distribution, version = origins.get(ext.name, (None, None))
        host.register(ext.plugin, ext.name, distribution=distribution, version=version)
    return host


def _entry_point_origins() -> dict[str, tuple[str | None, str | None]]:
    """Entry-point name -> (distribution, version) for the ``postwise`` group."""
    origins: dict[str, tuple[str | None, str | None]] = {}
    for dist in metadata.distributions():
        for ep in dist.entry_points:
            if ep.group == ENTRY_POINT_GROUP:
                origins[ep.name] = (dist.metadata["Name"], dist.version)
    return origins
