"""The built-in contacts plugin: the contacts and segments API."""

from __future__ import annotations

from typing import TYPE_CHECKING

from postwise import hookimpl

if TYPE_CHECKING:
    from postwise.hookspecs import RouteHandler
    from postwise.registry import Register


@hookimpl
def postwise_register_routes(register: Register[RouteHandler]) -> None:
    from postwise.contacts.api import ContactsController, SegmentsController

    register("contacts-api", ContactsController)
    register("segments-api", SegmentsController)
