"""The contract of trigger condition types.

A condition type is a named, configurable predicate over a product event and the contact it
belongs to. The built-in types (time window, engagement threshold, segment membership, action
history, attribute and property matches) and third-party ones implement this same contract and are
registered through ``postwise_register_conditions``.

The engine evaluates many events at once and hands each evaluation a :class:`ConditionContext`
that answers from data loaded for the whole batch: the batch's contacts in one query, and each
segment or event-history window in one query for all the batch's contacts the first time any
condition asks for it. A condition therefore never issues a query per event. A condition that
needs other data declares it in :attr:`ConditionType.requires`.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from postwise.errors import ValidationError

if TYPE_CHECKING:
    from pydantic_core import ErrorDetails
    from sqlmodel import Session

__all__ = [
    "ConditionContext",
    "ConditionType",
    "HistoryEvent",
    "Predicate",
    "TriggerEvent",
    "describe_error",
]

ConfigT = TypeVar("ConfigT", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class TriggerEvent:
    """A product event as the trigger engine sees it."""

    event_id: str
    type: str
    contact_id: int
    occurred_at: datetime
    properties: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class HistoryEvent:
    """A past event of the contact, as :meth:`ConditionContext.events` returns it.

    ``automated`` marks a machine open (privacy proxy, image prefetch) or a link scanner's
    click: not a person's action.
    """

    event_id: str
    type: str
    occurred_at: datetime
    properties: Mapping[str, Any] = field(default_factory=dict)
    automated: bool = False


class ConditionContext(Protocol):
    """What a condition may ask about the event's contact, answered from prefetched data."""

    @property
    def now(self) -> datetime:
        """The evaluation time (timezone-aware UTC)."""

    @property
    def contact(self) -> Mapping[str, Any]:
        """The contact: ``id``, ``email``, ``first_name``, ``last_name``, ``timezone``,
        ``country``, ``status``, ``tags`` (a frozenset), ``engagement_score``, ``created_at``,
        and every key of its ``attributes`` (which are also under ``"attributes"``; the built-in
        fields win when names clash)."""

    def engagement_score(self) -> float:
        """The contact's current (decayed) engagement score."""

    def in_segment(self, segment: str) -> bool:
        """Whether the contact belongs to the named segment."""

    def count_events(self, event_type: str, since: datetime, until: datetime | None = None) -> int:
        """How many events of ``event_type`` the contact had with ``since <= occurred_at <
        until`` (``until`` defaults to :attr:`now`). The event being evaluated never counts."""

    def events(
        self, event_type: str, since: datetime, until: datetime | None = None
    ) -> Sequence[HistoryEvent]:
        """The contact's events of ``event_type`` with ``since <= occurred_at < until``
        (``until`` defaults to :attr:`now`), oldest first, with their properties and whether
        they were automated. Loaded once per batch for all its contacts, like
        :meth:`count_events` (stored events and those accepted on the stream but not stored
        yet); the event being evaluated is never among them."""


#: A configured condition: ``predicate(event, context) -> bool``.
Predicate = Callable[["TriggerEvent", "ConditionContext"], bool]


class ConditionType(abc.ABC, Generic[ConfigT]):
    """A kind of condition, configured per trigger with a validated schema."""

    #: The name trigger definitions use (``{"type": "engagement_score", ...}``).
    name: ClassVar[str]
    #: The pydantic model of this condition's configuration.
    config_model: ClassVar[type[BaseModel]]
    #: What the engine must prefetch for it: any of "contact", "engagement", "segments",
    #: "history". The engine loads these in batches.
    requires: ClassVar[frozenset[str]] = frozenset()
    #: Short description shown by ``postwise plugins`` and the docs.
    description: ClassVar[str] = ""

    def parse_config(self, raw: Mapping[str, Any]) -> ConfigT:
        """Validate a raw configuration; errors name the offending field.

        The :class:`~postwise.errors.ValidationError` raised has ``field`` set to the path inside
        the configuration (``"hours"``, ``"days_of_week.1"``) and a short message (``"must be >
        0"``); trigger validation prefixes the field with where the condition sits in the tree.
        """
        try:
            return self.config_model.model_validate(dict(raw))  # type: ignore[return-value]
        except PydanticValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or None
            raise ValidationError(describe_error(first), field=where) from None

    def check_references(self, config: ConfigT, session: Session) -> None:
        """Check that what the configuration names exists (a segment, ...); raise
        :class:`~postwise.errors.ValidationError` with ``field`` naming the configuration key
        otherwise. Called when a trigger is saved; the default checks nothing."""

    @abc.abstractmethod
    def evaluate(self, config: ConfigT, event: TriggerEvent, context: ConditionContext) -> bool:
        """Whether ``event`` satisfies this condition as configured."""

    def bind(self, config: ConfigT) -> Predicate:
        """The predicate of one configuration, called for every event the trigger sees.

        The default calls :meth:`evaluate`; override it to do per-configuration work once
        (split a path, build a set) instead of once per event.
        """
        evaluate = self.evaluate
        return lambda event, context: evaluate(config, event, context)

    def explain(self, config: ConfigT) -> str:
        """A one-line human description of the configured condition, for dry runs."""
        return f"{self.name} {config.model_dump(exclude_defaults=True)}"


_COMPARISONS = {
    "greater_than": ("gt", ">"),
    "greater_than_equal": ("ge", ">="),
    "less_than": ("lt", "<"),
    "less_than_equal": ("le", "<="),
}


def describe_error(error: ErrorDetails) -> str:
    """A short message for one pydantic error, worded for the field it is attached to.

    ``{"type": "greater_than", "ctx": {"gt": 0}}`` becomes ``"must be > 0"``; pydantic's
    "Input should be ..." becomes "must be ...".
    """
    kind = error["type"]
    ctx = error.get("ctx") or {}
    if kind in _COMPARISONS:
        key, symbol = _COMPARISONS[kind]
        bound = ctx.get(key)
        if isinstance(bound, float) and bound.is_integer():
            bound = int(bound)
        return f"must be {symbol} {bound}"
    if kind == "missing":
        return "is required"
    if kind == "extra_forbidden":
        return "is not a known field"
    message = str(error["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
    return message.replace("Input should be", "must be", 1)
