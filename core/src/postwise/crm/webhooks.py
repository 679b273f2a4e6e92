"""CRM webhooks: ``POST /hooks/crm/{system}``.

Public (no API key): each request must carry the signature of the CRM's connector
(:meth:`~postwise.crm.connector.CrmConnector.verify_request`, which sees the method, the public
URL ``base_url`` + path, the headers and the raw body). Then the connector turns the body into
contact changes, which are applied exactly as a poll applies them
(:func:`postwise.crm.sync.apply_changes`, idempotent), so a redelivered webhook changes nothing.

Answers: 200 with the counts; 401 for a missing or wrong signature (nothing is read or
changed); 404 for a CRM that is not configured or not installed; 400 for a body the connector
cannot read; 503 with ``Retry-After`` when the CRM's API could not be read (connectors whose
webhooks carry ids only read the records), so the CRM delivers the webhook again later.
"""

from __future__ import annotations

import logging
from typing import Any

from litestar import Controller, MediaType, Request, Response, post
from litestar.concurrency import sync_to_thread
from litestar.datastructures import State

from postwise.crm.connector import CrmUnavailableError
from postwise.crm.status import record_failure, record_run
from postwise.crm.sync import SyncReport, apply_changes, connector_for
from postwise.errors import ConfigurationError, NotFoundError
from postwise.server.errors import problem

__all__ = ["CrmWebhookController", "handle_webhook"]

log = logging.getLogger(__name__)

#: Seconds a CRM is asked to wait before delivering a webhook again after a 503.
RETRY_AFTER_SECONDS = 60


class WebhookRejected(Exception):
    """The request is refused with ``status``."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def handle_webhook(
    runtime: Any, system: str, *, method: str, url: str, headers: dict[str, str], body: bytes
) -> SyncReport:
    """Verify, parse and apply one webhook request; raises :class:`WebhookRejected`."""
    try:
        connector = connector_for(runtime, system)
    except (NotFoundError, ConfigurationError) as exc:
        raise WebhookRejected(404, str(exc)) from None
    if not connector.verify_request(method, url, headers, body):
        raise WebhookRejected(
            401, f"the request does not carry a valid {system} signature; nothing was changed"
        )
    try:
        changes = connector.parse_webhook(body)
    except ValueError as exc:
        raise WebhookRejected(400, f"the body is not a {system} webhook: {exc}") from None
    except CrmUnavailableError as exc:
        record_failure(runtime, system, "webhook", str(exc))
        raise WebhookRejected(503, str(exc)) from None
    report = apply_changes(runtime, system, changes)
    record_run(runtime, system, "webhook", report.to_dict())
    return report


class CrmWebhookController(Controller):
    """Webhooks of every configured CRM; authenticated by the CRM's signature."""

    path = "/hooks/crm"
    tags = ["webhooks"]

    @post("/{system:str}", status_code=200, security=[])
    async def receive(
        self, state: State, request: Request[Any, Any, Any], system: str
    ) -> Response[Any]:
        """Apply the contact changes a signed CRM webhook announces."""
        runtime = state.runtime
        body = await request.body()
        query = request.url.query
        url = runtime.settings.base_url + request.url.path + (f"?{query}" if query else "")
        headers = {k.lower(): v for k, v in request.headers.items()}
        try:
            report = await sync_to_thread(
                handle_webhook,
                runtime,
                system,
                method=request.method,
                url=url,
                headers=headers,
                body=body,
            )
        except WebhookRejected as exc:
            if exc.status >= 500:
                log.warning("crm %s webhook: %s", system, exc)
            extra = {"Retry-After": str(RETRY_AFTER_SECONDS)} if exc.status == 503 else None
            return problem(exc.status, str(exc), headers=extra)
        return Response(report.to_dict(), media_type=MediaType.JSON)
