"""The ``hubspot`` CRM connector, driven by the official client (``hubspot-api-client``).

Wire format (CRM v3 contacts API):

* **changes**: ``POST /crm/v3/objects/contacts/search`` filtered on ``lastmodifieddate`` GTE
  the poll's start (epoch milliseconds), sorted ascending, paged with ``after``. HubSpot's
  search returns at most 10,000 results per query, so a longer window is read as several
  queries, each starting at the last ``lastmodifieddate`` seen;
* **deletions**: ``contact.deletion`` webhooks, and a reconciliation every
  ``archived_reconcile_hours`` listing ``GET /crm/v3/objects/contacts?archived=true`` (archived
  contacts are not searchable and the listing is by id, so it must be read whole: 1 call per 100
  archived contacts; doing that on every poll exhausts the daily limit of a large account). An
  idle poll costs one search call;
* **webhooks**: the payload is a JSON array of events carrying ids only (``contact.creation``,
  ``contact.propertyChange``, ``contact.restore``, ``contact.merge``, ``contact.deletion``,
  ``contact.privacyDeletion`` and their ``object.*`` forms for ``objectTypeId`` ``0-1``); the
  changed contacts are read with ``POST /crm/v3/objects/contacts/batch/read``;
* **engagement**: ``POST /crm/v3/objects/contacts/batch/update``, 100 contacts per call. A 207
  answer lists per-record errors; ``OBJECT_NOT_FOUND`` means the contact is gone.

Every call is retried on 429 (honouring ``Retry-After``) and 5xx with backoff
(:class:`postwise.crm.retry.RetryPolicy`); 401/403 raise ConfigurationError (the token or its
scopes). The client's own DEBUG logging prints response bodies (names, addresses), so its
loggers are kept at INFO.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from datetime import time as dt_time
from typing import Any, ClassVar, TypeVar
from zoneinfo import ZoneInfo

import urllib3
from hubspot import HubSpot
from hubspot.crm.contacts import (
    BatchInputSimplePublicObjectBatchInput,
    BatchReadInputSimplePublicObjectId,
    Filter,
    FilterGroup,
    PublicObjectSearchRequest,
    SimplePublicObjectBatchInput,
    SimplePublicObjectId,
)
from hubspot.crm.contacts.exceptions import ApiException
from urllib3.util.retry import Retry

from postwise.crm.connector import (
    CrmConnector,
    CrmContact,
    CrmLimitReachedError,
    CrmUnavailableError,
    EngagementUpdate,
    PushFailure,
)
from postwise.crm.retry import Retryable, RetryPolicy, retry_after_seconds
from postwise.errors import ConfigurationError
from postwise_hubspot.options import HubSpotOptions
from postwise_hubspot.signature import SIGNATURE_HEADER, verify_v3

__all__ = ["HubSpotConnector"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Contacts the v3 contact object type is known as in ``object.*`` webhook events.
CONTACT_TYPE_ID = "0-1"
_CHANGE_EVENTS = frozenset({"creation", "propertyChange", "restore", "merge"})
#: The ids of the contacts merged into this one, ";"-separated (read-only, set by HubSpot).
MERGED_PROPERTY = "hs_merged_object_ids"
_DELETE_EVENTS = frozenset({"deletion", "privacyDeletion"})


def _event_millis(value: Any) -> int:
    """An event's time in epoch milliseconds; a missing one is the time it is received (never
    1970, which would date the change before everything else)."""
    if value in (None, "", 0, "0"):
        return int(time.time() * 1000)
    try:
        millis = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{str(value)[:40]!r} is not a time in epoch milliseconds") from None
    if millis <= 0:
        return int(time.time() * 1000)
    return millis


def _ms(value: datetime) -> str:
    return str(int(value.timestamp() * 1000))


def _aware(value: Any) -> datetime | None:
    if isinstance(value, datetime):
        return value.astimezone(UTC) if value.tzinfo else value.replace(tzinfo=UTC)
    if isinstance(value, str) and value:
        try:
            return _aware(datetime.fromisoformat(value.replace("Z", "+00:00")))
        except ValueError:
            return None
    return None


def _wire_value(value: Any) -> str:
    """A property value as HubSpot's API takes it (strings)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return str(value)


def _error_body(exc: ApiException) -> dict[str, Any]:
    try:
        body = json.loads(exc.body or b"{}")
    except ValueError:
        return {"message": str(exc.body or "")[:200]}
    return body if isinstance(body, dict) else {}


class HubSpotConnector(CrmConnector):
    """HubSpot's contacts; see the module docs for the wire format."""

    name = "hubspot"
    webhook_signature_header = SIGNATURE_HEADER
    push_batch_size = 100
    #: Most results HubSpot's search returns for one query (paging stops there).
    search_result_limit: ClassVar[int] = 10_000
    read_batch_size: ClassVar[int] = 100
    changes_ascending = True  # sorted by lastmodifieddate ASCENDING

    def __init__(
        self, options: HubSpotOptions, *, sleep: Callable[[float], None] = time.sleep
    ) -> None:
        token = options.access_token.get_secret_value()
        if not token:
            raise ConfigurationError(
                "crm_options.hubspot.access_token is not set: create a private app with the "
                "crm.objects.contacts.read and crm.objects.contacts.write scopes and set "
                "POSTWISE_CRM_OPTIONS__HUBSPOT__ACCESS_TOKEN"
            )
        self.options = options
        self.reconcile_interval = (
            timedelta(hours=options.archived_reconcile_hours) if options.poll_archived else None
        )
        self.retry = RetryPolicy(
            attempts=options.max_attempts, max_wait=options.max_retry_wait, sleep=sleep
        )
        # The client logs whole response bodies at DEBUG: personal data must not reach logs.
        logging.getLogger("hubspot").setLevel(logging.INFO)
        client = HubSpot(
            access_token=token,
            host=options.base_url,
            # urllib3 retries only connection failures; HTTP answers are retried below, where
            # Retry-After is honoured and a POST that may have been received is not resent.
            retry=Retry(total=2, connect=2, read=0, status=0, redirect=0),
        )
        contacts = client.crm.contacts
        self._search = contacts.search_api
        self._batch = contacts.batch_api
        self._basic = contacts.basic_api
        read = {"email", "lastmodifieddate", MERGED_PROPERTY, *options.properties.values()}
        read.update(options.attribute_properties)
        if options.unsubscribed_property:
            read.add(options.unsubscribed_property)
        self._read_properties = sorted(read)

    def _call(self, call: Callable[[], T], what: str) -> T:
        def attempt() -> T:
            try:
                result = call()
            except ApiException as exc:
                status = int(exc.status or 0)
                message = str(_error_body(exc).get("message") or exc.reason or "")[:300]
                if status == 429:
                    self._rate_limited(exc, message)
                if status >= 500 or status == 0:
                    wait = retry_after_seconds(dict(exc.headers or {}))
                    raise Retryable(f"HubSpot answered HTTP {status}: {message}", wait) from None
                if status in (401, 403):
                    raise ConfigurationError(
                        f"HubSpot refused the request (HTTP {status}: {message}); check "
                        "crm_options.hubspot.access_token and its scopes "
                        "crm.objects.contacts.read and crm.objects.contacts.write"
                    ) from None
                raise
            except urllib3.exceptions.HTTPError as exc:
                raise Retryable(f"cannot reach HubSpot at {self.options.base_url}: {exc}") from None
            if result is None or getattr(result, "results", ()) is None:
                # The client turns a body that is not JSON (an HTML maintenance page, a
                # truncated answer) into an empty object: taking it as "no more results" would
                # end the sync early, so it is an error.
                raise Retryable("HubSpot answered HTTP 200 with a body that is not valid JSON")
            return result

        return self.retry.run(attempt, what)

    def _rate_limited(self, exc: ApiException, message: str) -> None:
        """A 429: the daily limit pauses the connector until midnight in the account's time
        zone (when HubSpot resets it); the burst limit (``TEN_SECONDLY_ROLLING``, or
        ``SECONDLY`` for the search API) is waited out for a whole window, since HubSpot sends
        no ``Retry-After``: shorter backoffs would all land inside the same window."""
        headers = {str(k).lower(): str(v) for k, v in dict(exc.headers or {}).items()}
        policy = str(_error_body(exc).get("policyName") or "").upper()
        if policy == "DAILY" or headers.get("x-hubspot-ratelimit-daily-remaining") == "0":
            zone = ZoneInfo(self.options.account_timezone)
            local = datetime.now(zone)
            reset = datetime.combine(local.date() + timedelta(days=1), dt_time(), zone)
            raise CrmLimitReachedError(
                f"HubSpot's daily API limit is used up ({message}); it resets at midnight "
                f"{self.options.account_timezone}",
                reset.astimezone(UTC),
            ) from None
        wait = retry_after_seconds(headers)
        if wait is None:
            try:
                interval = int(headers.get("x-hubspot-ratelimit-interval-milliseconds", ""))
            except ValueError:
                interval = 0
            wait = interval / 1000 if interval > 0 else (1.0 if policy == "SECONDLY" else 10.0)
        raise Retryable(f"HubSpot answered HTTP 429 ({policy or 'rate limit'}): {message}", wait)

    def _contact(self, obj: Any) -> CrmContact | None:
        props: Mapping[str, Any] = obj.properties or {}
        updated = _aware(obj.updated_at) or _aware(props.get("lastmodifieddate"))
        email = props.get("email") or ""
        if updated is None or not email:
            return None  # a contact without an address cannot be mailed
        properties: dict[str, Any] = {
            field: props.get(name) for field, name in self.options.properties.items()
        }
        properties.update({name: props.get(name) for name in self.options.attribute_properties})
        unsubscribed: bool | None = None
        flag = props.get(self.options.unsubscribed_property)
        if self.options.unsubscribed_property and flag not in (None, ""):
            unsubscribed = str(flag).lower() == "true"
        merged = tuple(
            part.strip()
            for part in str(props.get(MERGED_PROPERTY) or "").split(";")
            if part.strip()
        )
        return CrmContact(
            external_id=str(obj.id),
            email=email,
            updated_at=updated,
            properties=properties,
            unsubscribed=unsubscribed,
            merged_ids=merged,
        )

    def _search_request(self, floor: datetime | None, after: str | None) -> Any:
        groups = []
        if floor is not None:
            groups = [
                FilterGroup(
                    filters=[
                        Filter(property_name="lastmodifieddate", operator="GTE", value=_ms(floor))
                    ]
                )
            ]
        return PublicObjectSearchRequest(
            filter_groups=groups,
            sorts=[{"propertyName": "lastmodifieddate", "direction": "ASCENDING"}],
            properties=self._read_properties,
            limit=self.options.page_size,
            after=after,
        )

    def fetch_changes(self, since: datetime | None) -> Iterator[CrmContact]:
        """Changed contacts by search, ascending by ``lastmodifieddate`` (deletions: webhooks
        and :meth:`reconcile_deletions`)."""
        floor = since
        while True:
            after: str | None = None
            last: datetime | None = None
            truncated = False
            while True:
                request = self._search_request(floor, after)
                page = self._call(
                    lambda r=request: self._search.do_search(  # type: ignore[misc]
                        public_object_search_request=r, _request_timeout=self.options.timeout
                    ),
                    "searching HubSpot contacts",
                )
                for obj in page.results or []:
                    last = _aware(obj.updated_at) or last
                    contact = self._contact(obj)
                    if contact is not None:
                        yield contact
                following = page.paging.next.after if page.paging and page.paging.next else None
                if not following:
                    break
                if int(following) >= self.search_result_limit:
                    truncated = True
                    break
                after = following
            if not truncated:
                break
            if last is None or (floor is not None and last <= floor):
                raise CrmUnavailableError(
                    f"more than {self.search_result_limit} HubSpot contacts share one "
                    "lastmodifieddate; HubSpot's search cannot page past them"
                )
            floor = last  # the next query starts where this one could not go on

    def reconcile_deletions(self, since: datetime | None) -> Iterator[CrmContact]:
        """Contacts archived since ``since``, from the whole recycle bin."""
        after: str | None = None
        while True:
            page = self._call(
                lambda a=after: self._basic.get_page(  # type: ignore[misc]
                    limit=100,
                    after=a,
                    archived=True,
                    properties=["email"],
                    _request_timeout=self.options.timeout,
                ),
                "listing archived HubSpot contacts",
            )
            for obj in page.results or []:
                archived_at = _aware(obj.archived_at) or _aware(obj.updated_at)
                if archived_at is None or (since is not None and archived_at < since):
                    continue
                yield CrmContact(str(obj.id), "", archived_at, deleted=True)
            following = page.paging.next.after if page.paging and page.paging.next else None
            if not following:
                return
            after = following

    def push_engagement(self, updates: Sequence[EngagementUpdate]) -> list[PushFailure]:
        """One batch update (at most 100 contacts); a contact HubSpot no longer has is
        reported missing, refused values are reported per contact."""
        failures: list[PushFailure] = []
        inputs: dict[str, dict[str, str]] = {}
        for update in updates:
            properties = {
                self.options.engagement_properties[key]: _wire_value(value)
                for key, value in update.properties.items()
                if key in self.options.engagement_properties and value is not None
            }
            if properties:
                inputs[update.external_id] = properties
        while inputs:
            body = BatchInputSimplePublicObjectBatchInput(
                inputs=[
                    SimplePublicObjectBatchInput(id=cid, properties=props)
                    for cid, props in inputs.items()
                ]
            )
            try:
                result = self._call(
                    lambda b=body: self._batch.update(  # type: ignore[misc]
                        batch_input_simple_public_object_batch_input=b,
                        _request_timeout=self.options.timeout,
                    ),
                    "updating HubSpot contacts",
                )
            except ApiException as exc:
                error = _error_body(exc)
                missing = self._ids(error.get("context")) & set(inputs)
                if error.get("category") == "OBJECT_NOT_FOUND" and missing:
                    # The whole batch was refused for the contacts that are gone: report those,
                    # send the rest again.
                    for cid in sorted(missing):
                        failures.append(PushFailure(cid, "not in HubSpot any more", missing=True))
                        del inputs[cid]
                    continue
                reason = f"HubSpot refused the batch (HTTP {exc.status}): {error.get('message')}"
                failures.extend(PushFailure(cid, reason[:300]) for cid in inputs)
                return failures
            for error_item in getattr(result, "errors", None) or []:
                ids = self._ids(error_item.context) & set(inputs)
                gone = error_item.category == "OBJECT_NOT_FOUND"
                for cid in sorted(ids):
                    reason = "not in HubSpot any more" if gone else str(error_item.message)[:300]
                    failures.append(PushFailure(cid, reason, missing=gone))
            return failures
        return failures

    @staticmethod
    def _ids(context: Any) -> set[str]:
        if not isinstance(context, Mapping):
            return set()
        ids = context.get("ids") or context.get("id") or []
        return {str(i) for i in ids} if isinstance(ids, list) else {str(ids)}

    def verify_webhook(self, headers: Mapping[str, str], body: bytes) -> bool:
        """Always ``False``: HubSpot signs the method and URL too (see :meth:`verify_request`)."""
        return False

    def verify_request(
        self, method: str, url: str, headers: Mapping[str, str], body: bytes
    ) -> bool:
        """Whether the request carries a valid, recent ``X-HubSpot-Signature-v3``."""
        secret = self.options.client_secret.get_secret_value()
        if not secret:
            log.warning(
                "hubspot webhook refused: crm_options.hubspot.client_secret is not set, so "
                "signatures cannot be checked"
            )
            return False
        return verify_v3(secret, method, url, headers, body)

    def parse_webhook(self, body: bytes) -> list[CrmContact]:
        """The contacts a webhook delivery names: deleted ones as such, changed ones read from
        HubSpot (webhooks carry ids only)."""
        try:
            events = json.loads(body)
        except ValueError:
            raise ValueError("not JSON") from None
        if not isinstance(events, list):
            raise ValueError("HubSpot sends a JSON array of events")
        latest: dict[str, tuple[int, bool]] = {}
        merged_into: dict[str, set[str]] = {}

        def note(object_id: Any, at: int, deleted: bool) -> None:
            key = str(object_id)
            if key not in latest or at >= latest[key][0]:
                latest[key] = (at, deleted)

        for event in events:
            if not isinstance(event, Mapping):
                continue
            kind = str(event.get("subscriptionType") or "")
            scope, _, action = kind.partition(".")
            if scope == "object" and str(event.get("objectTypeId")) != CONTACT_TYPE_ID:
                continue
            if scope not in ("contact", "object") or event.get("objectId") is None:
                continue
            at = _event_millis(event.get("occurredAt"))
            if action in _DELETE_EVENTS:
                note(event["objectId"], at, True)
            elif action == "merge":
                # The survivor is newObjectId when the merge gave it a new id, else the
                # primary; every other id is merged away: its links move to the survivor.
                primary = str(event.get("primaryObjectId") or event["objectId"])
                survivor = str(event.get("newObjectId") or primary)
                note(survivor, at, False)
                gone = {str(m) for m in event.get("mergedObjectIds") or []} | {primary}
                merged_into.setdefault(survivor, set()).update(gone - {survivor})
            elif action in _CHANGE_EVENTS:
                note(event["objectId"], at, False)
        changes = [
            CrmContact(cid, "", datetime.fromtimestamp(at / 1000, UTC), deleted=True)
            for cid, (at, deleted) in latest.items()
            if deleted
        ]
        changed = [cid for cid, (_, deleted) in latest.items() if not deleted]
        for start in range(0, len(changed), self.read_batch_size):
            ids = changed[start : start + self.read_batch_size]
            body_in = BatchReadInputSimplePublicObjectId(
                inputs=[SimplePublicObjectId(id=i) for i in ids],
                properties=self._read_properties,
                properties_with_history=[],
            )
            result = self._call(
                lambda b=body_in: self._batch.read(  # type: ignore[misc]
                    batch_read_input_simple_public_object_id=b,
                    archived=False,
                    _request_timeout=self.options.timeout,
                ),
                "reading HubSpot contacts",
            )
            for obj in result.results or []:
                contact = self._contact(obj)
                if contact is not None:
                    extra = merged_into.get(contact.external_id, set())
                    if extra - set(contact.merged_ids):
                        merged = tuple(sorted({*contact.merged_ids, *extra}))
                        contact = dataclasses.replace(contact, merged_ids=merged)
                    changes.append(contact)
        return changes

    def close(self) -> None:
        """Close the clients' connection pools."""
        for api in (self._search, self._batch, self._basic):
            api.api_client.close()
