"""The built-in contacts plugin: the contacts and segments API."""

from __future__ import annotations

from typing import TYPE_CHECKING

from postwise import hookimpl

if TYPE_CHECKING:
    from litestar.types import ControllerRouterHandler

    from postwise.registry import Register


@hookimpl
def postwise_register_routes(register: Register[ControllerRouterHandler]) -> None:
    from postwise.contacts.api import ContactsController, SegmentsController

    register("contacts-api", ContactsController)
    register("segments-api", SegmentsController)
