"""The built-in journeys plugin: the ``/v1/journeys`` API.

Registered through the same hook as any third-party plugin; the import stays inside the hook so
loading plugins costs nothing until the server starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from postwise import hookimpl

if TYPE_CHECKING:
    from postwise.hookspecs import RouteHandler
    from postwise.registry import Register


@hookimpl
def postwise_register_routes(register: Register[RouteHandler]) -> None:
    from postwise.journeys.api import JourneysController

    register("journeys-api", JourneysController)
