"""The contract of trigger condition types.

A condition type is a named, configurable predicate over a product event and the contact it
belongs to. The built-in types (time window, engagement threshold, segment membership, action
history, attribute and property matches) and third-party ones implement this same contract and are
registered through ``postwise_register_conditions``.

The engine evaluates many events at once: it prefetches what the conditions of a batch declare in
:attr:`ConditionType.requires` and hands each evaluation a :class:`ConditionContext` that answers
from memory, so a condition never issues a query per event.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from pydantic import BaseModel
from pydantic import ValidationError as PydanticValidationError

from postwise.errors import ValidationError

__all__ = ["ConditionContext", "ConditionType", "TriggerEvent"]

ConfigT = TypeVar("ConfigT", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class TriggerEvent:
    """A product event as the trigger engine sees it."""

    event_id: str
    type: str
    contact_id: int
    occurred_at: datetime
    properties: Mapping[str, Any] = field(default_factory=dict)


class ConditionContext(Protocol):
    """What a condition may ask about the event's contact, answered from prefetched data."""

    @property
    def now(self) -> datetime:
        """The evaluation time (timezone-aware UTC)."""

    @property
    def contact(self) -> Mapping[str, Any]:
        """The contact: ``email``, ``timezone``, ``status``, ``tags`` and its attributes."""

    def engagement_score(self) -> float:
        """The contact's current (decayed) engagement score."""

    def in_segment(self, segment: str) -> bool:
        """Whether the contact belongs to the named segment."""

    def count_events(self, event_type: str, since: datetime) -> int:
        """How many events of ``event_type`` the contact had since ``since``."""


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
        """Validate a raw configuration; errors name the offending field."""
        try:
            return self.config_model.model_validate(dict(raw))  # type: ignore[return-value]
        except PydanticValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ())) or None
            raise ValidationError(
                f"invalid configuration for condition {self.name!r}: {first['msg']}", field=where
            ) from None

    @abc.abstractmethod
    def evaluate(self, config: ConfigT, event: TriggerEvent, context: ConditionContext) -> bool:
        """Whether ``event`` satisfies this condition as configured."""

    def explain(self, config: ConfigT) -> str:
        """A one-line human description of the configured condition, for dry runs."""
        return f"{self.name} {config.model_dump(exclude_defaults=True)}"
