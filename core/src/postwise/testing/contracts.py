"""Contract test suites every plugin of a kind must pass.

Usage, in a plugin's own tests::

    from postwise.testing.contracts import ConditionContract

    class TestMyCondition(ConditionContract):
        valid_configs = [{"at_least": 10}]
        invalid_configs = [({"at_least": -1}, "at_least")]

        def make_condition(self):
            return MyCondition()

Each suite is a plain pytest class (its name does not start with ``Test``, so it is collected
only through your subclass).
"""

from __future__ import annotations

import logging
import math
import re
import socket
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest

from postwise.analytics.sinks import AnalyticsSink, StoredEvent
from postwise.compliance.bounces import BounceKind
from postwise.crm.connector import (
    CrmConnector,
    CrmContact,
    CrmUnavailableError,
    EngagementUpdate,
)
from postwise.delivery.provider import Outcome, OutgoingMessage, Provider, SendResult
from postwise.errors import ValidationError
from postwise.experiments.contract import Comparison, Index, Interval, StatsOptions, StatsTest
from postwise.experiments.data import VariantData
from postwise.recommend.base import Interaction, Item, Recommender
from postwise.testing.http import Reply, ScriptedHttpServer
from postwise.triggers.conditions import ConditionType, HistoryEvent, TriggerEvent

__all__ = [
    "AnalyticsSinkContract",
    "ConditionContract",
    "CrmConnectorContract",
    "HttpProviderContract",
    "ProviderContract",
    "RecommenderContract",
    "StaticContext",
    "StatsTestContract",
]


@dataclass
class StaticContext:
    """A :class:`~postwise.triggers.conditions.ConditionContext` answering from given data."""

    contact: Mapping[str, Any] = field(default_factory=dict)
    score: float = 0.0
    segments: set[str] = field(default_factory=set)
    history: Sequence[tuple[str, datetime]] = ()
    now: datetime = field(default_factory=lambda: datetime.now(UTC))

    def engagement_score(self) -> float:
        return self.score

    def in_segment(self, segment: str) -> bool:
        return segment in self.segments

    def count_events(self, event_type: str, since: datetime, until: datetime | None = None) -> int:
        return sum(
            1
            for kind, at in self.history
            if kind == event_type and at >= since and (until is None or at < until)
        )

    def events(
        self, event_type: str, since: datetime, until: datetime | None = None
    ) -> list[HistoryEvent]:
        return [
            HistoryEvent(f"history-{index}", kind, at)
            for index, (kind, at) in enumerate(self.history)
            if kind == event_type and at >= since and (until is None or at < until)
        ]


class ConditionContract:
    """Every condition type: named, validating its configuration, answering a bool."""

    #: Configurations that must validate.
    valid_configs: ClassVar[list[dict[str, Any]]] = []
    #: (configuration, field named in the error) pairs that must be rejected.
    invalid_configs: ClassVar[list[tuple[dict[str, Any], str]]] = []

    def make_condition(self) -> ConditionType[Any]:
        raise NotImplementedError("return an instance of your condition type")

    def sample_event(self) -> TriggerEvent:
        return TriggerEvent("evt-1", "signup", 1, datetime.now(UTC) - timedelta(minutes=5), {})

    def sample_context(self) -> StaticContext:
        return StaticContext(
            contact={
                "email": "a@example.com",
                "timezone": "UTC",
                "status": "active",
                "attributes": {},
                "tags": [],
            }
        )

    def test_has_a_name_and_a_config_model(self) -> None:
        condition = self.make_condition()
        assert isinstance(condition.name, str) and condition.name
        assert condition.requires <= {"contact", "engagement", "segments", "history"}

    def test_valid_configurations_parse(self) -> None:
        assert self.valid_configs, "list at least one valid configuration"
        condition = self.make_condition()
        for raw in self.valid_configs:
            condition.parse_config(raw)

    def test_invalid_configurations_are_rejected_naming_the_field(self) -> None:
        condition = self.make_condition()
        for raw, field_name in self.invalid_configs:
            with pytest.raises(ValidationError) as info:
                condition.parse_config(raw)
            assert info.value.field is not None and field_name in info.value.field

    def test_evaluate_returns_a_bool_and_explain_a_line(self) -> None:
        condition = self.make_condition()
        for raw in self.valid_configs:
            config = condition.parse_config(raw)
            result = condition.evaluate(config, self.sample_event(), self.sample_context())
            assert isinstance(result, bool)
            text = condition.explain(config)
            assert isinstance(text, str) and text and "\n" not in text


class ProviderContract:
    """Every provider: one well-formed result per message, in order, never raising per message.

    The checks every result must pass (:meth:`check_results`) run on every batch sent here:
    ``code`` is an SMTP reply code (200-599) or ``None``, and agrees with the outcome and the
    enhanced ``status``; ``http_status`` is set only by providers that declare ``http_api``;
    ``retry_after`` only on ``deferred``/``transient`` results, ``bounce_kind`` only on
    ``permanent`` ones.

    Faults the suite cannot script by itself are checked when your subclass says how to cause
    them on your test server (each is skipped otherwise): :meth:`throttle_next`,
    :meth:`reject_recipient`, :meth:`refuse_next_request` and :meth:`lose_next_answer`.
    """

    #: True for providers that speak to an HTTP API (their results may carry ``http_status``).
    http_api: ClassVar[bool] = False
    _enhanced_status: ClassVar[re.Pattern[str]] = re.compile(r"[245]\.\d{1,3}\.\d{1,3}")

    def make_provider(self) -> Provider:
        raise NotImplementedError("return your provider, pointed at a local test server")

    def make_messages(self, count: int) -> list[OutgoingMessage]:
        messages = []
        for index in range(count):
            raw = (
                f"From: sender@example.com\r\nTo: rcpt{index}@example.com\r\n"
                f"Subject: contract {index}\r\nMessage-ID: <contract-{index}@example.com>\r\n"
                "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
                f"Hello {index}\r\n"
            ).encode()
            messages.append(
                OutgoingMessage(f"m{index}", "sender@example.com", f"rcpt{index}@example.com", raw)
            )
        return messages

    # -- faults your test server can be told to cause --------------------------------------

    def throttle_next(self, retry_after: int) -> None:
        """Make the server rate-limit the next message (asking to wait ``retry_after`` s)."""
        pytest.skip("throttle_next is not implemented for this provider's test server")

    def reject_recipient(self, address: str) -> None:
        """Make the server refuse ``address`` for good, as the recipient's bounce."""
        pytest.skip("reject_recipient is not implemented for this provider's test server")

    def refuse_next_request(self) -> None:
        """Make the server refuse the next request for a reason that is ours (a bad API key,
        an unauthorised sender), not the recipient's."""
        pytest.skip("refuse_next_request is not implemented for this provider's test server")

    def lose_next_answer(self) -> None:
        """Make the server take the whole next message and lose the connection before it
        answers, so the provider cannot tell whether it was accepted."""
        pytest.skip("lose_next_answer is not implemented for this provider's test server")

    # -- checks ----------------------------------------------------------------------------

    def check_results(
        self, messages: Sequence[OutgoingMessage], results: Sequence[SendResult]
    ) -> None:
        """Assert what holds for every batch: one well-formed result per message, in order."""
        assert [r.message_id for r in results] == [m.message_id for m in messages]
        for r in results:
            assert isinstance(r, SendResult), r
            assert isinstance(r.outcome, Outcome), r
            assert isinstance(r.reason, str), r
            if r.code is not None:
                # An SMTP reply code, never an HTTP status passed off as one.
                assert type(r.code) is int and 200 <= r.code <= 599, r
                expected = {
                    Outcome.ACCEPTED: "2",
                    Outcome.PERMANENT: "5",
                    Outcome.DEFERRED: "4",
                }.get(r.outcome)
                assert expected is None or str(r.code)[0] == expected, r
            if r.status is not None:
                assert self._enhanced_status.fullmatch(r.status), r
                assert r.code is None or r.status[0] == str(r.code)[0], r
            if r.http_status is not None:
                assert self.http_api, f"http_status from a provider without http_api: {r}"
                assert type(r.http_status) is int and 100 <= r.http_status <= 599, r
            if r.retry_after is not None:
                assert r.outcome in (Outcome.DEFERRED, Outcome.TRANSIENT), r
                assert math.isfinite(r.retry_after) and r.retry_after >= 0, r
            if r.bounce_kind is not None:
                assert r.outcome is Outcome.PERMANENT, r
                assert isinstance(r.bounce_kind, BounceKind), r
            if r.provider_message_id is not None:
                assert isinstance(r.provider_message_id, str) and r.provider_message_id, r

    def _send(self, messages: list[OutgoingMessage]) -> list[SendResult]:
        provider = self.make_provider()
        try:
            results = provider.send_batch(messages)
        finally:
            provider.close()
        self.check_results(messages, results)
        return results

    def test_one_result_per_message_in_order(self) -> None:
        self._send(self.make_messages(5))

    def test_an_empty_batch_sends_nothing(self) -> None:
        provider = self.make_provider()
        try:
            assert provider.send_batch([]) == []
        finally:
            provider.close()

    def test_close_can_be_called_twice(self) -> None:
        provider = self.make_provider()
        provider.close()
        provider.close()

    def test_a_throttled_message_is_deferred_not_failed(self) -> None:
        messages = self.make_messages(3)
        self.throttle_next(2)
        first, *rest = self._send(messages)
        assert first.outcome is Outcome.DEFERRED, first
        assert first.retry_after is None or first.retry_after >= 2, first
        assert all(r.outcome in (Outcome.ACCEPTED, Outcome.DEFERRED) for r in rest), rest

    def test_a_rejected_recipient_is_a_bounce_with_an_smtp_code_or_a_kind(self) -> None:
        messages = self.make_messages(3)
        self.reject_recipient(messages[1].recipient)
        results = self._send(messages)
        rejected = results[1]
        assert rejected.outcome is Outcome.PERMANENT, rejected
        # Compliance classifies a bounce by its kind, else by its SMTP code: one must be there.
        assert rejected.bounce_kind is not None or rejected.code is not None, rejected
        assert [r.outcome for r in results[::2]] == [Outcome.ACCEPTED] * 2, results

    def test_a_refusal_of_our_own_request_never_blames_the_recipient(self) -> None:
        self.refuse_next_request()
        [result] = self._send(self.make_messages(1))
        assert result.outcome in (Outcome.TRANSIENT, Outcome.FAILED), result
        assert result.bounce_kind is None, result

    def test_an_answer_lost_after_the_message_was_sent_is_unknown(self) -> None:
        messages = self.make_messages(2)
        self.lose_next_answer()
        lost, after = self._send(messages)
        assert lost.outcome is Outcome.UNKNOWN, lost
        assert after.outcome is Outcome.ACCEPTED, after


class HttpProviderContract(ProviderContract):
    """Every provider speaking to an ESP's HTTP API, against your fake of that API.

    On top of :class:`ProviderContract`: a 429 defers the message and the rest of the batch for
    ``Retry-After``; a 5xx is transient and the batch goes on; an answer lost or late after the
    request was sent is ``unknown`` (never sent twice); an unreachable host defers the batch
    without using attempts; a refused key stops the batch and blames no recipient; requests
    share pooled connections; the provider works again after ``close``; and the secret
    (:attr:`secret`, the API key) appears in no log record at DEBUG and in no result.

    Your subclass says how to make the fake (:meth:`make_server`, a
    :class:`~postwise.testing.http.ScriptedHttpServer` answering as the vendor does when not
    scripted) and the provider (:meth:`provider_for`); the suite starts and stops the server
    with the ``fake_server`` fixture of the postwise pytest plugin::

        class TestAcmeProvider(HttpProviderContract):
            secret = API_KEY

            def make_server(self):
                return FakeAcme()

            def provider_for(self, url, **options):
                return AcmeProvider(parse_options({"api_key": API_KEY, "base_url": url,
                                                   **options}))
    """

    http_api = True
    #: The credential that must never be logged or put in a reason.
    secret: ClassVar[str]
    #: The vendor's name as reasons say it ("SendGrid"); checked in the timeout's reason.
    service: ClassVar[str] = ""
    server: ScriptedHttpServer

    def make_server(self) -> ScriptedHttpServer:
        raise NotImplementedError("return your (unstarted) fake of the vendor's API")

    def provider_for(self, url: str, **options: Any) -> Provider:
        """Your provider for the API at ``url`` (the server's root URL: add your API's base
        path), with ``timeout`` and ``concurrency`` options when given."""
        raise NotImplementedError("return your provider pointed at url")

    def error_body(self, status: int, message: str) -> Any:
        """The vendor's error body for ``status`` (JSON-able, ``bytes`` or ``None``)."""
        return {"errors": [{"message": message}]}

    def refusal(self) -> Reply:
        """The vendor's answer to a refused API key."""
        return Reply(401, body=self.error_body(401, "the API key was refused"))

    @pytest.fixture(autouse=True)
    def _http_fake(self, fake_server: Any) -> None:
        self.server = fake_server(self.make_server())

    def make_provider(self) -> Provider:
        return self.provider_for(self.server.url, concurrency=1, timeout=5)

    def throttle_next(self, retry_after: int) -> None:
        body = self.error_body(429, "too many requests")
        self.server.reply(Reply(429, {"Retry-After": str(retry_after)}, body))

    def refuse_next_request(self) -> None:
        self.server.reply(self.refusal())

    def lose_next_answer(self) -> None:
        self.server.reply(Reply(drop=True))

    def _send_with(self, messages: list[OutgoingMessage], **options: Any) -> list[SendResult]:
        provider = self.provider_for(options.pop("url", self.server.url), **options)
        try:
            results = provider.send_batch(messages)
        finally:
            provider.close()
        self.check_results(messages, results)
        return results

    def test_every_message_is_accepted_by_the_fake(self) -> None:
        results = self._send_with(self.make_messages(5), concurrency=1, timeout=5)
        assert [r.outcome for r in results] == [Outcome.ACCEPTED] * 5, results
        assert all(r.http_status is not None and r.code is None for r in results), results
        assert len(self.server.received) == 5

    def test_a_429_defers_the_message_and_the_rest_of_the_batch_for_retry_after(self) -> None:
        self.server.reply(
            Reply(429, {"Retry-After": "7"}, self.error_body(429, "too many requests"))
        )
        results = self._send_with(self.make_messages(4), concurrency=1, timeout=5)
        assert [r.outcome for r in results] == [Outcome.DEFERRED] * 4, results
        assert (results[0].http_status, results[0].code) == (429, None)
        assert [r.retry_after for r in results] == [7.0] * 4
        assert all(r.reason.startswith("not attempted: ") for r in results[1:]), results
        assert len(self.server.received) == 1

    def test_a_server_error_is_transient_and_sending_goes_on(self) -> None:
        self.server.reply(
            Reply(500, body=self.error_body(500, "internal error")),
            Reply(503, {"Retry-After": "4"}, b"<html>Service Unavailable</html>"),
        )
        results = self._send_with(self.make_messages(3), concurrency=1, timeout=5)
        outcomes = [r.outcome for r in results]
        assert outcomes == [Outcome.TRANSIENT, Outcome.TRANSIENT, Outcome.ACCEPTED], results
        assert results[1].retry_after == 4.0 and results[1].http_status == 503
        assert all(r.bounce_kind is None for r in results)

    def test_an_answer_that_never_comes_is_unknown(self) -> None:
        self.server.reply(Reply(hang=1.5))
        [result] = self._send_with(self.make_messages(1), timeout=0.3)
        assert result.outcome is Outcome.UNKNOWN, result
        assert "may have been accepted" in result.reason
        assert not self.service or self.service in result.reason

    def test_an_unreachable_host_defers_the_batch_without_using_attempts(self) -> None:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
        results = self._send_with(self.make_messages(2), url=closed, timeout=2)
        assert [r.outcome for r in results] == [Outcome.DEFERRED] * 2, results
        assert "cannot connect" in results[0].reason

    def test_a_refused_key_is_transient_and_stops_the_batch(self) -> None:
        self.refuse_next_request()
        results = self._send_with(self.make_messages(3), concurrency=1, timeout=5)
        assert [r.outcome for r in results] == [Outcome.TRANSIENT] + [Outcome.DEFERRED] * 2
        assert all(r.bounce_kind is None for r in results), results
        assert len(self.server.received) == 1

    def test_requests_share_pooled_connections(self) -> None:
        provider = self.provider_for(self.server.url, concurrency=4, timeout=5)
        try:
            first = provider.send_batch(self.make_messages(40))
            second = provider.send_batch(self.make_messages(20))
        finally:
            provider.close()
        assert all(r.outcome is Outcome.ACCEPTED for r in first + second)
        assert len(self.server.received) == 60
        assert 1 <= self.server.connections <= 4

    def test_the_provider_works_again_after_close(self) -> None:
        provider = self.provider_for(self.server.url, timeout=5)
        provider.send_batch(self.make_messages(2))
        provider.close()
        [result] = provider.send_batch(self.make_messages(1))
        provider.close()
        assert result.outcome is Outcome.ACCEPTED, result

    def test_the_secret_is_never_logged_nor_put_in_a_result(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        self.server.reply(
            Reply(400, body=self.error_body(400, "bad request")),
            Reply(500, body=self.error_body(500, "internal error")),
            Reply(drop=True),
        )
        caplog.set_level(logging.DEBUG)
        results = self._send_with(self.make_messages(4), concurrency=1, timeout=5)
        assert caplog.records, "expected the HTTP client and the provider to log at DEBUG"
        assert self.secret and self.secret not in caplog.text
        assert all(self.secret not in repr(r) for r in results)


class CrmConnectorContract:
    """Every CRM connector, against your fake of the CRM's API.

    Contacts come out with postwise's names and aware times, all of them on a first sync and
    the changed ones after; a deleted record comes back deleted; engagement written to a record
    that is gone is reported ``missing`` (so the core unlinks it) while the others are written;
    an unsigned webhook is never authentic and a body that is not the CRM's is a ``ValueError``;
    a CRM that cannot be reached is a :class:`~postwise.crm.connector.CrmUnavailableError`,
    never another exception. Your subclass makes the connector and says how to change the
    fake CRM's records (start the fake with the ``fake_server`` fixture in an autouse fixture
    of your own)::

        class TestAcmeConnector(CrmConnectorContract):
            @pytest.fixture(autouse=True)
            def _crm(self, fake_server):
                self.crm = fake_server(FakeAcmeCrm())

            def make_connector(self):
                return AcmeConnector(parse_options({"base_url": self.crm.url, ...}))

            def add_contact(self, email, first_name):
                return self.crm.add(email, firstname=first_name)

            def delete_contact(self, external_id):
                self.crm.delete(external_id)
    """

    #: Whether deletions come back from :meth:`CrmConnector.fetch_changes` (else the CRM
    #: reports them by webhook only, and the check is skipped).
    polls_deletions: ClassVar[bool] = True

    def make_connector(self) -> CrmConnector:
        raise NotImplementedError("return your connector, pointed at your fake CRM")

    def unreachable_connector(self) -> CrmConnector:
        """Your connector pointed at a CRM that cannot be reached (skipped unless given)."""
        pytest.skip("unreachable_connector is not implemented for this connector")

    def add_contact(self, email: str, first_name: str) -> str:
        """Create a contact in the fake CRM; its external id."""
        raise NotImplementedError("create a contact in your fake CRM and return its id")

    def delete_contact(self, external_id: str) -> None:
        """Delete (archive) the contact in the fake CRM."""
        raise NotImplementedError("delete the contact in your fake CRM")

    def _fetch(self, since: datetime | None) -> list[CrmContact]:
        connector = self.make_connector()
        try:
            changes = list(connector.fetch_changes(since))
            changes += list(connector.reconcile_deletions(since))
        finally:
            connector.close()
        for change in changes:
            assert isinstance(change, CrmContact), change
            assert isinstance(change.external_id, str) and change.external_id, change
            assert change.updated_at.tzinfo is not None, f"naive updated_at: {change}"
            assert change.deleted or "@" in change.email, change
            assert change.unsubscribed in (True, False, None), change
            assert not {"email", "status", "consent"} & set(change.properties), change
        return changes

    def test_has_a_name_and_a_batch_size(self) -> None:
        connector = self.make_connector()
        try:
            assert isinstance(connector.name, str) and connector.name
            assert connector.push_batch_size >= 1
        finally:
            connector.close()

    def test_a_first_sync_returns_every_contact_with_its_email_and_profile(self) -> None:
        ids = {self.add_contact(f"contract{n}@example.com", f"Ann{n}"): n for n in range(3)}
        changes = {c.external_id: c for c in self._fetch(None)}
        assert set(ids) <= set(changes), (ids, changes)
        for external_id, n in ids.items():
            change = changes[external_id]
            assert change.email.lower() == f"contract{n}@example.com" and not change.deleted
            assert change.properties.get("first_name") == f"Ann{n}", change

    def test_a_later_sync_returns_what_changed_since(self) -> None:
        self.add_contact("old@example.com", "Old")
        first = self._fetch(None)
        since = max(c.updated_at for c in first)
        fresh = self.add_contact("fresh@example.com", "Fresh")
        later = self._fetch(since)
        assert fresh in {c.external_id for c in later}, later
        assert all(c.updated_at >= since - timedelta(seconds=1) for c in later), later

    def test_a_deleted_contact_comes_back_deleted(self) -> None:
        if not self.polls_deletions:
            pytest.skip("this CRM reports deletions by webhook only")
        gone = self.add_contact("gone@example.com", "Gone")
        since = min(c.updated_at for c in self._fetch(None)) - timedelta(seconds=1)
        self.delete_contact(gone)
        changes = [c for c in self._fetch(since) if c.external_id == gone]
        assert changes and changes[-1].deleted, changes

    def test_engagement_to_a_gone_record_is_reported_missing_and_the_rest_written(self) -> None:
        kept = self.add_contact("kept@example.com", "Kept")
        gone = self.add_contact("gone2@example.com", "Gone")
        self.delete_contact(gone)
        updates = [
            EngagementUpdate(kept, {"engagement_score": 42.0}),
            EngagementUpdate(gone, {"engagement_score": 1.0}),
        ]
        connector = self.make_connector()
        try:
            failures = list(connector.push_engagement(updates) or [])
        finally:
            connector.close()
        assert [f.external_id for f in failures] == [gone], failures
        assert failures[0].missing, failures

    def test_an_unsigned_webhook_is_never_authentic(self) -> None:
        connector = self.make_connector()
        try:
            url = "https://postwise.example.com/hooks/crm/" + connector.name
            assert not connector.verify_request("POST", url, {}, b"[]")
            assert not connector.verify_webhook({}, b"[]")
        finally:
            connector.close()

    def test_a_body_that_is_not_the_crms_is_a_value_error(self) -> None:
        connector = self.make_connector()
        try:
            for body in (b"not json", b'{"truncated": ', b"<html>502 Bad Gateway</html>"):
                with pytest.raises(ValueError):  # noqa: PT011 - any message will do
                    connector.parse_webhook(body)
        finally:
            connector.close()

    def test_an_unreachable_crm_is_unavailable(self) -> None:
        connector = self.unreachable_connector()
        try:
            with pytest.raises(CrmUnavailableError):
                list(connector.fetch_changes(None))
        finally:
            connector.close()

    def test_close_can_be_called_twice(self) -> None:
        connector = self.make_connector()
        connector.close()
        connector.close()


class RecommenderContract:
    """Every recommender: at most n distinct items, never excluded ones, deterministic."""

    def make_recommender(self) -> Recommender:
        raise NotImplementedError("return a fresh instance of your recommender")

    def catalogue(self) -> list[Item]:
        return [Item(f"i{n}", f"Item {n}", f"https://shop.example.com/i{n}") for n in range(20)]

    def interactions(self) -> list[Interaction]:
        return [
            Interaction(contact_id=c, item_id=f"i{(c * 3 + k) % 20}", weight=1.0 + k)
            for c in range(1, 30)
            for k in range(4)
        ]

    def _fitted(self) -> Recommender:
        recommender = self.make_recommender()
        recommender.fit(self.interactions(), self.catalogue())
        return recommender

    def test_at_most_n_distinct_known_items(self) -> None:
        recommender = self._fitted()
        known = {item.id for item in self.catalogue()}
        for contact_id in (1, 5, 999):  # 999 has no history: cold start
            items = recommender.recommend(contact_id, 4)
            ids = [item.id for item in items]
            assert len(ids) <= 4 and len(ids) == len(set(ids))
            assert set(ids) <= known

    def test_excluded_items_are_never_recommended(self) -> None:
        recommender = self._fitted()
        first = [item.id for item in recommender.recommend(2, 3)]
        again = recommender.recommend(2, 3, exclude=first)
        assert not {item.id for item in again} & set(first)

    def test_recommendations_are_deterministic(self) -> None:
        assert [i.id for i in self._fitted().recommend(3, 5)] == [
            i.id for i in self._fitted().recommend(3, 5)
        ]

    def test_cold_start_contacts_still_get_items(self) -> None:
        assert self._fitted().recommend(123456, 3)


class AnalyticsSinkContract:
    """Every analytics sink: idempotent by event id, erasable by contact."""

    def make_sink(self) -> AnalyticsSink:
        raise NotImplementedError("return your sink, connected to an empty test store")

    def count_events(self, sink: AnalyticsSink, contact_id: int) -> int:
        raise NotImplementedError("return how many stored events belong to contact_id")

    def _events(self, contact_id: int, count: int) -> list[StoredEvent]:
        now = datetime.now(UTC)
        return [
            StoredEvent(
                f"contract-{contact_id}-{n}",
                "open",
                now,
                contact_id=contact_id,
                properties={"n": n},
            )
            for n in range(count)
        ]

    def test_write_is_idempotent_by_event_id(self) -> None:
        sink = self.make_sink()
        try:
            events = self._events(7, 5)
            assert sink.write_batch(events) == 5
            assert sink.write_batch(events[:3]) == 0
            assert self.count_events(sink, 7) == 5
        finally:
            sink.close()

    def test_events_of_a_contact_read_back_for_export(self) -> None:
        # The right of access exports a contact's events from the sink: every field that was
        # written comes back, once, and only that contact's.
        sink = self.make_sink()
        try:
            base = datetime.now(UTC).replace(microsecond=0)
            events = [
                StoredEvent(
                    "contract-export-1", "click", base - timedelta(minutes=2), contact_id=11,
                    message_id="msg-1", campaign_id=4, experiment_id=2, variant="b",
                    provider="smtp", properties={"url": "https://example.com/x"},
                ),
                StoredEvent("contract-export-2", "purchase", base, contact_id=11,
                            properties={"value": 12.5}),
                StoredEvent("contract-export-3", "open", base, contact_id=12),
            ]  # fmt: skip
            sink.write_batch(events)
            sink.write_batch(events[:1])  # a redelivery must not show up twice
            got = sink.events_of_contact(11)
            assert got is not None, "events_of_contact must read a contact's events back"
            assert [e.event_id for e in got] == ["contract-export-1", "contract-export-2"]
            first = got[0]
            assert (first.type, first.message_id, first.campaign_id) == ("click", "msg-1", 4)
            assert (first.experiment_id, first.variant, first.provider) == (2, "b", "smtp")
            assert first.occurred_at == base - timedelta(minutes=2)
            assert dict(first.properties) == {"url": "https://example.com/x"}
            assert dict(got[1].properties) == {"value": 12.5}
            assert sink.events_of_contact(404) == []
        finally:
            sink.close()

    def test_erase_contact_removes_only_that_contact(self) -> None:
        sink = self.make_sink()
        try:
            sink.write_batch(self._events(8, 3) + self._events(9, 2))
            assert sink.erase_contact(8) == 3
            assert self.count_events(sink, 8) == 0
            assert self.count_events(sink, 9) == 2
        finally:
            sink.close()


class StatsTestContract:
    """Every stats test: named, one comparison per treatment, honest on small and equal data.

    ``analyze`` applies the gate (sample-ratio check, minimum sample, Holm) the same way to
    every test; these checks hold a test to what the gate relies on.
    """

    #: The significance level the checks run at.
    alpha: ClassVar[float] = 0.05
    #: Both ways a sequential test may count its looks; other tests ignore the index.
    indexes: ClassVar[tuple[Index, ...]] = ("exposures", "outcomes")
    #: Samples every test must handle without raising: (exposures, conversions) per variant.
    samples: ClassVar[list[list[tuple[int, int]]]] = [
        [(0, 0), (0, 0)],
        [(10, 0), (10, 3)],
        [(10, 10), (10, 10)],
        [(1, 1), (5, 0), (20, 20)],
        [(1000, 30), (1000, 45), (900, 20)],
        [(20000, 600), (20000, 690)],
    ]

    def make_test(self) -> StatsTest:
        raise NotImplementedError("return a fresh instance of your stats test")

    def options(self, index: Index = "exposures") -> StatsOptions:
        return StatsOptions(alpha=self.alpha, sequential_tuning=2000.0, index=index)

    def compare(
        self, counts: Sequence[tuple[int, int]], index: Index = "exposures"
    ) -> list[Comparison]:
        variants = [VariantData(f"v{i}", n, c) for i, (n, c) in enumerate(counts)]
        return list(self.make_test().compare(variants, self.options(index)))

    @staticmethod
    def _holds_estimate(interval: Interval) -> bool:
        # False for NaN anywhere, as every comparison with NaN is.
        slack = 1e-9 * max(1.0, abs(interval.estimate))
        return interval.lower - slack <= interval.estimate <= interval.upper + slack

    def test_has_a_name_and_says_what_it_is(self) -> None:
        test = self.make_test()
        assert isinstance(test, StatsTest)
        assert isinstance(test.name, str) and test.name and test.name == test.name.strip()
        assert isinstance(test.always_valid, bool) and isinstance(test.decides, bool)

    def test_one_comparison_per_treatment_in_order(self) -> None:
        for arms in (2, 3, 5):
            comparisons = self.compare([(1000, 30 + i) for i in range(arms)])
            assert [c.variant for c in comparisons] == [f"v{i}" for i in range(1, arms)]
            assert all(isinstance(c, Comparison) for c in comparisons)

    def test_p_values_lie_between_0_and_1(self) -> None:
        decides = self.make_test().decides
        for index in self.indexes:
            for counts in self.samples:
                for comparison in self.compare(counts, index):
                    if decides:
                        assert comparison.p_value is not None, "a deciding test needs p-values"
                    if comparison.p_value is not None:
                        assert 0.0 <= comparison.p_value <= 1.0, (counts, comparison)

    def test_intervals_are_ordered_and_hold_their_estimate(self) -> None:
        for index in self.indexes:
            for counts in self.samples:
                for comparison in self.compare(counts, index):
                    assert self._holds_estimate(comparison.absolute), (counts, comparison)
                    if comparison.relative is not None:
                        assert self._holds_estimate(comparison.relative), (counts, comparison)

    def test_identical_arms_give_no_significance(self) -> None:
        from postwise.experiments.stats import analyze

        test = self.make_test()
        counts = [(5000, 150), (5000, 150), (5000, 150)]
        for index in self.indexes:
            for comparison in self.compare(counts, index):
                assert comparison.p_value is None or comparison.p_value >= self.alpha
                assert abs(comparison.absolute.estimate) < 1e-9
                assert comparison.absolute.lower <= 0.0 <= comparison.absolute.upper
            result = analyze(
                [VariantData(f"v{i}", n, c) for i, (n, c) in enumerate(counts)],
                method=test.name,
                alpha=self.alpha,
                index=index,
                tests={test.name: test},
            )
            assert result.winner is None

    def test_a_large_difference_points_the_right_way(self) -> None:
        decides = self.make_test().decides
        for index in self.indexes:
            better, worse = self.compare([(20000, 600), (20000, 900), (20000, 400)], index)
            assert better.absolute.estimate > 0 > worse.absolute.estimate
            if decides:
                assert better.p_value is not None and better.p_value < self.alpha
                assert worse.p_value is not None and worse.p_value < self.alpha

    def test_results_are_deterministic(self) -> None:
        for counts in self.samples:
            assert self.compare(counts) == self.compare(counts)

    def test_analyze_runs_it_by_name(self) -> None:
        from postwise.experiments.stats import Decision, analyze

        test = self.make_test()
        result = analyze(
            [VariantData("A", 20000, 600), VariantData("B", 20000, 900)],
            method=test.name,
            alpha=self.alpha,
            tests={test.name: test},
        )
        assert result.method == test.name
        assert [v.name for v in result.variants] == ["A", "B"]
        if test.decides:
            assert result.winner == "B"
        else:
            assert result.decision == Decision.DESCRIPTIVE_ONLY and result.winner is None
