"""The built-in compliance plugin: consent, privacy, suppression and reputation routes."""

from __future__ import annotations

from typing import TYPE_CHECKING

from postwise import hookimpl

if TYPE_CHECKING:
    from postwise.hookspecs import RouteHandler
    from postwise.registry import Register


@hookimpl
def postwise_register_routes(register: Register[RouteHandler]) -> None:
    from postwise.compliance.api import (
        ConsentController,
        PrivacyController,
        ReputationController,
        SuppressionsController,
    )
    from postwise.compliance.pages import ConsentLinkController, UnsubscribeController

    register("consent-api", ConsentController)
    register("privacy-api", PrivacyController)
    register("suppressions-api", SuppressionsController)
    register("reputation-api", ReputationController)
    register("consent-links", ConsentLinkController)
    register("unsubscribe", UnsubscribeController)
