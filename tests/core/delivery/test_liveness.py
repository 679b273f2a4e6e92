"""A dead worker is known dead within seconds: its batch, its jobs and its dispatch are taken
over without waiting for a lease, and what is stuck is reported with its reason."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from click.testing import CliRunner
from delivery_helpers import add_campaign, add_contacts, add_template, statuses

from postwise.cli import cli
from postwise.db.models import utcnow
from postwise.delivery.dispatch import dispatch_campaign
from postwise.delivery.journal import Fenced, Journal
from postwise.delivery.ledger import campaign_message_id, claim
from postwise.delivery.liveness import ALIVE_PREFIX, REGISTERED_PREFIX, Heartbeat, dead
from postwise.delivery.recovery import recover_stale, stalls
from postwise.runtime import Runtime
from postwise.settings import Settings


def _registered_then_lapsed(runtime: Runtime, name: str) -> None:
    """What a worker killed more than ALIVE_SECONDS ago leaves: its registration only."""
    runtime.redis.set(REGISTERED_PREFIX + name, "1", ex=60)


def test_only_a_registered_heartbeat_that_lapsed_is_dead(delivery: Runtime) -> None:
    beat = Heartbeat(delivery.redis, "w-live")
    beat.start()
    try:
        _registered_then_lapsed(delivery, "w-gone")
        assert dead(delivery.redis, ["w-live", "w-gone", "never-registered", ""]) == {"w-gone"}
    finally:
        beat.stop()
    # A clean stop unregisters: a worker that left is not reported dead.
    assert dead(delivery.redis, ["w-live"]) == set()


def test_a_batch_held_by_a_dead_worker_is_recovered_before_its_lease_ends(
    delivery: Runtime,
) -> None:
    contacts = add_contacts(delivery, 5)
    campaign = add_campaign(delivery, add_template(delivery))
    dispatch_campaign(delivery, campaign)
    ids = [campaign_message_id(campaign, c) for c in contacts]
    delivery.redis.set(ALIVE_PREFIX + "w-killed", "1", ex=60)
    delivery.redis.set(REGISTERED_PREFIX + "w-killed", "1", ex=60)
    journal = Journal(delivery.redis, "a" * 32, ttl=600)
    journal.open("w-killed")
    now = utcnow()
    with delivery.engine.begin() as connection:
        claim(connection, ids, token="a" * 32, until=now + timedelta(minutes=10), now=now)
    journal.write(started=[ids[0]])  # the first was being transmitted when the worker died
    assert recover_stale(delivery).recovered == 0  # alive: nothing to do
    assert stalls(delivery, campaign_id=campaign) == []
    delivery.redis.delete(ALIVE_PREFIX + "w-killed")  # its heartbeat lapsed
    [problem] = stalls(delivery, campaign_id=campaign)
    assert "5 messages are held by worker(s) w-killed that stopped beating" in problem
    report = recover_stale(delivery)
    assert (report.recovered, report.in_doubt) == (5, 1)
    rows = statuses(delivery, campaign_id=campaign)
    assert rows[ids[0]] == "dead"  # in doubt: never sent again
    assert {rows[i] for i in ids[1:]} == {"queued"}  # never handed over: sent normally
    # Had the attempt still been running, it could hand nothing more over.
    try:
        journal.write(started=[ids[1]])
    except Fenced:
        pass
    else:
        raise AssertionError("a fenced attempt marked a message started")
    assert stalls(delivery, campaign_id=campaign) == []


def test_campaigns_status_and_health_say_a_dispatch_stopped_and_what_to_run(
    settings: Settings,
) -> None:
    runtime = Runtime(settings)
    try:
        add_contacts(runtime, 30)
        campaign = add_campaign(runtime, add_template(runtime))

        def die(report: object) -> None:
            raise RuntimeError("dispatcher killed")

        with pytest.raises(RuntimeError):
            dispatch_campaign(runtime, campaign, progress=die)
    finally:
        runtime.close()
    env = {
        "POSTWISE_DATA_DIR": str(settings.data_dir),
        "POSTWISE_DATABASE_URL": settings.resolved_database_url,
        "POSTWISE_REDIS_URL": settings.redis_url,
        "POSTWISE_SECRET_KEY": settings.secret_key.get_secret_value(),
    }
    shown = CliRunner().invoke(cli, ["campaigns", "status", str(campaign)], env=env)
    assert shown.exit_code == 0, shown.output
    assert f"STALLED: the dispatch of campaign {campaign} stopped" in shown.output
    assert f"`postwise campaigns send {campaign}`" in shown.output
    data = json.loads(
        CliRunner().invoke(cli, ["campaigns", "status", str(campaign), "--json"], env=env).output
    )
    assert len(data["stalled"]) == 1
