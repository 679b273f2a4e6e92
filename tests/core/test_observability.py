"""Request ids, request metrics, /metrics with the shared state, and logs without addresses."""

from __future__ import annotations

import json
import logging
from typing import Any

from litestar.testing import TestClient

from postwise.ops.logs import REQUEST_ID, JsonFormatter, configure_logging, mask_addresses
from postwise.ops.metrics import render
from postwise.runtime import Runtime
from postwise.server.app import create_app


def test_every_answer_carries_a_request_id_and_keeps_a_sane_one(client: Any) -> None:
    made_up = client.get("/health/live").headers["x-request-id"]
    assert len(made_up) == 32
    kept = client.get("/health/live", headers={"X-Request-ID": "abc-123"})
    assert kept.headers["x-request-id"] == "abc-123"
    hostile = client.get("/health/live", headers={"X-Request-ID": "a b\tc"})
    assert hostile.headers["x-request-id"] != "a b\tc"


def test_requests_are_counted_by_route_template_not_raw_path(client: Any) -> None:
    client.get("/v1/contacts/424242")
    text = client.get("/metrics").text
    assert 'route="/v1/contacts/{contact_id}"' in text
    assert "424242" not in text
    assert "postwise_http_request_duration_seconds_bucket" in text


def test_metrics_read_the_shared_state(make_settings: Any, real_redis_url: str) -> None:
    runtime = Runtime(make_settings(redis_url=real_redis_url))
    try:
        text = render(runtime).decode()
        assert "postwise_ready 0.0" in text  # no process beats in this test
        assert 'postwise_processes_live{kind="worker"} 0.0' in text
        with TestClient(app=create_app(runtime=runtime)) as client:
            scraped = client.get("/metrics")
            assert scraped.status_code == 200
            assert scraped.headers["content-type"].startswith("text/plain")
            assert "postwise_ready" in scraped.text
    finally:
        runtime.close()


def test_addresses_are_masked_in_any_log_line() -> None:
    assert mask_addresses("bounce for jane.doe@example.org (5.1.1)") == (
        "bounce for j***@example.org (5.1.1)"
    )


def test_json_logs_carry_the_request_id_and_hide_addresses(caplog: Any) -> None:
    configure_logging("INFO", "json")
    logger = logging.getLogger("postwise.test")
    token = REQUEST_ID.set("req-1")
    try:
        with caplog.at_level(logging.INFO):
            logger.info("sent to %s", "bob@example.com")
    finally:
        REQUEST_ID.reset(token)
    record = caplog.records[-1]
    line = json.loads(JsonFormatter("worker").format(record))
    assert line["message"] == "sent to b***@example.com"
    assert line["request_id"] == "req-1"
    assert line["process"] == "worker"
    assert line["level"] == "INFO"


def test_an_address_in_a_logged_exception_is_masked_in_text_logs(caplog: Any) -> None:
    configure_logging("INFO", "text")
    logger = logging.getLogger("postwise.test")
    with caplog.at_level(logging.INFO):
        try:
            raise ValueError("550 5.1.1 <jane.doe@example.org>: no such mailbox")
        except ValueError:
            logger.exception("send failed")
    assert "send failed" in caplog.text
    assert "j***@example.org" in caplog.text
    assert "jane.doe@example.org" not in caplog.text
