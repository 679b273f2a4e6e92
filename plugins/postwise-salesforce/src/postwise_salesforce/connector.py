"""The ``salesforce`` CRM connector: the REST API over httpx.

Wire format:

* **changes and deletions**: ``GET /services/data/vXX.X/queryAll?q=SELECT Id, Email,
  SystemModstamp, IsDeleted, ... FROM Contact WHERE SystemModstamp >= <since> ORDER BY
  SystemModstamp ASC`` (``queryAll`` also returns deleted records, ``IsDeleted = true``),
  following ``nextRecordsUrl`` until ``done``; ``Sforce-Query-Options: batchSize=N``;
* **engagement**: ``PATCH /services/data/vXX.X/composite/sobjects`` with ``allOrNone: false``,
  up to 200 records per call, one result per record (``ENTITY_IS_DELETED`` and friends mean the
  record is gone);
* **notifications**: Change Data Capture-style JSON posted by a Flow or Apex trigger, signed
  with :mod:`postwise_salesforce.signature`: a JSON array (or ``{"events": [...]}``) of objects
  with a ``ChangeEventHeader`` (``entityName`` ``Contact``, ``changeType`` ``CREATE`` /
  ``UPDATE`` / ``UNDELETE`` / ``DELETE``, ``recordIds``, ``commitTimestamp``). Changed records
  are read back with a SOQL query by id, so a notification never applies partial or stale
  values;
* **auth**: OAuth 2.0 client credentials or JWT bearer (:mod:`postwise_salesforce.auth`); an
  expired session (401 ``INVALID_SESSION_ID``) gets a new token once.

429 (with ``Retry-After``), 5xx and connection failures are retried with backoff
(:class:`postwise.crm.retry.RetryPolicy`); ``REQUEST_LIMIT_EXCEEDED`` (the org's daily API
limit) ends the run at once. No request or response body is logged.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import httpx

from postwise.crm.connector import (
    CrmConnector,
    CrmContact,
    CrmUnavailableError,
    EngagementUpdate,
    PushFailure,
)
from postwise.crm.retry import Retryable, RetryPolicy, retry_after_seconds
from postwise.errors import ConfigurationError
from postwise_salesforce.auth import Token, request_token
from postwise_salesforce.options import SalesforceOptions
from postwise_salesforce.signature import SIGNATURE_HEADER, verify

__all__ = ["SalesforceConnector", "parse_timestamp"]

_ID_RE = re.compile(r"^[A-Za-z0-9]{15}([A-Za-z0-9]{3})?$")
#: Per-record error codes that mean the record is not there any more.
_GONE = frozenset(
    {"ENTITY_IS_DELETED", "INVALID_CROSS_REFERENCE_KEY", "NOT_FOUND", "INVALID_ID_FIELD"}
)
_READ_BATCH = 200


def parse_timestamp(value: Any) -> datetime | None:
    """Salesforce's ``2024-05-01T12:30:00.000+0000`` as an aware datetime."""
    if not isinstance(value, str) or not value:
        return None
    for layout in ("%Y-%m-%dT%H:%M:%S.%f%z", "%Y-%m-%dT%H:%M:%S%z"):
        try:
            return datetime.strptime(value.replace("Z", "+0000"), layout).astimezone(UTC)
        except ValueError:
            continue
    return None


def _event_millis(value: Any) -> int:
    """A change event's ``commitTimestamp`` (epoch ms); a missing one is the time it is
    received (never 1970, which would date the change before everything else)."""
    if value in (None, "", 0, "0"):
        return int(time.time() * 1000)
    try:
        millis = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"commitTimestamp {str(value)[:40]!r} is not epoch milliseconds") from None
    return millis if millis > 0 else int(time.time() * 1000)


def _soql_time(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _wire_value(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return value


def _errors(response: httpx.Response) -> tuple[str, str]:
    """(errorCode, message) of Salesforce's ``[{"errorCode", "message"}]`` error body."""
    try:
        body = response.json()
    except ValueError:
        return "", response.text[:200]
    first = body[0] if isinstance(body, list) and body else body
    if isinstance(first, Mapping):
        return str(first.get("errorCode") or ""), str(first.get("message") or "")[:300]
    return "", str(body)[:200]


class SalesforceConnector(CrmConnector):
    """Salesforce Contacts; see the module docs for the wire format."""

    name = "salesforce"
    webhook_signature_header = SIGNATURE_HEADER
    changes_ascending = True  # ORDER BY SystemModstamp ASC
    push_batch_size = 200

    def __init__(
        self, options: SalesforceOptions, *, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        if not options.client_id:
            raise ConfigurationError(
                "crm_options.salesforce.client_id is not set: create a connected app with the "
                "api scope and set POSTWISE_CRM_OPTIONS__SALESFORCE__CLIENT_ID (and its secret "
                "or a JWT key)"
            )
        self.options = options
        self.retry = RetryPolicy(
            attempts=options.max_attempts, max_wait=options.max_retry_wait, sleep=sleep
        )
        self._http = httpx.Client(
            timeout=options.timeout,
            transport=httpx.HTTPTransport(retries=1),
            headers={"Accept": "application/json"},
        )
        self._lock = threading.Lock()
        self._token: Token | None = None
        read = ["Id", "Email", "SystemModstamp", "IsDeleted", *options.fields.values()]
        read.extend(options.attribute_fields)
        if options.unsubscribed_field:
            read.append(options.unsubscribed_field)
        self._select = ", ".join(dict.fromkeys(read))

    # -- HTTP ----------------------------------------------------------------------------
    def _current_token(self, *, renew: bool = False) -> Token:
        with self._lock:
            if self._token is None or renew:
                self._token = self.retry.run(self._fetch_token, "getting a Salesforce token")
            return self._token

    def _fetch_token(self) -> Token:
        try:
            return request_token(self._http, self.options)
        except httpx.HTTPStatusError as exc:
            raise Retryable(str(exc), retry_after_seconds(exc.response.headers)) from None
        except httpx.TransportError as exc:
            raise Retryable(f"cannot reach {self.options.login_url}: {exc}") from None

    def _api(self, path: str) -> str:
        return f"/services/data/v{self.options.api_version}/{path}"

    def _request(
        self, method: str, path: str, what: str, *, json_body: Any = None, **extra: Any
    ) -> Any:
        """One REST call with retries and a token renewal; returns the decoded JSON."""
        renewed = False

        def attempt() -> httpx.Response:
            nonlocal renewed
            token = self._current_token()
            headers = {"Authorization": f"Bearer {token.access_token}", **extra}
            try:
                response = self._http.request(
                    method, token.instance_url + path, json=json_body, headers=headers
                )
            except httpx.TransportError as exc:
                raise Retryable(f"cannot reach Salesforce: {type(exc).__name__}") from None
            if response.status_code == 401 and not renewed:
                renewed = True
                self._current_token(renew=True)
                raise Retryable("the session expired; renewed the token", 0.0)
            code, message = _errors(response) if response.status_code >= 400 else ("", "")
            if response.status_code == 429 or response.status_code >= 500:
                raise Retryable(
                    f"Salesforce answered HTTP {response.status_code} {code}: {message}",
                    retry_after_seconds(response.headers),
                )
            if code == "REQUEST_LIMIT_EXCEEDED":
                raise CrmUnavailableError(
                    f"{what}: the org's API request limit is used up ({message}); the next "
                    "poll or push tries again"
                )
            if response.status_code in (401, 403):
                raise ConfigurationError(
                    f"Salesforce refused {what} (HTTP {response.status_code} {code}: {message});"
                    " check the connected app's user, its permissions and crm_options.salesforce"
                )
            if response.status_code >= 400:
                raise ConfigurationError(
                    f"Salesforce refused {what} (HTTP {response.status_code} {code}: {message});"
                    " check the field names in crm_options.salesforce"
                )
            return response

        response = self.retry.run(attempt, what)
        return response.json() if response.content else None

    def _query(self, soql: str, *, include_deleted: bool) -> Iterator[Mapping[str, Any]]:
        endpoint = "queryAll" if include_deleted else "query"
        path: str | None = self._api(f"{endpoint}?q={quote(soql, safe='')}")
        options = {"Sforce-Query-Options": f"batchSize={self.options.page_size}"}
        while path:
            page = self._request("GET", path, "querying Salesforce contacts", **options)
            yield from page.get("records") or []
            path = None if page.get("done", True) else page.get("nextRecordsUrl")

    # -- contacts ------------------------------------------------------------------------
    def _contact(self, record: Mapping[str, Any]) -> CrmContact | None:
        updated = parse_timestamp(record.get("SystemModstamp"))
        record_id = record.get("Id")
        if updated is None or not record_id:
            return None
        if record.get("IsDeleted"):
            return CrmContact(str(record_id), "", updated, deleted=True)
        email = record.get("Email") or ""
        if not email:
            return None  # a contact without an address cannot be mailed
        properties: dict[str, Any] = {
            field: record.get(name) for field, name in self.options.fields.items()
        }
        properties.update({name: record.get(name) for name in self.options.attribute_fields})
        unsubscribed: bool | None = None
        opt_out = self.options.unsubscribed_field
        if opt_out and record.get(opt_out) is not None:
            unsubscribed = bool(record.get(opt_out))
        return CrmContact(str(record_id), email, updated, properties, unsubscribed=unsubscribed)

    def fetch_changes(self, since: datetime | None) -> Iterator[CrmContact]:
        """Contacts changed or deleted since ``since``, oldest first (``queryAll``)."""
        where = f" WHERE SystemModstamp >= {_soql_time(since)}" if since is not None else ""
        # Field names are validated API names and the time is formatted here: nothing in the
        # query comes from a request.
        soql = f"SELECT {self._select} FROM Contact{where} ORDER BY SystemModstamp ASC"  # noqa: S608
        for record in self._query(soql, include_deleted=True):
            contact = self._contact(record)
            if contact is not None:
                yield contact

    def push_engagement(self, updates: Sequence[EngagementUpdate]) -> list[PushFailure]:
        """One composite/sobjects PATCH of up to 200 records; per-record failures returned."""
        records: list[dict[str, Any]] = []
        ids: list[str] = []
        for update in updates:
            values = {
                self.options.engagement_fields[key]: _wire_value(value)
                for key, value in update.properties.items()
                if key in self.options.engagement_fields and value is not None
            }
            if values:
                record = {"attributes": {"type": "Contact"}, "id": update.external_id}
                records.append({**record, **values})
                ids.append(update.external_id)
        if not records:
            return []
        results = self._request(
            "PATCH",
            self._api("composite/sobjects"),
            "updating Salesforce contacts",
            json_body={"allOrNone": False, "records": records},
        )
        failures = []
        for record_id, result in zip(ids, results or [], strict=False):
            if result.get("success"):
                continue
            errors = result.get("errors") or [{}]
            code = str(errors[0].get("statusCode") or "")
            message = f"{code}: {errors[0].get('message') or ''}"[:300]
            failures.append(PushFailure(record_id, message, missing=code in _GONE))
        return failures

    # -- notifications -------------------------------------------------------------------
    def verify_webhook(self, headers: Mapping[str, str], body: bytes) -> bool:
        """Whether the notification carries a valid, recent ``X-Postwise-Signature``."""
        return verify(self.options.webhook_secret.get_secret_value(), headers, body)

    def parse_webhook(self, body: bytes) -> list[CrmContact]:
        """Deleted records as such; created, changed or undeleted ones read back by id."""
        try:
            payload = json.loads(body)
        except ValueError:
            raise ValueError("not JSON") from None
        events = payload.get("events") if isinstance(payload, Mapping) else payload
        if isinstance(payload, Mapping) and "ChangeEventHeader" in payload:
            events = [payload]
        if not isinstance(events, list):
            raise ValueError('expected a JSON array of change events or {"events": [...]}')
        latest: dict[str, tuple[int, bool]] = {}
        for event in events:
            header = event.get("ChangeEventHeader") if isinstance(event, Mapping) else None
            if not isinstance(header, Mapping) or header.get("entityName") != "Contact":
                continue
            change = str(header.get("changeType") or "")
            at = _event_millis(header.get("commitTimestamp"))
            for record_id in header.get("recordIds") or []:
                if not isinstance(record_id, str) or not _ID_RE.match(record_id):
                    raise ValueError(f"{str(record_id)[:40]!r} is not a Salesforce record id")
                if record_id not in latest or at >= latest[record_id][0]:
                    latest[record_id] = (at, change == "DELETE")
        changes = [
            CrmContact(rid, "", datetime.fromtimestamp(at / 1000, UTC), deleted=True)
            for rid, (at, deleted) in latest.items()
            if deleted
        ]
        changed = [rid for rid, (_, deleted) in latest.items() if not deleted]
        for start in range(0, len(changed), _READ_BATCH):
            ids = ", ".join(f"'{rid}'" for rid in changed[start : start + _READ_BATCH])
            # Every id matched _ID_RE above: letters and digits only.
            soql = f"SELECT {self._select} FROM Contact WHERE Id IN ({ids})"  # noqa: S608
            for record in self._query(soql, include_deleted=False):
                contact = self._contact(record)
                if contact is not None:
                    changes.append(contact)
        return changes

    def close(self) -> None:
        """Close pooled connections."""
        self._http.close()
