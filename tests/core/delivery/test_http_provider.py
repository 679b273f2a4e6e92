"""postwise.delivery.http: what an HTTP-API provider's failed requests mean, against a real
local server (postwise.testing.http)."""

from __future__ import annotations

import socket
from collections.abc import Callable, Iterator

import httpx
import pytest

from postwise.delivery.http import HttpApiProvider, Verdict, rate_limited, retry_after_seconds
from postwise.delivery.provider import Outcome, OutgoingMessage, SendResult
from postwise.testing.contracts import ProviderContract
from postwise.testing.http import Answer, Received, Reply, ScriptedHttpServer


class EchoApi(ScriptedHttpServer):
    """An ESP that takes every message and answers with its id."""

    def answer(self, request: Received) -> Answer:
        return 200, {"id": f"esp-{request.body['id']}"}, {}


class EchoProvider(HttpApiProvider):
    """The smallest HTTP-API provider: POST /send, 200 taken, 429 throttled, 401 ours."""

    name = "echo"
    service = "Echo"

    def send_one(self, client: httpx.Client, message: OutgoingMessage) -> Verdict:
        return self.post(
            client, message, "/send", {"id": message.message_id}, self._classify(message)
        )

    @staticmethod
    def _classify(message: OutgoingMessage) -> Callable[[httpx.Response], Verdict]:
        def classify(response: httpx.Response) -> Verdict:
            status = response.status_code
            if status == 200:
                taken = response.json()["id"]
                return Verdict(
                    SendResult(
                        message.message_id,
                        Outcome.ACCEPTED,
                        http_status=status,
                        provider_message_id=taken,
                    )
                )
            if status == 429:
                return rate_limited(message.message_id, status, response.headers, service="Echo")
            result = SendResult(
                message.message_id, Outcome.TRANSIENT, reason=f"HTTP {status}", http_status=status
            )
            return Verdict(result, halt=status == 401)

        return classify


def messages(count: int) -> list[OutgoingMessage]:
    return [
        OutgoingMessage(f"m{i}", "news@example.com", f"rcpt{i}@example.net", b"Subject: x\r\n\r\n")
        for i in range(count)
    ]


@pytest.fixture
def api() -> Iterator[EchoApi]:
    with EchoApi() as server:
        yield server


def provider_for(url: str, *, concurrency: int = 1, timeout: float = 5.0) -> EchoProvider:
    return EchoProvider(base_url=url, timeout=timeout, concurrency=concurrency, headers={})


class TestHttpApiProviderContract(ProviderContract):
    http_api = True

    @pytest.fixture(autouse=True)
    def _server(self, api: EchoApi) -> None:
        self.server = api

    def make_provider(self) -> EchoProvider:
        return provider_for(self.server.url)

    def throttle_next(self, retry_after: int) -> None:
        self.server.reply(Reply(429, {"Retry-After": str(retry_after)}))

    def refuse_next_request(self) -> None:
        self.server.reply(Reply(401))

    def lose_next_answer(self) -> None:
        self.server.reply(Reply(drop=True))


def test_results_come_back_in_order_from_concurrent_requests(api: EchoApi) -> None:
    provider = provider_for(api.url, concurrency=4)
    try:
        results = provider.send_batch(messages(30))
    finally:
        provider.close()
    assert [r.message_id for r in results] == [f"m{i}" for i in range(30)]
    assert [r.provider_message_id for r in results] == [f"esp-m{i}" for i in range(30)]
    assert 1 <= api.connections <= 4


def test_a_lost_connection_and_a_missing_answer_are_unknown_because_the_request_arrived(
    api: EchoApi,
) -> None:
    api.reply(Reply(drop=True), Reply(hang=1.0))
    provider = provider_for(api.url, timeout=0.3)
    try:
        dropped, timed_out, taken = provider.send_batch(messages(3))
    finally:
        provider.close()
    assert dropped.outcome is Outcome.UNKNOWN
    assert dropped.reason.startswith("connection to Echo lost before its answer")
    assert timed_out.outcome is Outcome.UNKNOWN
    assert timed_out.reason.startswith("no answer from Echo within 0.3 s after the request")
    assert taken.outcome is Outcome.ACCEPTED
    # Each request reached the server whole: exactly what makes the first two ambiguous.
    assert [r.body["id"] for r in api.received] == ["m0", "m1", "m2"]


def test_no_connection_defers_the_whole_batch_unattempted() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    provider = provider_for(f"http://127.0.0.1:{port}")
    try:
        results = provider.send_batch(messages(3))
    finally:
        provider.close()
    # None was sent: all wait without using up an attempt.
    assert [r.outcome for r in results] == [Outcome.DEFERRED] * 3
    assert results[0].reason.startswith(f"cannot connect to http://127.0.0.1:{port}")
    assert all(r.reason.startswith("not attempted: cannot connect") for r in results[1:])


def test_a_429_defers_the_rest_of_the_batch_for_as_long(api: EchoApi) -> None:
    api.reply(Reply(200, body={"id": "first"}), Reply(429, {"Retry-After": "3"}))
    provider = provider_for(api.url)
    try:
        results = provider.send_batch(messages(4))
    finally:
        provider.close()
    assert [r.outcome for r in results] == [Outcome.ACCEPTED] + [Outcome.DEFERRED] * 3
    assert [r.retry_after for r in results] == [None, 3.0, 3.0, 3.0]
    assert results[1].reason == "rate limited by Echo (HTTP 429); retry after 3 s"
    assert len(api.received) == 2


def test_a_halting_answer_defers_the_rest_unattempted(api: EchoApi) -> None:
    api.reply(Reply(401))
    provider = provider_for(api.url)
    try:
        results = provider.send_batch(messages(3))
    finally:
        provider.close()
    assert [r.outcome for r in results] == [Outcome.TRANSIENT] + [Outcome.DEFERRED] * 2
    assert results[2].reason == "not attempted: HTTP 401"
    assert results[2].http_status is None  # it was never asked
    assert len(api.received) == 1


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after": "12"}, 12.0),
        ({"Retry-After": "12"}, 12.0),
        ({"retry-after": " 1.5 "}, 1.5),
        ({"retry-after": "Thu, 01 Jan 1970 00:01:40 GMT"}, 60.0),
        ({"retry-after": "Thu, 01 Jan 1970 00:00:10 GMT"}, 0.0),
        ({"retry-after": "-3"}, None),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "inf"}, None),
        ({}, None),
    ],
)
def test_retry_after_is_read_from_seconds_or_an_http_date(
    headers: dict[str, str], seconds: float | None
) -> None:
    assert retry_after_seconds(headers, now=40) == seconds


def test_a_reset_header_is_read_only_when_named_and_only_without_retry_after() -> None:
    headers = {"x-ratelimit-reset": "1000"}
    assert retry_after_seconds(headers, now=990) is None
    assert retry_after_seconds(headers, now=990, reset_header="x-ratelimit-reset") == 10.0
    both = {"retry-after": "4", "x-ratelimit-reset": "1000"}
    assert retry_after_seconds(both, now=990, reset_header="x-ratelimit-reset") == 4.0
    assert retry_after_seconds(headers, now=2000, reset_header="x-ratelimit-reset") == 0.0
