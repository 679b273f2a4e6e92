"""A local HTTP server speaking the Salesforce REST wire format the connector uses, for tests.

* ``POST /services/oauth2/token``: client credentials (form ``client_id``/``client_secret``) or
  a JWT bearer assertion verified with the test key; answers ``access_token``/``instance_url``
  or ``{"error", "error_description"}``;
* ``GET /services/data/v60.0/query`` and ``/queryAll``: a small SOQL subset (``SELECT`` fields
  ``FROM Contact``, ``WHERE SystemModstamp >= <time>`` or ``WHERE Id IN (...)``, ``ORDER BY
  SystemModstamp ASC``), ``batchSize`` from ``Sforce-Query-Options``, ``nextRecordsUrl`` paging;
  ``query`` leaves deleted records out;
* ``PATCH /services/data/v60.0/composite/sobjects``: at most 200 records, one result each.

A request without a valid session gets 401 ``INVALID_SESSION_ID``; ``expire_sessions()``
invalidates the tokens issued so far. ``reply()`` scripts the next answers.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

CLIENT_ID = "3MVG9test.consumer.key"
CLIENT_SECRET = "test-consumer-secret"
API = "/services/data/v60.0"


@dataclass(frozen=True)
class Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Record:
    id: str
    fields: dict[str, Any]
    modstamp: datetime
    deleted: bool = False


def sf_time(value: datetime) -> str:
    return (
        value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        + f"{value.microsecond // 1000:03d}+0000"
    )


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class FakeSalesforce:
    def __init__(self, public_key: rsa.RSAPublicKey | None = None) -> None:
        self.public_key = public_key
        self.records: dict[str, Record] = {}
        self.custom_fields = {
            "Postwise_Engagement_Score__c",
            "Postwise_Last_Open__c",
            "Postwise_Last_Click__c",
            "Postwise_Unsubscribed__c",
        }
        self.tokens: set[str] = set()
        # JWT bearer: the audiences Salesforce accepts and the org's users.
        self.audiences = {"https://login.salesforce.com", "https://test.salesforce.com"}
        self.usernames = {"integration@example.com"}
        self.token_requests: list[dict[str, list[str]]] = []
        self.received: list[tuple[str, str, dict[str, str], Any]] = []
        self.clock = datetime.now(UTC) - timedelta(hours=1)
        self._cursors: dict[str, tuple[list[dict[str, Any]], int]] = {}
        self._script: deque[tuple[str, Reply]] = deque()
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None
        self._next = 0

    def tick(self) -> datetime:
        self.clock += timedelta(seconds=1)
        return self.clock

    def add(self, email: str, **fields: Any) -> str:
        with self._lock:
            self._next += 1
            rid = f"003{self._next:015d}"
            base = {
                "Email": email,
                "FirstName": None,
                "LastName": "Unknown",
                "HasOptedOutOfEmail": False,
            }
            self.records[rid] = Record(rid, {**base, **fields}, self.tick())
            return rid

    def change(self, rid: str, **fields: Any) -> None:
        with self._lock:
            self.records[rid].fields.update(fields)
            self.records[rid].modstamp = self.tick()

    def delete(self, rid: str) -> None:
        with self._lock:
            self.records[rid].deleted = True
            self.records[rid].modstamp = self.tick()

    def expire_sessions(self) -> None:
        self.tokens.clear()

    def reply(self, path_prefix: str, *replies: Reply) -> None:
        with self._lock:
            self._script.extend((path_prefix, r) for r in replies)

    def requests(self, prefix: str) -> list[tuple[str, str, dict[str, str], Any]]:
        return [r for r in self.received if r[1].startswith(prefix)]

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self) -> FakeSalesforce:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args: Any) -> None:
                pass

            def _handle(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                status, payload, headers = fake.handle(method, self.path, dict(self.headers), raw)
                data = json.dumps(payload).encode() if payload is not None else b""
                self.send_response(status)
                self.send_header("Content-Type", "application/json;charset=UTF-8")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self) -> None:
                self._handle("GET")

            def do_POST(self) -> None:
                self._handle("POST")

            def do_PATCH(self) -> None:
                self._handle("PATCH")

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def handle(
        self, method: str, target: str, headers: dict[str, str], raw: bytes
    ) -> tuple[int, Any, dict[str, str]]:
        parts = urlsplit(target)
        with self._lock:
            body: Any = (
                raw.decode()
                if parts.path.endswith("/token")
                else (json.loads(raw) if raw else None)
            )
            self.received.append((method, parts.path, headers, body))
            if self._script and parts.path.startswith(self._script[0][0]):
                scripted = self._script.popleft()[1]
                return scripted.status, scripted.body, scripted.headers
            if parts.path == "/services/oauth2/token":
                return self.token(parse_qs(body))
            if headers.get("Authorization", "").removeprefix("Bearer ") not in self.tokens:
                return (
                    401,
                    [{"message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID"}],
                    {},
                )
            if method == "GET" and parts.path in (f"{API}/query", f"{API}/queryAll"):
                query = parse_qs(parts.query)["q"][0]
                size = int(headers.get("Sforce-Query-Options", "batchSize=2000").split("=")[1])
                return self.query(query, include_deleted=parts.path.endswith("All"), size=size)
            if method == "GET" and parts.path.startswith(f"{API}/query/"):
                return self.next_page(parts.path.rsplit("/", 1)[1])
            if method == "PATCH" and parts.path == f"{API}/composite/sobjects":
                return self.update(body)
        return (
            404,
            [{"errorCode": "NOT_FOUND", "message": "The requested resource does not exist"}],
            {},
        )

    def token(self, form: dict[str, list[str]]) -> tuple[int, Any, dict[str, str]]:
        self.token_requests.append(form)
        grant = form.get("grant_type", [""])[0]
        ok = False
        if grant == "client_credentials":
            ok = form.get("client_id") == [CLIENT_ID] and form.get("client_secret") == [
                CLIENT_SECRET
            ]
        elif grant == "urn:ietf:params:oauth:grant-type:jwt-bearer" and self.public_key:
            return self.jwt_token(form)
        if not ok:
            return (
                400,
                {"error": "invalid_client", "error_description": "invalid client credentials"},
                {},
            )
        return self.issue_token()

    def jwt_token(self, form: dict[str, list[str]]) -> tuple[int, Any, dict[str, str]]:
        """The documented checks of the OAuth 2.0 JWT bearer flow (Salesforce Help, "OAuth 2.0
        JWT Bearer Flow for Server-to-Server Integration"): RS256 signature by the app's
        certificate, ``iss`` the consumer key, ``aud`` https://login.salesforce.com,
        https://test.salesforce.com or a community URL (a My Domain URL is refused with
        ``invalid_grant: audience is invalid``), ``sub`` a user of the org, ``exp`` not past
        and within three minutes."""
        assert self.public_key is not None
        try:
            header, claims_b64, signature = form["assertion"][0].split(".")
            self.public_key.verify(
                _unb64(signature),
                f"{header}.{claims_b64}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
            claims = json.loads(_unb64(claims_b64))
        except Exception:
            return 400, {"error": "invalid_grant", "error_description": "invalid assertion"}, {}
        if claims.get("iss") != CLIENT_ID:
            return (
                400,
                {"error": "invalid_client_id", "error_description": "client identifier invalid"},
                {},
            )
        if claims.get("aud") not in self.audiences:
            return 400, {"error": "invalid_grant", "error_description": "audience is invalid"}, {}
        if claims.get("sub") not in self.usernames:
            return (
                400,
                {
                    "error": "invalid_grant",
                    "error_description": "user hasn't approved this consumer",
                },
                {},
            )
        now = time.time()
        exp = claims.get("exp")
        if not isinstance(exp, int) or exp < now or exp > now + 180 + 5:
            return (
                400,
                {"error": "invalid_grant", "error_description": "expired authorization code"},
                {},
            )
        return self.issue_token()

    def issue_token(self) -> tuple[int, Any, dict[str, str]]:
        token = secrets.token_hex(12)
        self.tokens.add(token)
        return (
            200,
            {
                "access_token": token,
                "instance_url": self.url,
                "token_type": "Bearer",
                "id": f"{self.url}/id/00D/005",
                "issued_at": "1700000000000",
            },
            {},
        )

    def query(
        self, soql: str, *, include_deleted: bool, size: int
    ) -> tuple[int, Any, dict[str, str]]:
        match = re.match(
            r"SELECT (.+?) FROM Contact(?: WHERE (.+?))?(?: ORDER BY SystemModstamp ASC)?$", soql
        )
        if not match:
            return 400, [{"errorCode": "MALFORMED_QUERY", "message": soql[:80]}], {}
        fields = [f.strip() for f in match.group(1).split(",")]
        unknown = [
            f
            for f in fields
            if f
            not in {
                "Id",
                "Email",
                "SystemModstamp",
                "IsDeleted",
                "FirstName",
                "LastName",
                "HasOptedOutOfEmail",
                "MailingCountryCode",
                "Plan__c",
            }
        ]
        if unknown:
            return (
                400,
                [{"errorCode": "INVALID_FIELD", "message": f"No such column '{unknown[0]}'"}],
                {},
            )
        rows = [r for r in self.records.values() if include_deleted or not r.deleted]
        where = match.group(2) or ""
        if where.startswith("SystemModstamp >= "):
            since = datetime.strptime(where.split(">= ")[1], "%Y-%m-%dT%H:%M:%SZ").replace(
                tzinfo=UTC
            )
            rows = [r for r in rows if r.modstamp >= since]
        elif where.startswith("Id IN ("):
            ids = set(re.findall(r"'([A-Za-z0-9]+)'", where))
            rows = [r for r in rows if r.id in ids]
        rows.sort(key=lambda r: r.modstamp)
        wire = []
        for r in rows:
            item: dict[str, Any] = {
                "attributes": {"type": "Contact", "url": f"{API}/sobjects/Contact/{r.id}"}
            }
            values = {
                **r.fields,
                "Id": r.id,
                "SystemModstamp": sf_time(r.modstamp),
                "IsDeleted": r.deleted,
            }
            item.update({f: values.get(f) for f in fields})
            wire.append(item)
        return self._page(wire, size, cursor=secrets.token_hex(4))

    def _page(
        self, rows: list[dict[str, Any]], size: int, cursor: str, offset: int = 0
    ) -> tuple[int, Any, dict[str, str]]:
        page = rows[offset : offset + size]
        done = offset + size >= len(rows)
        body: dict[str, Any] = {"totalSize": len(rows), "done": done, "records": page}
        if not done:
            key = f"01g{cursor}-{offset + size}"
            self._cursors[key] = (rows, size)
            body["nextRecordsUrl"] = f"{API}/query/{key}"
        return 200, body, {}

    def next_page(self, key: str) -> tuple[int, Any, dict[str, str]]:
        rows, size = self._cursors.pop(key)
        cursor, offset = key[3:].split("-")
        return self._page(rows, size, cursor, int(offset))

    def update(self, body: dict[str, Any]) -> tuple[int, Any, dict[str, str]]:
        records = body.get("records") or []
        if len(records) > 200:
            return 400, [{"errorCode": "EXCEEDED_ID_LIMIT", "message": "record limit exceeded"}], {}
        results = []
        for item in records:
            rid = item["id"]
            unknown = [
                k for k in item if k not in ("attributes", "id") and k not in self.custom_fields
            ]
            if rid not in self.records or self.records[rid].deleted:
                results.append(
                    {
                        "id": rid,
                        "success": False,
                        "errors": [
                            {
                                "statusCode": "ENTITY_IS_DELETED",
                                "message": "entity is deleted",
                                "fields": [],
                            }
                        ],
                    }
                )
            elif unknown:
                results.append(
                    {
                        "id": rid,
                        "success": False,
                        "errors": [
                            {
                                "statusCode": "INVALID_FIELD",
                                "message": f"No such column '{unknown[0]}'",
                                "fields": unknown,
                            }
                        ],
                    }
                )
            else:
                self.records[rid].fields.update(
                    {k: v for k, v in item.items() if k not in ("attributes", "id")}
                )
                self.records[rid].modstamp = self.tick()
                results.append({"id": rid, "success": True, "errors": []})
        return 200, results, {}
