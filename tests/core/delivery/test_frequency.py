"""The global frequency cap: per contact, across campaigns and triggers, atomic in Redis."""

from __future__ import annotations

import threading

import fakeredis
import pytest
import redis

from postwise.delivery.frequency import FrequencyCap, parse_frequency_cap
from postwise.errors import ConfigurationError


@pytest.fixture(params=["real", "embedded"])
def client(request: pytest.FixtureRequest) -> redis.Redis:
    if request.param == "real":
        real: redis.Redis = request.getfixturevalue("real_redis")
        return real
    return fakeredis.FakeRedis(server=fakeredis.FakeServer())


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("3/24h", (3, 86400.0)),
        ("1/d", (1, 86400.0)),
        ("10/7d", (10, 604800.0)),
        ("5/30m", (5, 1800.0)),
    ],
)
def test_caps_are_written_as_count_per_window(text: str, expected: tuple[int, float]) -> None:
    assert parse_frequency_cap(text) == expected


@pytest.mark.parametrize("text", ["", "off", "0", "none"])
def test_an_empty_or_off_cap_means_no_cap(text: str) -> None:
    assert FrequencyCap.from_setting(text) is None


@pytest.mark.parametrize("text", ["3 per day", "3/24", "-1/h", "0/h"])
def test_a_malformed_cap_is_refused_with_the_expected_form(text: str) -> None:
    with pytest.raises(ConfigurationError, match="frequency_cap"):
        parse_frequency_cap(text)


def test_a_contact_gets_at_most_the_cap_in_a_window(client: redis.Redis) -> None:
    cap = FrequencyCap(2, 3600)
    assert cap.count(client, [(1, "m1"), (1, "m2"), (1, "m3"), (2, "m4")]) == [
        True,
        True,
        False,
        True,
    ]
    assert cap.used(client, 1) == 2


def test_counting_the_same_message_again_uses_no_second_slot(client: redis.Redis) -> None:
    cap = FrequencyCap(2, 3600)
    assert cap.count(client, [(1, "m1")]) == [True]
    assert cap.count(client, [(1, "m1")]) == [True]
    assert cap.count(client, [(1, "m2")]) == [True]
    assert cap.count(client, [(1, "m3")]) == [False]


def test_slots_free_up_when_the_window_passes(client: redis.Redis) -> None:
    import time

    cap = FrequencyCap(1, 0.2)
    assert cap.count(client, [(7, "a")]) == [True]
    assert cap.count(client, [(7, "b")]) == [False]
    time.sleep(0.3)
    assert cap.count(client, [(7, "b")]) == [True]


@pytest.mark.redis
def test_racing_dispatchers_cannot_both_take_the_last_slot(real_redis: redis.Redis) -> None:
    cap = FrequencyCap(3, 3600)
    wins: list[bool] = []
    lock = threading.Lock()

    def dispatch(worker: int) -> None:
        for n in range(5):
            fits = cap.count(real_redis, [(42, f"w{worker}-m{n}")])[0]
            with lock:
                wins.append(fits)

    threads = [threading.Thread(target=dispatch, args=(w,)) for w in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wins.count(True) == 3
    assert cap.used(real_redis, 42) == 3
