"""The built-in contacts plugin: the contacts and segments API."""

from __future__ import annotations

from typing import Any

from postwise import hookimpl


@hookimpl
def postwise_register_routes(register: Any) -> None:
    from postwise.contacts.api import ContactsController, SegmentsController

    register("contacts-api", ContactsController)
    register("segments-api", SegmentsController)
