"""The funnel metrics of docs/analytics.md computed the plain way, for tests of every backend.

Written apart from the backends' queries (no SQL, one message at a time) so that a test can
check a backend against it on generated events: the sends are the messages with a ``sent`` event
in the window (and campaign); each other count is of those messages' events, whenever they came.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

from hypothesis import strategies as st

from postwise.analytics.sinks import StoredEvent

__all__ = ["FUNNEL_EVENT_TYPES", "T0", "expected_funnels", "funnel_scenarios"]


def expected_funnels(
    events: Iterable[StoredEvent],
    *,
    since: datetime | None = None,
    until: datetime | None = None,
    campaign_id: int | None = None,
    key: Callable[[StoredEvent], Any] = lambda sent: None,
    contacts: set[int] | None = None,
) -> dict[Any, dict[str, int]]:
    """Counts per ``key`` of the ``sent`` event (``None`` for all sends): sent, bounced,
    opened, opened_by_click_only, opened_including_machine, clicked, scanner_clicked,
    unsubscribed, complained; only messages to ``contacts`` when given."""
    unique = {e.event_id: e for e in events}.values()
    by_message: dict[str, list[StoredEvent]] = defaultdict(list)
    for event in unique:
        if event.message_id:
            by_message[event.message_id].append(event)
    result: dict[Any, dict[str, int]] = {}
    for message_events in by_message.values():
        sends = [
            e
            for e in message_events
            if e.type == "sent"
            and (since is None or e.occurred_at >= since)
            and (until is None or e.occurred_at < until)
            and (campaign_id is None or e.campaign_id == campaign_id)
        ]
        if not sends:
            continue
        sent = sends[0]
        if contacts is not None and sent.contact_id not in contacts:
            continue
        types = {(e.type, e.automated) for e in message_events}
        bounced = any(kind == "bounce" for kind, _ in types)
        pixel = ("open", False) in types
        machine_open = ("open", True) in types
        click = ("click", False) in types
        scanner = ("click", True) in types
        row = result.setdefault(
            key(sent),
            dict.fromkeys(
                (
                    "sent",
                    "bounced",
                    "opened",
                    "opened_by_click_only",
                    "opened_including_machine",
                    "clicked",
                    "scanner_clicked",
                    "unsubscribed",
                    "complained",
                ),
                0,
            ),
        )
        row["sent"] += 1
        if bounced:
            row["bounced"] += 1
            continue
        row["opened"] += pixel or click
        row["opened_by_click_only"] += click and not pixel
        row["opened_including_machine"] += pixel or click or machine_open
        row["clicked"] += click
        row["scanner_clicked"] += scanner
        row["unsubscribed"] += any(kind == "unsubscribe" for kind, _ in types)
        row["complained"] += any(kind == "complaint" for kind, _ in types)
    return result


T0 = datetime(2025, 6, 1, 12, tzinfo=UTC)


@st.composite
def funnel_scenarios(draw: st.DrawFn) -> tuple[list[StoredEvent], datetime | None, datetime | None]:
    """Events of a few messages (duplicated, out of order, some before their ``sent``, some of
    messages never sent, opens and clicks by machines) and a window, possibly empty."""
    events: list[StoredEvent] = []
    for m in range(draw(st.integers(1, 10))):
        fields: dict[str, Any] = {
            "contact_id": draw(st.integers(1, 4)),
            "message_id": f"m{m}",
            "campaign_id": draw(st.sampled_from([1, 2, None])),
            "provider": "smtp",
        }
        sent_at = T0 + timedelta(microseconds=draw(st.integers(0, 3 * 86_400_000_000)))
        if draw(st.booleans()) or m == 0:
            for copy in range(draw(st.integers(1, 2))):
                events.append(StoredEvent(f"sent:m{m}:{copy}", "sent", sent_at, **fields))
        for n in range(draw(st.integers(0, 6))):
            kind = draw(st.sampled_from(FUNNEL_EVENT_TYPES))
            automated = kind in ("open", "click") and draw(st.booleans())
            flag = "machine_open" if kind == "open" else "scanner"
            at = sent_at + timedelta(seconds=draw(st.integers(-3600, 2 * 86_400)))
            event = StoredEvent(
                f"{kind}:m{m}:{n}",
                kind,
                at,
                properties={flag: True} if automated else {},
                **fields,
            )
            events.extend([event] * draw(st.integers(1, 2)))
    draw(st.randoms()).shuffle(events)
    bounds = st.none() | st.integers(0, 3 * 86_400).map(lambda s: T0 + timedelta(seconds=s))
    since, until = draw(bounds), draw(bounds)
    if since is not None and until is not None and since >= until:
        since, until = until - timedelta(seconds=1), since + timedelta(seconds=1)
    return events, since, until


FUNNEL_EVENT_TYPES = ("bounce", "open", "open", "click", "click", "unsubscribe", "complaint")
