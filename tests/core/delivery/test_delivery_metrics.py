"""Delivery counts what it settles and publishes, for Prometheus."""

from __future__ import annotations

from delivery_helpers import add_campaign, add_contacts, add_template
from prometheus_client import REGISTRY

from postwise.delivery.dispatch import dispatch_campaign
from postwise.delivery.worker import drain
from postwise.runtime import Runtime


def _value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_settled_messages_and_published_events_are_counted(delivery: Runtime) -> None:
    accepted = _value("postwise_messages_settled_total", outcome="accepted", reason="")
    sent = _value("postwise_events_published_total", type="sent")
    add_contacts(delivery, 7)
    dispatch_campaign(delivery, add_campaign(delivery, add_template(delivery)))
    drain(delivery)
    assert _value("postwise_messages_settled_total", outcome="accepted", reason="") == accepted + 7
    assert _value("postwise_events_published_total", type="sent") == sent + 7
