"""The contract suite of signed webhooks (ESP events and CRM notifications alike).

Every webhook built on :class:`postwise.server.webhooks.SignedWebhookController` must take a signed
request once and refuse, with 401 and nothing stored or queued, a request that is unsigned,
tampered with, signed too long ago, or played back. Subclass :class:`SignedWebhookContract` in
your plugin's tests and say how the vendor signs::

    class TestAcmeWebhook(SignedWebhookContract):
        path = "/hooks/acme/events"

        def signed_request(self, at):
            body = json.dumps([{"event": "open", "ts": int(at), ...}]).encode()
            return body, {"X-Acme-Signature": sign(SECRET, body, at), "X-Acme-Time": str(at)}

The suite uses the ``client`` and ``runtime`` fixtures of the postwise pytest plugin; configure
the secret through your ``settings`` fixture. "Nothing stored" is read from the database (the
rows of every table) and Redis (the entries of every stream, list and RQ queue).
"""

from __future__ import annotations

import time
from typing import Any, ClassVar

import pytest
import sqlalchemy as sa

from postwise.db.models import SQLModel
from postwise.runtime import Runtime

__all__ = ["SignedWebhookContract", "stored_state"]


def stored_state(runtime: Runtime) -> dict[str, int]:
    """How much is stored: rows per table, entries per Redis stream and list."""
    state: dict[str, int] = {}
    with runtime.engine.connect() as connection:
        for table in SQLModel.metadata.sorted_tables:
            count = connection.execute(sa.select(sa.func.count()).select_from(table)).scalar()
            state[f"table:{table.name}"] = int(count or 0)
    redis = runtime.redis
    for key in redis.scan_iter(count=500):
        kind = redis.type(key)
        kind = kind.decode() if isinstance(kind, bytes) else kind
        name = key.decode() if isinstance(key, bytes) else str(key)
        if kind == "stream":
            state[f"stream:{name}"] = int(redis.xlen(key))
        elif kind == "list":
            state[f"list:{name}"] = int(redis.llen(key))
        elif kind == "zset" and name.startswith("rq:"):
            state[f"zset:{name}"] = int(redis.zcard(key))
    return state


class SignedWebhookContract:
    """A signed webhook: authentic requests once, everything else 401 with nothing stored."""

    #: The route the vendor posts to.
    path: ClassVar[str]
    #: The replay window the webhook is configured with, in seconds.
    max_age_seconds: ClassVar[float] = 300.0
    #: Whether the vendor's signature covers a time (else staleness is judged per event).
    signs_time: ClassVar[bool] = True

    client: Any
    runtime: Runtime

    def signed_request(self, at: float) -> tuple[bytes, dict[str, str]]:
        """A request the vendor would send at ``at`` (Unix seconds): body and headers (the
        signature among them), carrying at least one event that stores something."""
        raise NotImplementedError("return (body, headers) signed as the vendor signs")

    def signature_headers(self) -> tuple[str, ...]:
        """The headers that carry the signature (removed for the unsigned request)."""
        _, headers = self.signed_request(time.time())
        return tuple(name for name in headers if name.lower() != "content-type")

    @pytest.fixture(autouse=True)
    def _webhook_app(self, client: Any, runtime: Runtime) -> None:
        self.client, self.runtime = client, runtime

    def post(self, body: bytes, headers: dict[str, str]) -> Any:
        return self.client.post(self.path, content=body, headers=headers)

    def assert_refused(self, body: bytes, headers: dict[str, str]) -> Any:
        before = stored_state(self.runtime)
        response = self.post(body, headers)
        assert response.status_code == 401, response.text
        assert isinstance(response.json().get("detail"), str) and response.json()["detail"]
        assert stored_state(self.runtime) == before, "a refused request stored something"
        return response

    def test_a_signed_request_is_taken(self) -> None:
        before = stored_state(self.runtime)
        response = self.post(*self.signed_request(time.time() - 5))
        assert response.status_code == 200, response.text
        assert stored_state(self.runtime) != before, "the signed request stored nothing"

    def test_an_unsigned_request_is_refused(self) -> None:
        body, headers = self.signed_request(time.time() - 5)
        names = {name.lower() for name in self.signature_headers()}
        self.assert_refused(body, {k: v for k, v in headers.items() if k.lower() not in names})

    def test_a_tampered_body_is_refused(self) -> None:
        body, headers = self.signed_request(time.time() - 5)
        self.assert_refused(body + b" ", headers)

    def test_a_request_signed_too_long_ago_is_refused(self) -> None:
        self.assert_refused(*self.signed_request(time.time() - self.max_age_seconds - 120))

    def test_a_request_signed_in_the_future_is_refused(self) -> None:
        if not self.signs_time:
            pytest.skip("the vendor's signature covers no time")
        self.assert_refused(*self.signed_request(time.time() + 3600))

    def test_a_replayed_request_is_refused(self) -> None:
        body, headers = self.signed_request(time.time() - 5)
        assert self.post(body, headers).status_code == 200
        response = self.assert_refused(body, headers)
        assert "replay" in response.json()["detail"]
