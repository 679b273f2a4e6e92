"""postwise: an open-source email platform built from a small core and plugins."""

from __future__ import annotations

import pluggy

__all__ = ["hookimpl", "__version__"]
__version__ = "0.1.0"

#: Marker for plugin hook implementations: ``@postwise.hookimpl``.
hookimpl = pluggy.HookimplMarker("postwise")
