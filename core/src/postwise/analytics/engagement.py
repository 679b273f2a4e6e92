"""The per-contact engagement score: exponentially decayed opens, clicks and conversions.

The score of a contact at time ``t`` is ``sum(weight(e) * 2 ** (-(t - e.occurred_at) / half_life))``
over its engagement events. It is kept on the contact as ``engagement_score`` *as of*
``engagement_updated_at`` and updated incrementally as the batch writer stores events, never
recomputed from scratch:

* an event newer than the stored time decays the stored score to the event's time, then adds
  the event's weight;
* an event older than the stored time (late or out of order) adds its weight decayed to the
  stored time.

Both give exactly the sum above, whatever order events arrive in. Reading the score decays it
to the time of reading (:meth:`EngagementModel.current`). Machine opens and scanner clicks
weigh nothing. Updates happen only for events the sink reports as new, so a redelivered batch
is not counted twice.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import MappingProxyType
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from postwise.analytics.sinks import StoredEvent
from postwise.db.models import Contact, as_utc
from postwise.settings import Settings

__all__ = [
    "DEFAULT_WEIGHTS",
    "EngagementModel",
    "EngagementScore",
    "apply_engagement",
    "engagement_of",
]

#: What one human event adds to the score before decay.
DEFAULT_WEIGHTS: Mapping[str, float] = MappingProxyType(
    {"open": 1.0, "click": 3.0, "conversion": 5.0}
)

# exp() below this underflows to 0.0 in double precision (and PostgreSQL raises on underflow).
_MIN_EXPONENT = -700.0


@dataclass(frozen=True, slots=True)
class EngagementScore:
    """A contact's score decayed to ``as_of``."""

    contact_id: int
    score: float
    as_of: datetime
    last_engaged_at: datetime | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "contact_id": self.contact_id,
            "score": round(self.score, 6),
            "as_of": self.as_of.isoformat(),
            "last_engaged_at": self.last_engaged_at.isoformat() if self.last_engaged_at else None,
        }


@dataclass(frozen=True, slots=True)
class EngagementModel:
    """Weights per event type and the half-life of their decay."""

    half_life_days: float = 30.0
    weights: Mapping[str, float] = field(default_factory=lambda: DEFAULT_WEIGHTS)

    @classmethod
    def from_settings(cls, settings: Settings) -> EngagementModel:
        return cls(half_life_days=settings.engagement_half_life_days)

    @property
    def decay_per_second(self) -> float:
        """λ in ``exp(-λ·Δt)``."""
        return math.log(2) / (self.half_life_days * 86400.0)

    def weight(self, event: StoredEvent) -> float:
        if event.contact_id is None or event.automated:
            return 0.0
        return self.weights.get(event.type, 0.0)

    def decay(self, seconds: float) -> float:
        """The factor a score keeps after ``seconds``."""
        return math.exp(max(_MIN_EXPONENT, -self.decay_per_second * max(0.0, seconds)))

    def fold(self, events: Iterable[StoredEvent]) -> dict[int, tuple[float, datetime]]:
        """Per contact, the events' total weight decayed to the contact's latest event time."""
        grouped: dict[int, list[tuple[float, datetime]]] = {}
        for event in events:
            weight = self.weight(event)
            if weight and event.contact_id is not None:
                grouped.setdefault(event.contact_id, []).append((weight, event.occurred_at))
        folded: dict[int, tuple[float, datetime]] = {}
        for contact_id, items in grouped.items():
            latest = max(at for _, at in items)
            total = sum(w * self.decay((latest - at).total_seconds()) for w, at in items)
            folded[contact_id] = (total, latest)
        return folded

    def combine(
        self, score: float, updated_at: datetime | None, delta: float, at: datetime
    ) -> tuple[float, datetime]:
        """Add ``delta`` (as of ``at``) to ``score`` (as of ``updated_at``)."""
        if updated_at is None:
            return delta, at
        if at >= updated_at:
            return score * self.decay((at - updated_at).total_seconds()) + delta, at
        return score + delta * self.decay((updated_at - at).total_seconds()), updated_at

    def current(self, score: float, updated_at: datetime | None, now: datetime) -> float:
        """``score`` (as of ``updated_at``) decayed to ``now``."""
        if updated_at is None:
            return 0.0
        return score * self.decay((now - as_utc(updated_at)).total_seconds())


_PG_UPDATE = """
WITH delta(id, amount, at) AS (
    SELECT * FROM unnest(%(ids)s::bigint[], %(amounts)s::float8[], %(ats)s::timestamptz[])
), locked AS (
    SELECT c.id FROM contact c JOIN delta d ON d.id = c.id ORDER BY c.id FOR UPDATE OF c
)
UPDATE contact c SET
    engagement_score = CASE
        WHEN c.engagement_updated_at IS NULL THEN d.amount
        WHEN d.at >= c.engagement_updated_at THEN c.engagement_score * exp(GREATEST(
            %(min_exp)s, -%(rate)s * extract(epoch FROM d.at - c.engagement_updated_at))) + d.amount
        ELSE c.engagement_score + d.amount * exp(GREATEST(
            %(min_exp)s, -%(rate)s * extract(epoch FROM c.engagement_updated_at - d.at)))
    END,
    engagement_updated_at = GREATEST(c.engagement_updated_at, d.at)
FROM delta d
WHERE c.id = d.id AND c.id IN (SELECT id FROM locked)
"""


def apply_engagement(
    connection: Connection, model: EngagementModel, events: Iterable[StoredEvent]
) -> int:
    """Fold ``events`` (new ones only) into their contacts' scores, in ``connection``'s
    transaction. Returns how many contacts changed."""
    folded = model.fold(events)
    if not folded:
        return 0
    ids = sorted(folded)
    if connection.dialect.name == "postgresql":
        raw: Any = connection.connection.driver_connection
        with raw.cursor() as cursor:
            cursor.execute(
                _PG_UPDATE,
                {
                    "ids": ids,
                    "amounts": [folded[i][0] for i in ids],
                    "ats": [folded[i][1] for i in ids],
                    "rate": model.decay_per_second,
                    "min_exp": _MIN_EXPONENT,
                },
            )
            return int(cursor.rowcount)
    # SQLite has one writer at a time, so reading then writing inside the transaction is safe.
    table = Contact.__table__  # type: ignore[attr-defined]
    rows = connection.execute(
        sa.select(table.c.id, table.c.engagement_score, table.c.engagement_updated_at).where(
            table.c.id.in_(ids)
        )
    ).all()
    updates = []
    for contact_id, score, updated_at in rows:
        delta, at = folded[contact_id]
        new_score, new_at = model.combine(
            score or 0.0, as_utc(updated_at) if updated_at else None, delta, at
        )
        updates.append({"cid": contact_id, "score": new_score, "at": new_at})
    if updates:
        connection.execute(
            table.update()
            .where(table.c.id == sa.bindparam("cid"))
            .values(
                engagement_score=sa.bindparam("score"),
                engagement_updated_at=sa.bindparam("at"),
            ),
            updates,
        )
    return len(updates)


def engagement_of(
    connection: Connection, model: EngagementModel, contact_id: int, *, now: datetime
) -> EngagementScore | None:
    """The contact's score decayed to ``now``; ``None`` when the contact does not exist."""
    table = Contact.__table__  # type: ignore[attr-defined]
    row = connection.execute(
        sa.select(table.c.engagement_score, table.c.engagement_updated_at).where(
            table.c.id == contact_id
        )
    ).first()
    if row is None:
        return None
    score, updated_at = row
    last = as_utc(updated_at) if updated_at is not None else None
    return EngagementScore(contact_id, model.current(score or 0.0, last, now), now, last)
