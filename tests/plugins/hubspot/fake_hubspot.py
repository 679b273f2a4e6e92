"""A local HTTP server speaking HubSpot's CRM v3 contacts wire format, for tests.

It checks ``Authorization: Bearer <token>`` (401 ``INVALID_AUTHENTICATION`` otherwise) and
answers the endpoints the connector uses as HubSpot documents them:

* ``POST /crm/v3/objects/contacts/search``: ``filterGroups`` with ``lastmodifieddate`` ``GTE``
  (epoch ms), ``sorts`` ascending, ``limit`` at most 200, ``after`` paging that stops at
  ``result_limit`` (HubSpot's 10,000; 400 beyond it);
* ``GET /crm/v3/objects/contacts?archived=true``: archived contacts with ``archivedAt``;
* ``POST /crm/v3/objects/contacts/batch/read``: 200, or 207 with ``errors`` for unknown ids;
* ``POST /crm/v3/objects/contacts/batch/update``: at most 100 inputs; 207 with an
  ``OBJECT_NOT_FOUND`` error listing unknown ids; 400 ``VALIDATION_ERROR`` for a property the
  account does not define.

``reply()`` scripts the next answers (any status, headers and body) to simulate rate limits
and server errors.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

TOKEN = "pat-na1-test-token"
BASE = "/crm/v3/objects/contacts"
NOT_FOUND_MESSAGE = "Could not get some CONTACT objects, they may be deleted or not exist."


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Received:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


def iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class Contact:
    id: str
    properties: dict[str, str]
    updated_at: datetime
    created_at: datetime
    archived_at: datetime | None = None

    def wire(self, wanted: list[str] | None) -> dict[str, Any]:
        props = {
            "hs_object_id": self.id,
            "createdate": iso(self.created_at),
            "lastmodifieddate": iso(self.updated_at),
        }
        for name in wanted or ["email", "firstname", "lastname"]:
            if name in self.properties:
                props[name] = self.properties[name]
            else:
                props.setdefault(name, None)  # type: ignore[arg-type]
        wire = {
            "id": self.id,
            "properties": props,
            "createdAt": iso(self.created_at),
            "updatedAt": iso(self.updated_at),
            "archived": self.archived_at is not None,
        }
        if self.archived_at is not None:
            wire["archivedAt"] = iso(self.archived_at)
        return wire


class FakeHubSpot:
    """Start with :meth:`start`, stop with :meth:`stop`; ``url`` is its base URL."""

    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.contacts: dict[str, Contact] = {}
        self.defined_properties = {
            "email",
            "firstname",
            "lastname",
            "country",
            "hs_email_optout",
            "hs_merged_object_ids",
            "plan",
            "postwise_engagement_score",
            "postwise_last_open",
            "postwise_last_click",
            "postwise_unsubscribed",
        }
        self.result_limit = 10_000
        #: Ids merged into other records; a write to one is a client bug (recorded).
        self.merged_away: set[str] = set()
        self.writes_to_merged: list[str] = []
        #: From this many received requests on, every answer is ``outage`` (a vendor down
        #: mid-sync: an HTML error page, truncated JSON, a 503...).
        self.outage_after: int | None = None
        #: The burst limit HubSpot enforces on private apps ("TEN_SECONDLY_ROLLING": at most
        #: ``max`` calls in any rolling window of ``seconds``), answered as HubSpot does: 429
        #: with the X-HubSpot-RateLimit-* headers and no Retry-After. Time is ``now``, moved by
        #: ``advance`` (the connector's sleep) so tests do not wait.
        self.burst: tuple[int, float] | None = None
        self.now = 0.0
        self._hits: deque[float] = deque()
        self.outage = Reply(502, b"<html><body><h1>502 Bad Gateway</h1></body></html>")
        self.received: list[Received] = []
        self.clock = datetime.now(UTC) - timedelta(hours=1)
        self._next_id = 1000
        self._script: deque[tuple[str, Reply]] = deque()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # -- state -------------------------------------------------------------------------
    def tick(self) -> datetime:
        self.clock += timedelta(seconds=1)
        return self.clock

    def add(self, email: str, **properties: str) -> str:
        with self._lock:
            self._next_id += 1
            cid = str(self._next_id)
            now = self.tick()
            self.contacts[cid] = Contact(cid, {"email": email, **properties}, now, now)
            return cid

    def change(self, cid: str, **properties: str) -> None:
        with self._lock:
            contact = self.contacts[cid]
            contact.properties.update(properties)
            contact.updated_at = self.tick()

    def archive(self, cid: str) -> None:
        with self._lock:
            self.contacts[cid].archived_at = self.tick()

    def merge(self, primary: str, secondary: str, *, new_id: str | None = None) -> str:
        """Merge ``secondary`` into ``primary`` as HubSpot does: the merged-away record is gone
        (its id now resolves to the survivor), the survivor lists it in
        ``hs_merged_object_ids``; with ``new_id`` the survivor gets a new id as well."""
        with self._lock:
            survivor = self.contacts.pop(primary)
            gone = self.contacts.pop(secondary)
            if new_id is not None:
                survivor.id = new_id
            merged = [
                *str(survivor.properties.get("hs_merged_object_ids") or "").split(";"),
                secondary,
                *([primary] if new_id else []),
            ]
            survivor.properties["hs_merged_object_ids"] = ";".join(m for m in merged if m)
            for key, value in gone.properties.items():
                survivor.properties.setdefault(key, value)
            survivor.updated_at = self.tick()
            self.contacts[survivor.id] = survivor
            self.merged_away.update({secondary, primary} - {survivor.id})
            return survivor.id

    def advance(self, seconds: float) -> None:
        """Let ``seconds`` pass on the fake's clock (pass as the connector's sleep)."""
        with self._lock:
            self.now += seconds

    def reply(self, path_prefix: str, *replies: Reply) -> None:
        """Answer the next requests whose path starts with ``path_prefix`` with ``replies``."""
        with self._lock:
            self._script.extend((path_prefix, r) for r in replies)

    def requests(self, path: str) -> list[Received]:
        return [r for r in self.received if r.path == path]

    # -- server ------------------------------------------------------------------------
    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeHubSpot:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: Any) -> None:
                pass

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                body = json.loads(raw) if raw else None
                parts = urlsplit(self.path)
                received = Received(
                    method, parts.path, parse_qs(parts.query), dict(self.headers), body
                )
                status, payload, headers = fake.handle(received)
                raw_reply = isinstance(payload, bytes)  # an HTML page, truncated JSON...
                if raw_reply:
                    data = payload
                else:
                    data = json.dumps(payload).encode() if payload is not None else b""
                self.send_response(status)
                self.send_header(
                    "Content-Type",
                    "text/html" if raw_reply else "application/json;charset=utf-8",
                )
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    # -- HubSpot -----------------------------------------------------------------------
    def handle(self, request: Received) -> tuple[int, Any, dict[str, str]]:
        with self._lock:
            self.received.append(request)
            if self.outage_after is not None and len(self.received) > self.outage_after:
                return self.outage.status, self.outage.body, self.outage.headers
            if self.burst is not None:
                limit, seconds = self.burst
                while self._hits and self._hits[0] <= self.now - seconds:
                    self._hits.popleft()
                limit_headers = {
                    "X-HubSpot-RateLimit-Interval-Milliseconds": str(int(seconds * 1000)),
                    "X-HubSpot-RateLimit-Max": str(limit),
                    "X-HubSpot-RateLimit-Remaining": str(max(0, limit - len(self._hits) - 1)),
                }
                if len(self._hits) >= limit:
                    body = {
                        "status": "error",
                        "message": "You have reached your ten_secondly_rolling limit.",
                        "errorType": "RATE_LIMIT",
                        "policyName": "TEN_SECONDLY_ROLLING",
                    }
                    return 429, body, {**limit_headers, "X-HubSpot-RateLimit-Remaining": "0"}
                self._hits.append(self.now)
            if self._script and request.path.startswith(self._script[0][0]):
                scripted = self._script.popleft()[1]
                return scripted.status, scripted.body, scripted.headers
        if request.headers.get("Authorization") != f"Bearer {self.token}":
            return (
                401,
                self.error("INVALID_AUTHENTICATION", "Authentication credentials not found."),
                {},
            )
        with self._lock:
            if request.method == "POST" and request.path == f"{BASE}/search":
                return self.search(request.body or {})
            if request.method == "GET" and request.path == BASE:
                return self.list_page(request.query)
            if request.method == "POST" and request.path == f"{BASE}/batch/read":
                return self.batch_read(request.body or {})
            if request.method == "POST" and request.path == f"{BASE}/batch/update":
                return self.batch_update(request.body or {})
        return 404, self.error("OBJECT_NOT_FOUND", "resource not found"), {}

    @staticmethod
    def error(category: str, message: str, **context: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "status": "error",
            "message": message,
            "correlationId": "00000000-0000-0000-0000-000000000000",
            "category": category,
        }
        if context:
            body["context"] = context
        return body

    def search(self, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        limit = int(body.get("limit") or 10)
        if limit > 200:
            return 400, self.error("VALIDATION_ERROR", "limit must be at most 200"), {}
        offset = int(body.get("after") or 0)
        if offset >= self.result_limit:
            return 400, self.error("VALIDATION_ERROR", "paging past the search limit"), {}
        floor_ms: int | None = None
        for group in body.get("filterGroups") or []:
            for flt in group.get("filters") or []:
                assert flt["propertyName"] == "lastmodifieddate" and flt["operator"] == "GTE"
                floor_ms = int(flt["value"])
        sorts = body.get("sorts") or []
        assert sorts == [{"propertyName": "lastmodifieddate", "direction": "ASCENDING"}], sorts
        matching = sorted(
            (
                c
                for c in self.contacts.values()
                if c.archived_at is None
                and (floor_ms is None or int(c.updated_at.timestamp() * 1000) >= floor_ms)
            ),
            key=lambda c: (c.updated_at, int(c.id)),
        )
        page = matching[offset : offset + limit]
        result: dict[str, Any] = {
            "total": len(matching),
            "results": [c.wire(body.get("properties")) for c in page],
        }
        if offset + limit < len(matching):
            after = str(offset + limit)
            result["paging"] = {"next": {"after": after, "link": f"?after={after}"}}
        return 200, result, {}

    def list_page(self, query: dict[str, list[str]]) -> tuple[int, Any, dict[str, str]]:
        archived = query.get("archived", ["false"])[0].lower() == "true"
        limit = int(query.get("limit", ["10"])[0])
        offset = int(query.get("after", ["0"])[0])
        matching = sorted(
            (c for c in self.contacts.values() if (c.archived_at is not None) == archived),
            key=lambda c: int(c.id),
        )
        page = matching[offset : offset + limit]
        wanted = query.get("properties", ["email"])[0].split(",")
        result: dict[str, Any] = {"results": [c.wire(wanted) for c in page]}
        if offset + limit < len(matching):
            after = str(offset + limit)
            result["paging"] = {"next": {"after": after, "link": f"?after={after}"}}
        return 200, result, {}

    def batch_read(self, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        ids = [i["id"] for i in body.get("inputs") or []]
        found = [
            self.contacts[i]
            for i in ids
            if i in self.contacts and self.contacts[i].archived_at is None
        ]
        missing = [i for i in ids if i not in {c.id for c in found}]
        result: dict[str, Any] = {
            "status": "COMPLETE",
            "results": [c.wire(body.get("properties")) for c in found],
        }
        if missing:
            result["numErrors"] = 1
            result["errors"] = [
                {
                    "status": "error",
                    "category": "OBJECT_NOT_FOUND",
                    "message": NOT_FOUND_MESSAGE,
                    "context": {"ids": missing},
                }
            ]
            return 207, result, {}
        return 200, result, {}

    def batch_update(self, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        inputs = body.get("inputs") or []
        self.writes_to_merged.extend(i["id"] for i in inputs if i.get("id") in self.merged_away)
        if len(inputs) > 100:
            return 400, self.error("VALIDATION_ERROR", "at most 100 inputs"), {}
        for item in inputs:
            unknown = set(item.get("properties") or {}) - self.defined_properties
            if unknown:
                return (
                    400,
                    self.error(
                        "VALIDATION_ERROR",
                        f"Property values were not valid: {sorted(unknown)} do not exist",
                    ),
                    {},
                )
        missing = [
            i["id"]
            for i in inputs
            if i["id"] not in self.contacts or self.contacts[i["id"]].archived_at is not None
        ]
        results = []
        for item in inputs:
            if item["id"] in missing:
                continue
            contact = self.contacts[item["id"]]
            contact.properties.update(item["properties"])
            contact.updated_at = self.tick()
            results.append(contact.wire(list(item["properties"])))
        result: dict[str, Any] = {"status": "COMPLETE", "results": results}
        if missing:
            result["numErrors"] = 1
            result["errors"] = [
                {
                    "status": "error",
                    "category": "OBJECT_NOT_FOUND",
                    "message": NOT_FOUND_MESSAGE,
                    "context": {"ids": missing},
                }
            ]
            return 207, result, {}
        return 200, result, {}
