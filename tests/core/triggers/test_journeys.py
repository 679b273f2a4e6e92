"""Journeys: save-time validation, the executor end to end, durability and bad input."""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from sqlmodel import select

from postwise.compliance.erasure import erase_contact
from postwise.db.models import JourneyRun, Message, MessageStatus, Template, TemplateVersion
from postwise.errors import ValidationError
from postwise.journeys.engine import JourneyEngine
from postwise.journeys.store import JourneyKeys, JourneyStore, read_journey_stats
from postwise.runtime import Runtime

Engine = Callable[..., JourneyEngine]
START = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)  # a Monday, noon UTC


class Clock:
    def __init__(self, now: datetime = START) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def make_engine(runtime: Runtime, clock: Clock) -> Iterator[Engine]:
    engines: list[JourneyEngine] = []

    def make(rt: Runtime | None = None, **options: Any) -> JourneyEngine:
        options.setdefault("consumer", f"j-{len(engines)}")
        options.setdefault("block_ms", 10)
        options.setdefault("clock", clock)
        engine = JourneyEngine(rt or runtime, **options)
        engine.ensure_group("0")
        engine.reload()
        engines.append(engine)
        return engine

    yield make
    for engine in engines:
        engine.close()


@pytest.fixture
def make_journey(runtime: Runtime, template_id: int) -> Callable[..., int]:
    def make(**definition: Any) -> int:
        definition.setdefault("name", "flow")
        definition.setdefault("entry", {"event": "cart_abandoned"})
        with runtime.session() as session:
            journey = JourneyStore(session, runtime).create(definition)
            assert journey.id is not None
            return journey.id

    return make


def drain(engine: JourneyEngine) -> None:
    idle = 0
    while idle < 2:
        idle = idle + 1 if engine.step() == 0 else 0


def sent(runtime: Runtime, contact_id: int) -> list[Message]:
    with runtime.session() as session:
        query = select(Message).where(Message.contact_id == contact_id)
        return [m for m in session.exec(query).all() if m.status == MessageStatus.QUEUED]


def runs(runtime: Runtime, journey_id: int) -> list[JourneyRun]:
    with runtime.session() as session:
        query = select(JourneyRun).where(JourneyRun.journey_id == journey_id)
        return list(session.exec(query.order_by(JourneyRun.id)).all())


def stats(runtime: Runtime, journey_id: int) -> dict[str, int]:
    return read_journey_stats(runtime.redis, JourneyKeys(), [journey_id])[journey_id]


CART_FLOW: dict[str, Any] = {
    "name": "abandoned-cart",
    "entry": {"event": "cart_abandoned"},
    "goal": {"event": "purchase"},
    "steps": [
        {"id": "wait", "type": "wait", "duration": "1h", "next": "remind"},
        {"id": "remind", "type": "send", "template": "welcome", "next": "bought?"},
        {
            "id": "bought?",
            "type": "wait",
            "for_event": {"type": "viewed_cart"},
            "timeout": "1d",
            "next": "tag",
            "timeout_next": "last",
        },
        {"id": "tag", "type": "update_contact", "add_tags": ["came-back"], "next": "last"},
        {"id": "last", "type": "send", "template": "welcome"},
    ],
}


# -- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("steps", "field", "message"),
    [
        (
            [
                {"id": "a", "type": "send", "template": "welcome", "next": "b"},
                {
                    "id": "b",
                    "type": "branch",
                    "conditions": {},
                    "then": "a",
                    "else": "c",
                },
                {"id": "c", "type": "exit"},
            ],
            "steps[1]",
            "this cycle has no wait step, so a contact would go round it without end: a -> b -> a",
        ),
        (
            [
                {"id": "a", "type": "send", "template": "welcome"},
                {"id": "orphan", "type": "exit"},
            ],
            "steps[1]",
            "step 'orphan' cannot be reached from the start ('a')",
        ),
        (
            [{"id": "a", "type": "send", "template": "welcome", "next": "nowhere"}],
            "steps[0].next",
            "no step 'nowhere'",
        ),
        (
            [{"id": "a", "type": "send", "template": "no-such-template"}],
            "steps[0].template",
            "no template 'no-such-template'",
        ),
        (
            [{"id": "a", "type": "wait", "for_event": {"type": "purchase"}}],
            "steps[0]",
            "waiting 'for_event' needs a 'timeout'",
        ),
        (
            [{"id": "a", "type": "wait", "until_local_time": "25:00"}],
            "steps[0].until_local_time",
            "must be HH:MM",
        ),
        (
            [
                {
                    "id": "a",
                    "type": "branch",
                    "conditions": [{"type": "no_such_condition"}],
                    "then": "b",
                },
                {"id": "b", "type": "exit"},
            ],
            "steps[0].conditions.all[0].type",
            "unknown condition type 'no_such_condition'",
        ),
    ],
)
def test_a_bad_flow_is_refused_at_save_with_the_field_and_a_clear_message(
    runtime: Runtime, template_id: int, steps: list[Any], field: str, message: str
) -> None:
    with runtime.session() as session, pytest.raises(ValidationError) as caught:
        JourneyStore(session, runtime).create(
            {"name": "bad", "entry": {"event": "signup"}, "steps": steps}
        )
    assert caught.value.field is not None and caught.value.field.startswith(field)
    assert message in str(caught.value)


def test_a_cycle_through_a_wait_is_allowed(runtime: Runtime, template_id: int) -> None:
    with runtime.session() as session:
        JourneyStore(session, runtime).create(
            {
                "name": "weekly-nudge",
                "entry": {"event": "signup"},
                "steps": [
                    {"id": "nudge", "type": "send", "template": "welcome", "next": "week"},
                    {"id": "week", "type": "wait", "duration": "7d", "next": "nudge"},
                ],
            }
        )


# -- the executor --------------------------------------------------------------------------------


def test_abandoned_cart_flow_waits_sends_and_branches_on_an_event(
    runtime: Runtime,
    make_contact: Callable[..., int],
    make_journey: Callable[..., int],
    publish: Callable[..., str],
    make_engine: Engine,
    clock: Clock,
) -> None:
    journey = make_journey(**CART_FLOW)
    came_back, silent = make_contact(), make_contact()
    engine = make_engine()
    for contact in (came_back, silent):
        publish("cart_abandoned", contact, occurred_at=clock.now)
    drain(engine)
    assert [r.step for r in runs(runtime, journey)] == ["wait", "wait"]
    assert sent(runtime, came_back) == []
    clock.advance(hours=1, seconds=1)
    drain(engine)
    assert [len(sent(runtime, c)) for c in (came_back, silent)] == [1, 1]
    assert [(r.step, r.waiting_for) for r in runs(runtime, journey)] == [
        ("bought?", "viewed_cart"),
        ("bought?", "viewed_cart"),
    ]
    clock.advance(hours=2)
    publish("viewed_cart", came_back, occurred_at=clock.now)
    drain(engine)
    clock.advance(days=1)
    drain(engine)
    assert [len(sent(runtime, c)) for c in (came_back, silent)] == [2, 2]
    final = {r.contact_id: r for r in runs(runtime, journey)}
    assert final[came_back].status == final[silent].status == "done"
    assert final[came_back].exit_reason == final[silent].exit_reason == "completed"
    counters = stats(runtime, journey)
    assert counters["journey:entered"] == 2
    assert counters["remind:sent"] == 2
    assert counters["bought?:event_arrived"] == 1
    assert counters["bought?:timed_out"] == 1
    assert counters["tag:updated"] == 1
    assert counters["exit:completed"] == 2
    assert runtime.redis.zcard(JourneyKeys().due) == 0
    from postwise.db.models import ContactTag

    with runtime.session() as session:
        tags = session.exec(select(ContactTag.tag).where(ContactTag.contact_id == came_back))
        assert list(tags) == ["came-back"]


def test_the_goal_exits_the_contact_at_once_and_nothing_is_sent_after(
    runtime: Runtime,
    make_contact: Callable[..., int],
    make_journey: Callable[..., int],
    publish: Callable[..., str],
    make_engine: Engine,
    clock: Clock,
) -> None:
    journey = make_journey(**CART_FLOW)
    buyer = make_contact()
    engine = make_engine()
    publish("cart_abandoned", buyer, occurred_at=clock.now)
    drain(engine)
    clock.advance(minutes=20)
    publish("purchase", buyer, occurred_at=clock.now)
    drain(engine)
    [run] = runs(runtime, journey)
    assert (run.status, run.exit_reason) == ("done", "converted")
    clock.advance(days=3)
    drain(engine)
    assert sent(runtime, buyer) == []
    counters = stats(runtime, journey)
    assert counters["goal:converted"] == 1
    assert counters["wait:converted"] == 1


@pytest.mark.parametrize(
    ("reentry", "entries"), [("once", 1), ("always", 2), ({"every": "30d"}, 1)]
)
def test_reentry_rules(
    runtime: Runtime,
    make_contact: Callable[..., int],
    make_journey: Callable[..., int],
    publish: Callable[..., str],
    make_engine: Engine,
    clock: Clock,
    reentry: Any,
    entries: int,
) -> None:
    journey = make_journey(
        name="welcome",
        entry={"event": "signup"},
        reentry=reentry,
        steps=[{"id": "hello", "type": "send", "template": "welcome"}],
    )
    contact = make_contact()
    engine = make_engine()
    publish("signup", contact, occurred_at=clock.now)
    drain(engine)
    clock.advance(days=2)
    publish("signup", contact, occurred_at=clock.now)
    drain(engine)
    assert len(runs(runtime, journey)) == entries
    assert len(sent(runtime, contact)) == entries


def test_a_contact_inside_is_not_entered_twice_and_a_reread_event_enters_once(
    runtime: Runtime,
    make_contact: Callable[..., int],
    make_journey: Callable[..., int],
    publish: Callable[..., str],
    make_engine: Engine,
) -> None:
    journey = make_journey(**{**CART_FLOW, "reentry": "always"})
    contact = make_contact()
    publish("cart_abandoned", contact, event_id="e1")
    publish("cart_abandoned", contact, event_id="e1")  # a producer retry
    publish("cart_abandoned", contact, event_id="e2")  # while inside
    drain(make_engine())
    assert len(runs(runtime, journey)) == 1
    assert stats(runtime, journey)["entry:already_inside"] == 1


def test_a_worker_killed_after_sending_but_before_saving_sends_nothing_twice(
    runtime: Runtime,
    make_contact: Callable[..., int],
    make_journey: Callable[..., int],
    publish: Callable[..., str],
    make_engine: Engine,
    clock: Clock,
) -> None:
    journey = make_journey(**CART_FLOW)
    contact = make_contact()
    first = make_engine(due_lease_ms=1000)
    publish("cart_abandoned", contact, occurred_at=clock.now)
    drain(first)
    clock.advance(hours=1, seconds=1)

    class Killed(BaseException):
        pass

    def die(*args: Any, **kwargs: Any) -> None:
        raise Killed

    first._save = die  # type: ignore[method-assign]
    with pytest.raises(Killed):
        first.process_due()
    assert len(sent(runtime, contact)) == 1  # sent, but the position was never written
    [run] = runs(runtime, journey)
    assert run.step == "wait"
    # The lease runs out; another worker finds the run due and replays the step.
    clock.advance(seconds=2)
    second = make_engine()
    drain(second)
    assert len(sent(runtime, contact)) == 1
    [run] = runs(runtime, journey)
    assert run.step == "bought?"


def test_editing_a_live_flow_new_entrants_get_the_new_version_and_a_mapping_moves_others(
    runtime: Runtime,
    make_contact: Callable[..., int],
    make_journey: Callable[..., int],
    publish: Callable[..., str],
    make_engine: Engine,
    clock: Clock,
) -> None:
    journey = make_journey(**CART_FLOW)
    inside, later, moved = make_contact(), make_contact(), make_contact()
    engine = make_engine()
    publish("cart_abandoned", inside, occurred_at=clock.now)
    publish("cart_abandoned", moved, occurred_at=clock.now)
    drain(engine)
    v2 = {
        **CART_FLOW,
        "steps": [
            {"id": "pause", "type": "wait", "duration": "3h", "next": "remind"},
            {"id": "remind", "type": "send", "template": "welcome"},
        ],
    }
    with runtime.session() as session:
        JourneyStore(session, runtime).replace(journey, v2)
    publish("cart_abandoned", later, occurred_at=clock.now)
    drain(engine)
    by_contact = {r.contact_id: r for r in runs(runtime, journey)}
    assert (by_contact[inside].version, by_contact[inside].step) == (1, "wait")
    assert (by_contact[later].version, by_contact[later].step) == (2, "pause")
    with runtime.session() as session:
        store = JourneyStore(session, runtime)
        with pytest.raises(ValidationError, match="no step 'wait'"):
            store.migrate(journey, 1, {"wait": "wait"})
    # Only the mapped runs move; unmapped ones would stay (here: move one by hand first).
    with runtime.session() as session:
        run = session.get(JourneyRun, by_contact[inside].id)
        assert run is not None
        run.step = "bought?"
        session.add(run)
    with runtime.session() as session:
        assert JourneyStore(session, runtime).migrate(journey, 1, {"wait": "pause"}) == {"wait": 1}
    by_contact = {r.contact_id: r for r in runs(runtime, journey)}
    assert (by_contact[moved].version, by_contact[moved].step) == (2, "pause")
    assert (by_contact[inside].version, by_contact[inside].step) == (1, "bought?")


def test_quiet_hours_hold_a_send_until_they_end_in_the_contacts_zone(
    runtime: Runtime,
    make_contact: Callable[..., int],
    make_journey: Callable[..., int],
    publish: Callable[..., str],
    make_engine: Engine,
    clock: Clock,
) -> None:
    journey = make_journey(
        name="night",
        entry={"event": "signup"},
        quiet_hours="21-8",
        steps=[{"id": "hello", "type": "send", "template": "welcome"}],
    )
    tokyo = make_contact(timezone="Asia/Tokyo")  # noon UTC is 21:00 in Tokyo: quiet
    london = make_contact(timezone="Europe/London")
    engine = make_engine()
    publish("signup", tokyo, occurred_at=clock.now)
    publish("signup", london, occurred_at=clock.now)
    drain(engine)
    assert len(sent(runtime, london)) == 1
    assert sent(runtime, tokyo) == []
    held = {r.contact_id: r for r in runs(runtime, journey)}[tokyo]
    assert held.due_at is not None
    assert held.due_at.replace(tzinfo=UTC) == datetime(2026, 3, 2, 23, 0, tzinfo=UTC)  # 08:00 JST
    clock.now = datetime(2026, 3, 2, 23, 0, 1, tzinfo=UTC)
    drain(engine)
    assert len(sent(runtime, tokyo)) == 1


def test_wait_until_a_local_time_of_day(
    runtime: Runtime,
    make_contact: Callable[..., int],
    make_journey: Callable[..., int],
    publish: Callable[..., str],
    make_engine: Engine,
    clock: Clock,
) -> None:
    journey = make_journey(
        name="morning",
        entry={"event": "signup"},
        steps=[
            {"id": "nine", "type": "wait", "until_local_time": "09:00", "next": "hello"},
            {"id": "hello", "type": "send", "template": "welcome"},
        ],
    )
    new_york = make_contact(timezone="America/New_York")  # 07:00 there at noon UTC
    engine = make_engine()
    publish("signup", new_york, occurred_at=clock.now)
    drain(engine)
    [run] = runs(runtime, journey)
    assert run.due_at is not None
    assert run.due_at.replace(tzinfo=UTC) == datetime(2026, 3, 2, 14, 0, tzinfo=UTC)


def test_the_frequency_cap_defers_a_journey_send_instead_of_dropping_it(
    make_settings: Callable[..., Any],
    make_contact: Callable[..., int],
    publish: Callable[..., str],
    make_engine: Engine,
    clock: Clock,
    template_id: int,
) -> None:
    runtime = Runtime(make_settings(frequency_cap="1/24h"))
    try:
        with runtime.session() as session:
            journey = (
                JourneyStore(session, runtime)
                .create(
                    {
                        "name": "capped",
                        "entry": {"event": "signup"},
                        "steps": [
                            {"id": "one", "type": "send", "template": "welcome", "next": "two"},
                            {"id": "two", "type": "send", "template": "welcome"},
                        ],
                    }
                )
                .id
            )
        assert journey is not None
        contact = make_contact()
        engine = make_engine(runtime)
        publish("signup", contact, occurred_at=clock.now)
        drain(engine)
        [run] = runs(runtime, journey)
        assert (run.step, run.status) == ("two", "active")
        assert stats(runtime, journey)["two:deferred"] == 1
        assert run.due_at is not None
    finally:
        runtime.close()


def test_random_split_is_stable_and_follows_the_weights(
    runtime: Runtime,
    make_contact: Callable[..., int],
    make_journey: Callable[..., int],
    publish: Callable[..., str],
    make_engine: Engine,
) -> None:
    journey = make_journey(
        name="split",
        entry={"event": "signup"},
        steps=[
            {
                "id": "ab",
                "type": "split",
                "paths": [{"weight": 80, "next": "a"}, {"weight": 20, "next": "b"}],
            },
            {"id": "a", "type": "exit", "reason": "path_a"},
            {"id": "b", "type": "exit", "reason": "path_b"},
        ],
    )
    contacts = [make_contact() for _ in range(200)]
    for contact in contacts:
        publish("signup", contact)
    drain(make_engine())
    counters = stats(runtime, journey)
    assert counters["exit:path_a"] + counters["exit:path_b"] == 200
    assert 130 <= counters["exit:path_a"] <= 190


# -- bad input while running ---------------------------------------------------------------------


class _Hook(BaseHTTPRequestHandler):
    answers: list[int] = []
    received: list[tuple[dict[str, str], bytes]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append((dict(self.headers), body))
        status = type(self).answers.pop(0) if type(self).answers else 200
        self.send_response(status)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def hook_server() -> Iterator[str]:
    _Hook.answers, _Hook.received = [], []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hook)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook"
    server.shutdown()


def test_a_webhook_is_signed_retried_on_500_and_then_takes_on_failure(
    runtime: Runtime,
    make_contact: Callable[..., int],
    make_journey: Callable[..., int],
    publish: Callable[..., str],
    make_engine: Engine,
    clock: Clock,
    hook_server: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HOOK_SECRET", "s3cret")
    journey = make_journey(
        name="hook",
        entry={"event": "signup"},
        steps=[
            {
                "id": "crm",
                "type": "webhook",
                "url": hook_server,
                "secret_env": "HOOK_SECRET",
                "attempts": 2,
                "next": "done",
                "on_failure": "fallback",
            },
            {"id": "done", "type": "exit", "reason": "hooked"},
            {"id": "fallback", "type": "exit", "reason": "hook_failed"},
        ],
    )
    ok, failing = make_contact(), make_contact()
    engine = make_engine()
    publish("signup", ok, occurred_at=clock.now)
    drain(engine)
    headers, body = _Hook.received[0]
    stamp, signature = (
        part.split("=", 1)[1] for part in headers["X-Postwise-Signature"].split(",")
    )
    expected = hmac.new(b"s3cret", stamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    assert signature == expected
    assert json.loads(body)["contact_id"] == ok
    _Hook.answers = [500, 500]
    publish("signup", failing, occurred_at=clock.now)
    drain(engine)
    clock.advance(seconds=31)
    drain(engine)
    reasons = {r.contact_id: r.exit_reason for r in runs(runtime, journey)}
    assert reasons == {ok: "hooked", failing: "hook_failed"}
    assert len(_Hook.received) == 3
    assert stats(runtime, journey)["crm:failed"] == 2


def test_a_template_deleted_under_a_live_flow_ends_the_run_with_the_reason(
    runtime: Runtime,
    make_contact: Callable[..., int],
    make_journey: Callable[..., int],
    publish: Callable[..., str],
    make_engine: Engine,
    clock: Clock,
    template_id: int,
) -> None:
    journey = make_journey(**CART_FLOW)
    contact = make_contact()
    engine = make_engine()
    publish("cart_abandoned", contact, occurred_at=clock.now)
    drain(engine)
    with runtime.session() as session:
        for version in session.exec(
            select(TemplateVersion).where(TemplateVersion.template_id == template_id)
        ):
            session.delete(version)
        session.flush()
        template = session.get(Template, template_id)
        session.delete(template)
    clock.advance(hours=2)
    drain(engine)
    [run] = runs(runtime, journey)
    assert (run.status, run.exit_reason) == ("done", "template_missing")
    assert stats(runtime, journey)["exit:template_missing"] == 1


def test_a_contact_erased_mid_journey_is_removed_at_once_and_nothing_is_sent(
    runtime: Runtime,
    make_contact: Callable[..., int],
    make_journey: Callable[..., int],
    publish: Callable[..., str],
    make_engine: Engine,
    clock: Clock,
) -> None:
    journey = make_journey(**CART_FLOW)
    contact = make_contact()
    engine = make_engine()
    publish("cart_abandoned", contact, occurred_at=clock.now)
    drain(engine)
    assert len(runs(runtime, journey)) == 1
    report = erase_contact(runtime, contact_id=contact)
    assert report.counts["journey_runs"] == 1
    assert runs(runtime, journey) == []
    clock.advance(hours=2)
    drain(engine)
    with runtime.session() as session:
        assert list(session.exec(select(Message))) == []
    assert runtime.redis.zcard(JourneyKeys().due) == 0


def test_a_worker_that_lost_the_race_writes_nothing_and_counts_a_conflict(
    runtime: Runtime,
    make_contact: Callable[..., int],
    make_journey: Callable[..., int],
    publish: Callable[..., str],
    make_engine: Engine,
    clock: Clock,
) -> None:
    from postwise.journeys.engine import StepReport, _load_runs, _Stats, _Work

    journey = make_journey(**CART_FLOW)
    contact = make_contact()
    engine = make_engine()
    publish("cart_abandoned", contact, occurred_at=clock.now)
    drain(engine)
    with runtime.session() as session:
        [stale] = _load_runs(session, JourneyRun.journey_id == journey)
    clock.advance(hours=1, seconds=1)
    drain(engine)  # the winner: sends and moves on
    [moved] = runs(runtime, journey)
    stale.step, stale.seq = "remind", stale.seq + 1  # the loser computed the same move
    compiled = engine.journeys.get(journey, 1)
    assert compiled is not None
    report = StepReport()
    engine._save([_Work(stale, compiled, stale.seq - 1)], _Stats(), report)
    assert report.conflicts == 1
    [after] = runs(runtime, journey)
    assert (after.step, after.seq) == (moved.step, moved.seq) == ("bought?", 2)
    assert len(sent(runtime, contact)) == 1


def test_send_time_optimisation_waits_for_the_contacts_most_engaged_hour(
    runtime: Runtime,
    make_contact: Callable[..., int],
    make_journey: Callable[..., int],
    publish: Callable[..., str],
    make_engine: Engine,
    clock: Clock,
) -> None:
    import uuid

    from postwise.db.models import Event

    journey = make_journey(
        name="sto",
        entry={"event": "signup"},
        steps=[
            {"id": "best", "type": "wait", "until_best_hour": {"fallback": "10:00"}, "next": "go"},
            {"id": "go", "type": "send", "template": "welcome"},
        ],
    )
    evening = make_contact(timezone="Europe/Paris")
    unknown = make_contact(timezone="Europe/Paris")
    with runtime.session() as session:
        for days in (3, 5, 9, 12):  # opens at 19:xx in Paris (18:xx UTC in March)
            session.add(
                Event(
                    event_id=uuid.uuid4().hex,
                    type="open",
                    occurred_at=clock.now.replace(hour=18, minute=20) - timedelta(days=days),
                    contact_id=evening,
                )
            )
        for days in (1, 2, 4, 6, 8):  # a privacy proxy fetching at 03:00: not a person
            session.add(
                Event(
                    event_id=uuid.uuid4().hex,
                    type="open",
                    occurred_at=clock.now.replace(hour=2) - timedelta(days=days),
                    contact_id=evening,
                    automated=True,
                    properties={"machine_open": True},
                )
            )
    engine = make_engine()
    publish("signup", evening, occurred_at=clock.now)
    publish("signup", unknown, occurred_at=clock.now)
    drain(engine)
    due = {r.contact_id: r.due_at.replace(tzinfo=UTC) for r in runs(runtime, journey) if r.due_at}
    assert due[evening] == datetime(2026, 3, 2, 18, 0, tzinfo=UTC)  # 19:00 in Paris, today
    assert due[unknown] == datetime(2026, 3, 3, 9, 0, tzinfo=UTC)  # the fallback, 10:00 Paris


def test_a_birthday_journey_enters_each_contact_on_the_day_at_nine_their_time_once(
    runtime: Runtime,
    make_contact: Callable[..., int],
    make_journey: Callable[..., int],
    make_engine: Engine,
    clock: Clock,
) -> None:
    journey = make_journey(
        name="birthday",
        entry={"date_attribute": {"attribute": "birthday", "yearly": True, "at": "09:00"}},
        reentry="always",
        steps=[{"id": "wish", "type": "send", "template": "welcome"}],
    )
    # 12:00 UTC on 2 March: 13:00 in Paris, 07:00 in New York, 21:00 in Tokyo.
    paris = make_contact(timezone="Europe/Paris", attributes={"birthday": "1990-03-02"})
    new_york = make_contact(timezone="America/New_York", attributes={"birthday": "1985-03-02"})
    other_day = make_contact(timezone="Europe/Paris", attributes={"birthday": "1990-03-03"})
    make_contact(timezone="Europe/Paris", attributes={"birthday": "not a date"})
    engine = make_engine()
    assert engine.process_scheduled() == 1
    assert engine.process_scheduled() == 0  # swept again: nobody enters twice
    clock.advance(hours=2, minutes=1)  # 09:01 in New York
    assert engine.process_scheduled() == 1
    assert {r.contact_id for r in runs(runtime, journey)} == {paris, new_york}
    assert len(sent(runtime, paris)) == 1 and sent(runtime, other_day) == []
    clock.advance(days=1)
    assert engine.process_scheduled() == 1  # other_day's birthday, at 13:01 Paris time
    assert {r.contact_id for r in runs(runtime, journey)} == {paris, new_york, other_day}


def test_a_weekly_schedule_enters_the_contacts_who_pass_the_conditions_once_per_occurrence(
    runtime: Runtime,
    make_contact: Callable[..., int],
    make_journey: Callable[..., int],
    make_engine: Engine,
    clock: Clock,
) -> None:
    journey = make_journey(
        name="monday-digest",
        entry={
            "schedule": {"at": "11:00", "timezone": "Europe/London", "days_of_week": ["mon"]},
            "conditions": [
                {"type": "contact_attribute", "config": {"attribute": "digest", "value": True}}
            ],
        },
        reentry="always",
        steps=[{"id": "digest", "type": "send", "template": "welcome"}],
    )
    wants = [make_contact(attributes={"digest": True}) for _ in range(3)]
    make_contact(attributes={"digest": False})
    engine = make_engine()
    assert engine.process_scheduled(chunk=2) == 3  # Monday 12:00 in London, after 11:00
    assert engine.process_scheduled() == 0
    assert sorted(r.contact_id for r in runs(runtime, journey)) == sorted(wants)
    clock.advance(days=1)  # Tuesday: not a day of the schedule
    assert engine.process_scheduled() == 0
    clock.advance(days=6)  # the next Monday
    assert engine.process_scheduled() == 3
    assert len(runs(runtime, journey)) == 6


def test_an_entry_needs_exactly_one_kind(runtime: Runtime, template_id: int) -> None:
    with runtime.session() as session, pytest.raises(ValidationError, match="exactly one of"):
        JourneyStore(session, runtime).create(
            {
                "name": "both",
                "entry": {"event": "signup", "schedule": {"at": "09:00"}},
                "steps": [{"id": "a", "type": "exit"}],
            }
        )


def test_under_the_frequency_cap_the_higher_priority_journey_sends_and_the_other_waits(
    make_settings: Callable[..., Any],
    make_contact: Callable[..., int],
    publish: Callable[..., str],
    make_engine: Engine,
    clock: Clock,
    template_id: int,
) -> None:
    runtime = Runtime(make_settings(frequency_cap="1/24h"))
    try:
        ids = {}
        with runtime.session() as session:
            store = JourneyStore(session, runtime)
            for name, priority in (("low", 1), ("high", 9)):
                ids[name] = store.create(
                    {
                        "name": name,
                        "priority": priority,
                        "entry": {"event": "signup"},
                        "steps": [{"id": "hello", "type": "send", "template": "welcome"}],
                    }
                ).id
        contact = make_contact()
        engine = make_engine(runtime)
        publish("signup", contact, occurred_at=clock.now)
        drain(engine)
        state = {name: runs(runtime, jid)[0] for name, jid in ids.items() if jid}
        assert (state["high"].status, state["high"].exit_reason) == ("done", "completed")
        assert (state["low"].status, state["low"].step) == ("active", "hello")
        assert stats(runtime, ids["low"] or 0)["hello:deferred"] == 1
    finally:
        runtime.close()


def test_entering_and_leaving_a_segment_start_journeys(
    runtime: Runtime,
    make_contact: Callable[..., int],
    make_journey: Callable[..., int],
    make_engine: Engine,
) -> None:
    from postwise.db.models import Contact, Segment

    with runtime.session() as session:
        session.add(
            Segment(
                name="engaged",
                kind="rules",
                rules={"field": "engagement_score", "op": "gte", "value": 60},
            )
        )
    joined = make_journey(
        name="welcome-engaged",
        entry={"segment": {"name": "engaged", "on": "enter"}},
        reentry="always",
        steps=[{"id": "hello", "type": "send", "template": "welcome"}],
    )
    left = make_journey(
        name="win-back",
        entry={"segment": {"name": "engaged", "on": "leave"}},
        reentry="always",
        steps=[{"id": "miss", "type": "send", "template": "welcome"}],
    )
    already = make_contact(engagement_score=80)
    rising = make_contact(engagement_score=10)
    engine = make_engine()
    assert engine.process_scheduled() == 0  # the first sweep records who is in
    with runtime.session() as session:
        for contact_id, score in ((rising, 75.0), (already, 20.0)):
            contact = session.get(Contact, contact_id)
            assert contact is not None
            contact.engagement_score = score
            session.add(contact)
    for key in runtime.redis.scan_iter(match="postwise:journeys:segment:*:lock"):
        runtime.redis.delete(key)  # as if the sweep interval had passed
    assert engine.process_scheduled() == 2
    assert [r.contact_id for r in runs(runtime, joined)] == [rising]
    assert [r.contact_id for r in runs(runtime, left)] == [already]
    assert engine.process_scheduled() == 0  # within the interval: no second sweep


def test_a_segment_entry_names_an_existing_segment(runtime: Runtime, template_id: int) -> None:
    with runtime.session() as session, pytest.raises(ValidationError) as caught:
        JourneyStore(session, runtime).create(
            {
                "name": "nope",
                "entry": {"segment": {"name": "no-such"}},
                "steps": [{"id": "a", "type": "exit"}],
            }
        )
    assert caught.value.field == "entry.segment.name"


def test_a_send_through_an_experiment_uses_the_gate_and_holdouts_go_on_without_it(
    runtime: Runtime,
    template_id: int,
    make_contact: Callable[..., int],
    make_journey: Callable[..., int],
    publish: Callable[..., str],
    make_engine: Engine,
) -> None:
    from postwise.db.models import Experiment
    from postwise.experiments.assignment import assign_variant

    with runtime.session() as session:
        session.add(
            TemplateVersion(template_id=template_id, version=2, subject="B", html="<p>b</p>")
        )
        experiment = Experiment(
            name="welcome subject",
            holdout=0.3,
            variants=[
                {"name": "a", "weight": 0.5, "template_version": 1},
                {"name": "b", "weight": 0.5, "template_version": 2},
            ],
        )
        session.add(experiment)
        session.flush()
        experiment_id = experiment.id
    assert experiment_id is not None
    journey = make_journey(
        name="tested",
        entry={"event": "signup"},
        steps=[
            {
                "id": "hello",
                "type": "send",
                "template": "welcome",
                "experiment_id": experiment_id,
                "next": "tag",
            },
            {"id": "tag", "type": "update_contact", "add_tags": ["welcomed"]},
        ],
    )
    contacts = [make_contact() for _ in range(30)]
    for contact in contacts:
        publish("signup", contact)
    drain(make_engine())
    expected = {
        c: assign_variant(experiment_id, c, {"a": 0.5, "b": 0.5}, holdout=0.3) for c in contacts
    }
    held_out = [c for c, v in expected.items() if v is None]
    assert held_out
    counters = stats(runtime, journey)
    assert counters["hello:holdout"] == len(held_out)
    assert counters["hello:sent"] == len(contacts) - len(held_out)
    assert {r.exit_reason for r in runs(runtime, journey)} == {"completed"}
    for contact in contacts:
        variants = [m.variant for m in sent(runtime, contact)]
        assert variants == ([] if expected[contact] is None else [expected[contact]])
