"""postwise: an open-source email platform built from a small core and plugins."""

from __future__ import annotations

from typing import Any

import pluggy

__all__ = ["__version__", "hookimpl", "track"]
__version__ = "0.1.0"

#: Marker for plugin hook implementations: ``@postwise.hookimpl``.
hookimpl = pluggy.HookimplMarker("postwise")


def __getattr__(name: str) -> Any:
    # ``postwise.track`` is imported on first use: importing postwise stays light for plugins.
    if name == "track":
        from postwise.analytics.ingest import track

        return track
    raise AttributeError(f"module 'postwise' has no attribute {name!r}")
