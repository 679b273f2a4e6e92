"""The HubSpot connector against a local server speaking HubSpot's wire format."""

from __future__ import annotations

import json
import socket
import time
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from fake_hubspot import BASE, FakeHubSpot, Reply
from hubspot_helpers import BASE_URL, CLIENT_SECRET, options

from postwise.crm.connector import CrmLimitReachedError, CrmUnavailableError, EngagementUpdate
from postwise.errors import ConfigurationError
from postwise.testing.contracts import CrmConnectorContract
from postwise_hubspot.connector import HubSpotConnector
from postwise_hubspot.options import parse_options
from postwise_hubspot.signature import signature_v3

SEARCH = f"{BASE}/search"


def connector(
    server: FakeHubSpot, sleeps: list[float] | None = None, **extra: object
) -> HubSpotConnector:
    waits = sleeps if sleeps is not None else []
    return HubSpotConnector(parse_options(options(server, **extra)), sleep=waits.append)


def test_changes_are_searched_by_lastmodifieddate_with_paging_and_mapped(
    hubspot_server: FakeHubSpot,
) -> None:
    ids = [
        hubspot_server.add(
            f"p{n}@example.com", firstname=f"P{n}", plan="pro", hs_email_optout="false"
        )
        for n in range(5)
    ]
    hubspot_server.change(ids[0], hs_email_optout="true", country="FR")
    since = datetime.now(UTC) - timedelta(days=1)

    changes = list(connector(hubspot_server, page_size=2).fetch_changes(since))

    assert [c.external_id for c in changes] == [*ids[1:], ids[0]]
    first = changes[-1]
    assert (first.email, first.unsubscribed) == ("p0@example.com", True)
    assert first.properties == {
        "first_name": "P0",
        "last_name": None,
        "country": "FR",
        "plan": "pro",
    }
    searches = hubspot_server.requests(SEARCH)
    assert len(searches) == 3
    assert all(r.headers["Authorization"] == "Bearer pat-na1-test-token" for r in searches)
    assert searches[0].body["filterGroups"][0]["filters"][0]["value"] == str(
        int(since.timestamp() * 1000)
    )
    assert [r.body.get("after") for r in searches] == [None, "2", "4"]


def test_a_window_longer_than_the_search_limit_is_read_as_several_queries(
    hubspot_server: FakeHubSpot,
) -> None:
    ids = [hubspot_server.add(f"p{n}@example.com") for n in range(7)]
    hubspot_server.result_limit = 4
    hs = connector(hubspot_server, page_size=2)
    hs.search_result_limit = 4

    changes = list(hs.fetch_changes(None))

    assert {c.external_id for c in changes} == set(ids)


def test_archived_contacts_come_as_deletions(hubspot_server: FakeHubSpot) -> None:
    kept = hubspot_server.add("kept@example.com")
    gone = hubspot_server.add("gone@example.com")
    hubspot_server.archive(gone)

    hs = connector(hubspot_server)
    since = datetime.now(UTC) - timedelta(days=1)
    changes = [*hs.fetch_changes(since), *hs.reconcile_deletions(since)]

    assert [(c.external_id, c.deleted) for c in changes] == [(kept, False), (gone, True)]


def test_rate_limits_and_server_errors_are_retried_honouring_retry_after(
    hubspot_server: FakeHubSpot,
) -> None:
    hubspot_server.add("ada@example.com")
    limited = {
        "status": "error",
        "message": "You have reached your secondly limit.",
        "errorType": "RATE_LIMIT",
        "policyName": "SECONDLY",
    }
    hubspot_server.reply(
        SEARCH,
        Reply(429, limited, {"Retry-After": "1"}),
        Reply(502, {"status": "error", "message": "Bad gateway"}),
    )
    sleeps: list[float] = []

    changes = list(connector(hubspot_server, sleeps, poll_archived=False).fetch_changes(None))

    assert len(changes) == 1
    assert sleeps[0] == 1.0 and len(sleeps) == 2
    assert len(hubspot_server.requests(SEARCH)) == 3


def test_persistent_errors_and_long_waits_give_up_with_crm_unavailable(
    hubspot_server: FakeHubSpot,
) -> None:
    hubspot_server.reply(SEARCH, *[Reply(503, {"message": "down"})] * 3)
    with pytest.raises(CrmUnavailableError, match="gave up after 3 attempts"):
        list(connector(hubspot_server, max_attempts=3).fetch_changes(None))

    hubspot_server.reply(SEARCH, Reply(429, {"message": "daily limit"}, {"Retry-After": "3600"}))
    with pytest.raises(CrmUnavailableError, match="asks to wait 3600 s"):
        list(connector(hubspot_server).fetch_changes(None))


def test_a_refused_token_is_a_configuration_error(hubspot_server: FakeHubSpot) -> None:
    hs = connector(hubspot_server, access_token="pat-wrong")
    with pytest.raises(ConfigurationError, match="HTTP 401"):
        list(hs.fetch_changes(None))
    with pytest.raises(ConfigurationError, match="access_token is not set"):
        connector(hubspot_server, access_token="")


def test_engagement_is_written_by_batch_update_and_gone_contacts_are_reported(
    hubspot_server: FakeHubSpot,
) -> None:
    ada = hubspot_server.add("ada@example.com")
    gone = hubspot_server.add("gone@example.com")
    hubspot_server.archive(gone)
    opened = datetime(2030, 5, 1, 12, 30, tzinfo=UTC)

    failures = connector(hubspot_server).push_engagement(
        [
            EngagementUpdate(
                ada, {"engagement_score": 4.25, "unsubscribed": False, "last_open_at": opened}
            ),
            EngagementUpdate(gone, {"engagement_score": 1.0, "unsubscribed": True}),
        ]
    )

    assert [(f.external_id, f.missing) for f in failures] == [(gone, True)]
    sent = hubspot_server.requests(f"{BASE}/batch/update")[0].body["inputs"][0]
    assert sent == {
        "id": ada,
        "properties": {
            "postwise_engagement_score": "4.25",
            "postwise_unsubscribed": "false",
            "postwise_last_open": "2030-05-01T12:30:00.000Z",
        },
    }
    assert hubspot_server.contacts[ada].properties["postwise_engagement_score"] == "4.25"


def test_a_property_hubspot_does_not_define_is_reported_per_contact(
    hubspot_server: FakeHubSpot,
) -> None:
    ada = hubspot_server.add("ada@example.com")
    hs = connector(hubspot_server, engagement_properties={"engagement_score": "no_such_prop"})

    failures = hs.push_engagement([EngagementUpdate(ada, {"engagement_score": 2.0})])

    assert len(failures) == 1 and not failures[0].missing
    assert "no_such_prop" in failures[0].reason


def sign(body: bytes, url: str, *, at_ms: int | None = None) -> dict[str, str]:
    timestamp = str(at_ms if at_ms is not None else int(time.time() * 1000))
    return {
        "x-hubspot-signature-v3": signature_v3(CLIENT_SECRET, "POST", url, body, timestamp),
        "x-hubspot-request-timestamp": timestamp,
    }


def test_webhook_signatures_v3_are_checked_with_method_url_body_and_age(
    hubspot_server: FakeHubSpot,
) -> None:
    hs = connector(hubspot_server)
    url = f"{BASE_URL}/hooks/crm/hubspot"
    body = b'[{"objectId": 1}]'

    assert hs.verify_request("POST", url, sign(body, url), body)
    assert not hs.verify_request("POST", url, sign(body, url), body + b" ")
    assert not hs.verify_request("POST", url + "?x=1", sign(body, url), body)
    old = int(time.time() * 1000) - 6 * 60 * 1000
    assert not hs.verify_request("POST", url, sign(body, url, at_ms=old), body)
    assert not hs.verify_webhook(sign(body, url), body)
    # HubSpot signs the URI with these characters decoded.
    encoded = f"{BASE_URL}/hooks/crm/hubspot?tag=a%3Ab%40c"
    decoded = f"{BASE_URL}/hooks/crm/hubspot?tag=a:b@c"
    assert hs.verify_request("POST", encoded, sign(body, decoded), body)


def test_webhook_events_are_read_back_from_hubspot(hubspot_server: FakeHubSpot) -> None:
    ada = hubspot_server.add("ada@example.com", firstname="Ada")
    gone = hubspot_server.add("gone@example.com")
    events = (
        f'[{{"eventId": 1, "subscriptionType": "contact.propertyChange", "objectId": {ada},'
        f' "propertyName": "firstname", "propertyValue": "Ada", "occurredAt": 1700000000000}},'
        f' {{"eventId": 2, "subscriptionType": "contact.deletion", "objectId": {gone},'
        f' "occurredAt": 1700000000001}},'
        f' {{"eventId": 3, "subscriptionType": "deal.creation", "objectId": 5, "occurredAt": 1}}]'
    ).encode()

    changes = connector(hubspot_server).parse_webhook(events)

    assert sorted((c.external_id, c.deleted) for c in changes) == [(ada, False), (gone, True)]
    read = hubspot_server.requests(f"{BASE}/batch/read")
    assert [i["id"] for i in read[0].body["inputs"]] == [ada]
    with pytest.raises(ValueError, match="array"):
        connector(hubspot_server).parse_webhook(b"{}")


class TestHubSpotConnectorContract(CrmConnectorContract):
    @pytest.fixture(autouse=True)
    def _crm(self, hubspot_server: FakeHubSpot) -> None:
        self.crm = hubspot_server

    def make_connector(self) -> HubSpotConnector:
        return connector(self.crm)

    def unreachable_connector(self) -> HubSpotConnector:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
        return HubSpotConnector(parse_options({**options(self.crm), "base_url": closed}))

    def add_contact(self, email: str, first_name: str) -> str:
        return self.crm.add(email, firstname=first_name)

    def delete_contact(self, external_id: str) -> None:
        self.crm.archive(external_id)


def test_the_ten_second_burst_limit_is_outlasted_not_retried_into(
    hubspot_server: FakeHubSpot,
) -> None:
    for n in range(1000):
        hubspot_server.add(f"p{n}@example.com")
    hubspot_server.burst = (3, 10.0)  # 3 calls per rolling 10 s: 10 pages need 3 windows
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        hubspot_server.advance(seconds)

    hs = HubSpotConnector(
        parse_options({**options(hubspot_server), "max_retry_wait": 60}), sleep=sleep
    )
    changes = list(hs.fetch_changes(None))

    assert len(changes) == 1000
    assert waits and all(w >= 10.0 for w in waits), waits  # a whole window each time


def test_the_daily_limit_is_told_apart_and_ends_the_run_with_its_reset_time(
    hubspot_server: FakeHubSpot,
) -> None:
    daily = {
        "status": "error",
        "message": "You have reached your daily limit.",
        "errorType": "RATE_LIMIT",
        "policyName": "DAILY",
    }
    hubspot_server.reply(SEARCH, Reply(429, daily, {"X-HubSpot-RateLimit-Daily-Remaining": "0"}))
    sleeps: list[float] = []
    hs = connector(hubspot_server, sleeps, account_timezone="America/New_York")
    with pytest.raises(CrmLimitReachedError, match="daily API limit") as caught:
        list(hs.fetch_changes(None))
    assert sleeps == []  # retrying a daily limit only burns calls
    reset = caught.value.until.astimezone(ZoneInfo("America/New_York"))
    assert (reset.hour, reset.minute) == (0, 0)
    assert timedelta(0) < caught.value.until - datetime.now(UTC) <= timedelta(days=1)
    assert len(hubspot_server.requests(SEARCH)) == 1


def test_a_deletion_without_occurred_at_is_dated_now_not_1970(hubspot_server: FakeHubSpot) -> None:
    body = json.dumps([{"subscriptionType": "contact.deletion", "objectId": 5}]).encode()
    (change,) = connector(hubspot_server).parse_webhook(body)
    assert change.deleted and abs((datetime.now(UTC) - change.updated_at).total_seconds()) < 60
    with pytest.raises(ValueError, match="epoch milliseconds"):
        connector(hubspot_server).parse_webhook(
            json.dumps(
                [{"subscriptionType": "contact.deletion", "objectId": 5, "occurredAt": "yesterday"}]
            ).encode()
        )
