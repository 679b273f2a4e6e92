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
from typing import TYPE_CHECKING, Any

from litestar import Request, Response, post
from litestar.datastructures import State

from postwise.crm.connector import CrmUnavailableError
from postwise.crm.status import record_failure, record_run
from postwise.crm.sync import SyncReport, apply_changes, connector_for
from postwise.errors import ConfigurationError, NotFoundError
from postwise.server.webhooks import (
    SignedWebhookController,
    Verified,
    WebhookRejected,
    WebhookRequest,
)

__all__ = ["CrmWebhookController", "WebhookRejected", "handle_webhook"]

if TYPE_CHECKING:
    from postwise.runtime import Runtime

log = logging.getLogger(__name__)


def handle_webhook(
    runtime: Any, system: str, *, method: str, url: str, headers: dict[str, str], body: bytes
) -> SyncReport:
    """Verify, parse and apply one webhook request; raises :class:`WebhookRejected`."""
    request = WebhookRequest(method, url, headers, body, {"system": system})
    return _apply(runtime, system, request, _verify(runtime, system, request))


def _verify(runtime: Any, system: str, request: WebhookRequest) -> Verified:
    try:
        connector = connector_for(runtime, system)
    except (NotFoundError, ConfigurationError) as exc:
        raise WebhookRejected(404, str(exc)) from None
    if not connector.verify_request(request.method, request.url, request.headers, request.body):
        raise WebhookRejected(
            401, f"the request does not carry a valid {system} signature; nothing was changed"
        )
    header = connector.webhook_signature_header
    return Verified(request.header(header) if header else "")


def _apply(runtime: Any, system: str, request: WebhookRequest, verified: Verified) -> SyncReport:
    connector = connector_for(runtime, system)
    try:
        changes = connector.parse_webhook(request.body)
    except ValueError as exc:
        raise WebhookRejected(400, f"the body is not a {system} webhook: {exc}") from None
    except CrmUnavailableError as exc:
        record_failure(runtime, system, "webhook", str(exc))
        raise WebhookRejected(503, str(exc)) from None
    report = apply_changes(runtime, system, changes)
    record_run(runtime, system, "webhook", report.to_dict())
    return report


class CrmWebhookController(SignedWebhookController):
    """Webhooks of every configured CRM; authenticated by the CRM's signature.

    The connectors check their signed times themselves (each CRM signs differently); the base
    refuses a signature it has seen within :attr:`max_age_seconds` as a replay.
    """

    path = "/hooks/crm"
    source = "crm"

    @post("/{system:str}", status_code=200, security=[], opt={"problems": [400, 401, 403, 413]})
    async def events(self, state: State, request: Request[Any, Any, Any]) -> Response[Any]:
        """Apply the contact changes a signed CRM webhook announces."""
        return await self.receive(state, request, system=request.path_params["system"])

    def verify(self, runtime: Runtime, request: WebhookRequest) -> Verified:
        return _verify(runtime, request.path_params["system"], request)

    def process(self, runtime: Runtime, request: WebhookRequest, verified: Verified) -> Any:
        return _apply(runtime, request.path_params["system"], request, verified).to_dict()
