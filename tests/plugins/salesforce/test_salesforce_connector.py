"""The Salesforce connector against a local server speaking the REST wire format, and
end-to-end syncs through a running postwise."""

from __future__ import annotations

import base64
import json
import socket
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fake_salesforce import API, FakeSalesforce, Reply
from salesforce_helpers import WEBHOOK_SECRET, options
from sqlmodel import select

from postwise.crm.connector import CrmUnavailableError, EngagementUpdate
from postwise.crm.engagement import push_engagement
from postwise.crm.sync import poll
from postwise.db.models import Contact, ContactStatus, CrmLink, utcnow
from postwise.errors import ConfigurationError
from postwise.runtime import Runtime
from postwise.testing.contracts import CrmConnectorContract
from postwise.testing.webhooks import SignedWebhookContract
from postwise_salesforce.connector import SalesforceConnector
from postwise_salesforce.options import parse_options
from postwise_salesforce.signature import SIGNATURE_HEADER, sign

QUERY_ALL = f"{API}/queryAll"


def connector(
    server: FakeSalesforce, sleeps: list[float] | None = None, **extra: Any
) -> SalesforceConnector:
    waits = sleeps if sleeps is not None else []
    return SalesforceConnector(parse_options(options(server, **extra)), sleep=waits.append)


def test_changes_and_deletions_come_from_queryall_with_paging(
    salesforce_server: FakeSalesforce,
) -> None:
    ids = [
        salesforce_server.add(f"p{n}@example.com", FirstName=f"P{n}", Plan__c="pro")
        for n in range(5)
    ]
    salesforce_server.change(ids[0], HasOptedOutOfEmail=True)
    salesforce_server.delete(ids[1])
    sf = connector(salesforce_server, page_size=200, attribute_fields=["Plan__c"])

    changes = list(sf.fetch_changes(datetime.now(UTC) - timedelta(days=1)))

    assert [c.external_id for c in changes] == [*ids[2:], ids[0], ids[1]]
    assert (changes[-2].unsubscribed, changes[-2].properties["Plan__c"]) == (True, "pro")
    assert changes[-1].deleted
    query = salesforce_server.requests(QUERY_ALL)[0]
    assert query[2]["Authorization"].startswith("Bearer ")
    assert query[2]["Sforce-Query-Options"] == "batchSize=200"
    assert salesforce_server.token_requests[0]["grant_type"] == ["client_credentials"]


def test_next_records_urls_are_followed(salesforce_server: FakeSalesforce) -> None:
    for n in range(450):
        salesforce_server.add(f"p{n}@example.com")

    changes = list(connector(salesforce_server, page_size=200).fetch_changes(None))

    assert len(changes) == 450
    assert len(salesforce_server.requests(f"{API}/query/")) == 2


def test_an_expired_session_gets_a_new_token_once(salesforce_server: FakeSalesforce) -> None:
    salesforce_server.add("ada@example.com")
    sf = connector(salesforce_server)
    list(sf.fetch_changes(None))
    salesforce_server.expire_sessions()

    assert len(list(sf.fetch_changes(None))) == 1
    assert len(salesforce_server.token_requests) == 2


def test_rate_limits_and_server_errors_are_retried_and_then_given_up(
    salesforce_server: FakeSalesforce,
) -> None:
    salesforce_server.add("ada@example.com")
    sleeps: list[float] = []
    salesforce_server.reply(
        QUERY_ALL,
        Reply(429, [{"errorCode": "REQUEST_LIMIT", "message": "slow down"}], {"Retry-After": "1"}),
        Reply(500, [{"errorCode": "UNKNOWN_EXCEPTION", "message": "oops"}]),
    )
    sf = connector(salesforce_server, sleeps)

    assert len(list(sf.fetch_changes(None))) == 1
    assert sleeps[0] == 1.0 and len(sleeps) == 2

    salesforce_server.reply(
        QUERY_ALL, *[Reply(503, [{"errorCode": "SERVER_UNAVAILABLE", "message": "down"}])] * 3
    )
    with pytest.raises(CrmUnavailableError, match="gave up after 3 attempts"):
        list(connector(salesforce_server, max_attempts=3).fetch_changes(None))
    salesforce_server.reply(
        QUERY_ALL,
        Reply(
            403,
            [{"errorCode": "REQUEST_LIMIT_EXCEEDED", "message": "TotalRequests Limit exceeded."}],
        ),
    )
    with pytest.raises(CrmUnavailableError, match="request limit"):
        list(connector(salesforce_server).fetch_changes(None))


def test_bad_credentials_and_unknown_fields_are_configuration_errors(
    salesforce_server: FakeSalesforce,
) -> None:
    with pytest.raises(ConfigurationError, match="invalid_client"):
        list(connector(salesforce_server, client_secret="wrong").fetch_changes(None))
    with pytest.raises(ConfigurationError, match="INVALID_FIELD"):
        list(connector(salesforce_server, attribute_fields=["No_Such__c"]).fetch_changes(None))
    with pytest.raises(ConfigurationError, match="HasOptedOutOfEmail"):
        parse_options(
            options(salesforce_server, engagement_fields={"unsubscribed": "HasOptedOutOfEmail"})
        )


def test_the_jwt_bearer_flow_signs_an_assertion_salesforce_verifies(
    salesforce_server: FakeSalesforce, jwt_key: rsa.RSAPrivateKey
) -> None:
    salesforce_server.add("ada@example.com")
    pem = jwt_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    sf = connector(
        salesforce_server, auth="jwt", username="integration@example.com", private_key=pem
    )

    assert len(list(sf.fetch_changes(None))) == 1
    assert salesforce_server.token_requests[0]["grant_type"] == [
        "urn:ietf:params:oauth:grant-type:jwt-bearer"
    ]


def _pem(key: rsa.RSAPrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def _claims(server: FakeSalesforce) -> dict[str, object]:
    assertion = server.token_requests[-1]["assertion"][0]
    body = assertion.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))


def test_jwt_audience_is_login_salesforce_com_even_when_posting_to_my_domain(
    salesforce_server: FakeSalesforce, jwt_key: rsa.RSAPrivateKey
) -> None:
    # The fake serves a My Domain URL (login_url = its own address) yet, as Salesforce does,
    # accepts only login.salesforce.com / test.salesforce.com / a community URL as aud.
    salesforce_server.add("ada@example.com")
    sf = connector(
        salesforce_server, auth="jwt", username="integration@example.com", private_key=_pem(jwt_key)
    )
    assert len(list(sf.fetch_changes(None))) == 1
    claims = _claims(salesforce_server)
    assert claims["aud"] == "https://login.salesforce.com"
    assert claims["sub"] == "integration@example.com"
    assert 0 < int(str(claims["exp"])) - time.time() <= 180


def test_jwt_audience_setting_sandbox_default_and_community(
    salesforce_server: FakeSalesforce, jwt_key: rsa.RSAPrivateKey
) -> None:
    assert (
        parse_options({"login_url": "https://acme--uat.sandbox.my.salesforce.com"}).jwt_audience()
        == "https://test.salesforce.com"
    )
    assert (
        parse_options({"login_url": "https://acme.my.salesforce.com"}).jwt_audience()
        == "https://login.salesforce.com"
    )
    with pytest.raises(ConfigurationError, match="audience"):
        parse_options({"audience": "login.salesforce.com"})
    community = "https://acme.my.site.com/partners"
    salesforce_server.audiences.add(community)
    salesforce_server.add("ada@example.com")
    sf = connector(
        salesforce_server,
        auth="jwt",
        username="integration@example.com",
        private_key=_pem(jwt_key),
        audience=community + "/",
    )
    assert len(list(sf.fetch_changes(None))) == 1
    assert _claims(salesforce_server)["aud"] == community


def test_jwt_refusals_name_the_cause(
    salesforce_server: FakeSalesforce, jwt_key: rsa.RSAPrivateKey
) -> None:
    bad_aud = connector(
        salesforce_server,
        auth="jwt",
        username="integration@example.com",
        private_key=_pem(jwt_key),
        audience=salesforce_server.url.replace("http://", "https://"),
    )
    with pytest.raises(ConfigurationError, match="audience is invalid"):
        list(bad_aud.fetch_changes(None))
    bad_sub = connector(
        salesforce_server, auth="jwt", username="nobody@example.com", private_key=_pem(jwt_key)
    )
    with pytest.raises(ConfigurationError, match="invalid_grant"):
        list(bad_sub.fetch_changes(None))


def test_engagement_is_patched_per_record_and_deleted_records_reported(
    salesforce_server: FakeSalesforce,
) -> None:
    ada = salesforce_server.add("ada@example.com")
    gone = salesforce_server.add("gone@example.com")
    salesforce_server.delete(gone)
    clicked = datetime(2030, 5, 1, 9, 0, tzinfo=UTC)

    failures = connector(salesforce_server).push_engagement(
        [
            EngagementUpdate(
                ada, {"engagement_score": 2.5, "last_click_at": clicked, "unsubscribed": False}
            ),
            EngagementUpdate(gone, {"engagement_score": 1.0}),
        ]
    )

    assert [(f.external_id, f.missing) for f in failures] == [(gone, True)]
    sent = salesforce_server.requests(f"{API}/composite/sobjects")[0][3]
    assert sent["allOrNone"] is False
    assert sent["records"][0] == {
        "attributes": {"type": "Contact"},
        "id": ada,
        "Postwise_Engagement_Score__c": 2.5,
        "Postwise_Last_Click__c": "2030-05-01T09:00:00.000Z",
        "Postwise_Unsubscribed__c": False,
    }


def notification(*events: tuple[str, list[str]]) -> bytes:
    return json.dumps(
        [
            {
                "ChangeEventHeader": {
                    "entityName": "Contact",
                    "changeType": kind,
                    "recordIds": ids,
                    "commitTimestamp": 1700000000000 + n,
                }
            }
            for n, (kind, ids) in enumerate(events)
        ]
    ).encode()


def signed(body: bytes, secret: str = WEBHOOK_SECRET, *, ago: int = 0) -> dict[str, str]:
    return {
        SIGNATURE_HEADER: sign(secret, body, int(time.time()) - ago),
        "Content-Type": "application/json",
    }


def test_signatures_are_checked_and_ids_validated(salesforce_server: FakeSalesforce) -> None:
    sf = connector(salesforce_server)
    body = notification(("UPDATE", ["003000000000000001"]))
    lower = {k.lower(): v for k, v in signed(body).items()}

    assert sf.verify_webhook(lower, body)
    assert not sf.verify_webhook(lower, body + b" ")
    old = {SIGNATURE_HEADER.lower(): sign(WEBHOOK_SECRET, body, int(time.time()) - 600)}
    assert not sf.verify_webhook(old, body)
    with pytest.raises(ValueError, match="not a Salesforce record id"):
        sf.parse_webhook(notification(("UPDATE", ["x') OR Id != ('"])))


def contacts(runtime: Runtime) -> dict[str, Contact]:
    with runtime.session() as session:
        return {c.email: c for c in session.exec(select(Contact))}


def test_polls_land_new_changed_and_deleted_contacts_and_a_rerun_changes_nothing(
    runtime: Runtime, salesforce_server: FakeSalesforce
) -> None:
    ada = salesforce_server.add("ada@example.com", FirstName="Ada")
    bob = salesforce_server.add("bob@example.com")
    first = poll(runtime, "salesforce")
    salesforce_server.change(ada, LastName="Lovelace", HasOptedOutOfEmail=True)
    salesforce_server.delete(bob)

    second = poll(runtime, "salesforce")
    third = poll(runtime, "salesforce")

    assert (first.created, second.updated, second.unlinked, second.unsubscribed) == (2, 1, 1, 1)
    assert (third.created, third.updated, third.unlinked) == (0, 0, 0)
    people = contacts(runtime)
    assert people["ada@example.com"].last_name == "Lovelace"
    assert people["ada@example.com"].status == ContactStatus.UNSUBSCRIBED
    assert "bob@example.com" in people


def test_engagement_push_end_to_end_sends_only_what_changed(
    runtime: Runtime, salesforce_server: FakeSalesforce
) -> None:
    ids = [salesforce_server.add(f"p{n}@example.com") for n in range(3)]
    poll(runtime, "salesforce")
    with runtime.session() as session:
        contact = session.exec(select(Contact).where(Contact.email == "p2@example.com")).one()
        contact.engagement_score = 1.5
        contact.engagement_updated_at = utcnow()
        session.add(contact)

    assert push_engagement(runtime, "salesforce").pushed == 1
    assert push_engagement(runtime, "salesforce").pushed == 0
    patches = salesforce_server.requests(f"{API}/composite/sobjects")
    assert [r["id"] for r in patches[0][3]["records"]] == [ids[2]]


def test_signed_notifications_apply_once_and_bad_signatures_get_401(
    client: Any, runtime: Runtime, salesforce_server: FakeSalesforce
) -> None:
    ada = salesforce_server.add("ada@example.com", FirstName="Ada")
    body = notification(("CREATE", [ada]))

    forged = client.post("/hooks/crm/salesforce", content=body, headers=signed(body, "wrong"))
    assert forged.status_code == 401 and contacts(runtime) == {}

    headers = signed(body)
    first = client.post("/hooks/crm/salesforce", content=body, headers=headers)
    replayed = client.post("/hooks/crm/salesforce", content=body, headers=headers)
    # Delivered again, newly signed: applied idempotently.
    again = client.post("/hooks/crm/salesforce", content=body, headers=signed(body, ago=2))
    assert first.status_code == 200 and first.json()["created"] == 1
    assert replayed.status_code == 401 and "replay" in replayed.json()["detail"]
    assert again.json()["unchanged"] == 1

    salesforce_server.delete(ada)
    deleted = notification(("DELETE", [ada]))
    gone = client.post("/hooks/crm/salesforce", content=deleted, headers=signed(deleted))
    assert gone.json()["unlinked"] == 1
    with runtime.session() as session:
        assert session.exec(select(CrmLink)).all() == []


class TestSalesforceWebhookContract(SignedWebhookContract):
    path = "/hooks/crm/salesforce"

    @pytest.fixture(autouse=True)
    def _salesforce(self, salesforce_server: FakeSalesforce) -> None:
        self.ada = salesforce_server.add("ada@example.com", FirstName="Ada")

    def signed_request(self, at: float) -> tuple[bytes, dict[str, str]]:
        body = notification(("CREATE", [self.ada]))
        return body, signed(body, ago=int(time.time() - at))


class TestSalesforceConnectorContract(CrmConnectorContract):
    @pytest.fixture(autouse=True)
    def _crm(self, salesforce_server: FakeSalesforce) -> None:
        self.crm = salesforce_server

    def make_connector(self) -> SalesforceConnector:
        return connector(self.crm)

    def unreachable_connector(self) -> SalesforceConnector:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            closed = f"http://127.0.0.1:{probe.getsockname()[1]}"
        return SalesforceConnector(parse_options({**options(self.crm), "login_url": closed}))

    def add_contact(self, email: str, first_name: str) -> str:
        return self.crm.add(email, FirstName=first_name)

    def delete_contact(self, external_id: str) -> None:
        self.crm.delete(external_id)


def test_a_change_event_without_commit_timestamp_is_dated_now_not_1970(
    salesforce_server: FakeSalesforce,
) -> None:
    event = {
        "ChangeEventHeader": {
            "entityName": "Contact",
            "changeType": "DELETE",
            "recordIds": ["003000000000001AAA"],
        }
    }
    (change,) = connector(salesforce_server).parse_webhook(json.dumps([event]).encode())
    assert change.deleted and abs((datetime.now(UTC) - change.updated_at).total_seconds()) < 60
