"""The web interface as a plugin: its pages and its static files, registered like any route."""

from __future__ import annotations

from typing import Any

from postwise import hookimpl
from postwise.registry import Register


@hookimpl
def postwise_register_routes(register: Register[Any]) -> None:
    from postwise.ui.pages import UiController, static_files

    register("ui", UiController)
    register("ui-static", static_files())
