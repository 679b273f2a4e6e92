"""Named registries that register-style hooks fill.

Each extension kind (providers, conditions, recommenders, ...) has one :class:`Registry`. A plugin's
``postwise_register_<kind>(register)`` hook receives a :class:`Register` bound to the plugin's name,
so the registry always knows which plugin contributed what, and lookups by name need no second
mechanism.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from postwise.errors import PluginError, UnknownComponentError

__all__ = ["Entry", "Register", "Registry"]

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Entry(Generic[T]):
    """One registered component and the plugin that contributed it."""

    name: str
    component: T
    plugin: str


class Registry(Generic[T]):
    """Components of one kind, by name."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}

    def add(self, name: str, component: T, *, plugin: str) -> None:
        """Register ``component`` under ``name``; a name taken by another plugin is an error."""
        if not name or not isinstance(name, str):
            raise PluginError(f"plugin {plugin!r} registered a {self.kind} without a name")
        existing = self._entries.get(name)
        if existing is not None:
            raise PluginError(
                f"{self.kind} {name!r} is registered twice: by plugin {existing.plugin!r} and by "
                f"plugin {plugin!r}; disable one of them with POSTWISE_DISABLED_PLUGINS"
            )
        self._entries[name] = Entry(name, component, plugin)

    def get(self, name: str) -> T:
        """The component called ``name``; an unknown name lists what is installed."""
        try:
            return self._entries[name].component
        except KeyError:
            raise UnknownComponentError(self.kind, name, list(self._entries)) from None

    def entry(self, name: str) -> Entry[T]:
        """The entry (with its plugin) called ``name``."""
        self.get(name)
        return self._entries[name]

    def names(self) -> list[str]:
        return sorted(self._entries)

    def by_plugin(self, plugin: str) -> list[str]:
        return sorted(e.name for e in self._entries.values() if e.plugin == plugin)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def __len__(self) -> int:
        return len(self._entries)


class Register(Generic[T]):
    """The callable a register-style hook receives: ``register(name, component)``."""

    def __init__(self, registry: Registry[T], plugin: str) -> None:
        self._registry = registry
        self._plugin = plugin

    @property
    def kind(self) -> str:
        return self._registry.kind

    def __call__(self, name: str, component: T) -> None:
        self._registry.add(name, component, plugin=self._plugin)
