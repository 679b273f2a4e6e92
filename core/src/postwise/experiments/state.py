"""What an always-valid test remembers between looks, in a form the server can persist.

An always-valid p-value is valid at every look, so the smallest one seen so far is valid too:
once it has dropped below alpha the decision stands. Likewise every look's confidence-sequence
interval holds simultaneously with all the others, so their intersection does. The server stores
:meth:`SequentialState.to_json` per experiment and hands :meth:`SequentialState.from_json` back to
``analyze(..., previous=...)`` at the next look.

The state also pins the settings the guarantee depends on (test, alpha, N*, index, variants):
changing any of them mid-experiment would let someone shop for a result, so ``analyze`` refuses.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar

from postwise.errors import StatsError
from postwise.experiments.contract import Comparison, Interval

__all__ = ["ComparisonMemory", "SequentialState"]

Bounds = tuple[float, float]


def _bounds_to_json(bounds: Bounds | None) -> list[float | None] | None:
    if bounds is None:
        return None
    return [None if math.isinf(b) else b for b in bounds]


def _bounds_from_json(value: Any) -> Bounds | None:
    if value is None:
        return None
    low, high = value
    return (-math.inf if low is None else float(low), math.inf if high is None else float(high))


@dataclass(frozen=True, slots=True)
class ComparisonMemory:
    """One treatment's record across looks."""

    variant: str
    #: Running minimum of the always-valid p-value.
    p_value: float
    #: Sign of the absolute lift at the look that set ``p_value`` (+1 better, -1 worse, 0 none).
    direction: int
    #: Running intersection of the absolute-lift intervals; None when not a stable estimand.
    absolute: Bounds | None
    #: Running intersection of the relative-lift intervals; None until one was defined.
    relative: Bounds | None
    #: Set for good once the intervals of two looks failed to overlap: the effect is not
    #: constant, so no decision is taken on this treatment.
    unstable: bool = False


def _intersect(previous: Bounds | None, current: Interval | None) -> tuple[Bounds | None, bool]:
    """The running intersection, and whether it had to restart because it became empty."""
    if current is None:
        return previous, False
    bounds = (current.lower, current.upper)
    if previous is None:
        return bounds, False
    low, high = max(previous[0], bounds[0]), min(previous[1], bounds[1])
    if low > high:
        return bounds, True
    return (low, high), False


@dataclass(frozen=True, slots=True)
class SequentialState:
    """The running record of an always-valid test; immutable, JSON round-trippable."""

    VERSION: ClassVar[int] = 1

    method: str
    alpha: float
    sequential_tuning: float
    index: str
    #: Variant names, control first.
    variants: tuple[str, ...]
    #: Looks folded in so far (looks blocked by SRM or the minimum sample are not counted).
    looks: int
    memories: tuple[ComparisonMemory, ...]
    #: The planned relative effect the mixture is tuned to; None for the N*-tuned mixture.
    mde: float | None = None

    @classmethod
    def start(
        cls,
        *,
        method: str,
        alpha: float,
        sequential_tuning: float,
        index: str,
        variants: Sequence[str],
        mde: float | None = None,
    ) -> SequentialState:
        """An empty record: no look counted yet."""
        return cls(
            mde=mde,
            method=method,
            alpha=alpha,
            sequential_tuning=float(sequential_tuning),
            index=index,
            variants=tuple(variants),
            looks=0,
            memories=tuple(ComparisonMemory(v, 1.0, 0, None, None) for v in variants[1:]),
        )

    def check_compatible(
        self,
        *,
        method: str,
        alpha: float,
        sequential_tuning: float,
        index: str,
        variants: Sequence[str],
        mde: float | None = None,
    ) -> None:
        """Raise StatsError when this look's settings differ from those the record was built on."""
        # Index first: its default tuning differs, and it is the more fundamental mismatch.
        expected = {
            "method": self.method,
            "index": self.index,
            "alpha": self.alpha,
            "sequential_tuning": self.sequential_tuning,
            "mde": self.mde,
            "variants": self.variants,
        }
        given = {
            "method": method,
            "index": index,
            "alpha": alpha,
            "sequential_tuning": float(sequential_tuning),
            "mde": mde,
            "variants": tuple(variants),
        }
        for key, value in expected.items():
            if given[key] != value:
                raise StatsError(
                    f"this look uses {key}={given[key]!r} but the experiment's sequential state "
                    f"was built with {key}={value!r}; an always-valid test must keep its settings "
                    "for the whole experiment (start a new experiment to change them)",
                    field=key,
                )

    def record(
        self, comparisons: Sequence[Comparison], *, intersect_absolute: bool = True
    ) -> tuple[SequentialState, list[str]]:
        """Fold one look in; returns the new state and warnings about effects that moved."""
        warnings: list[str] = []
        memories = []
        for memory, comparison in zip(self.memories, comparisons, strict=True):
            p_value, direction = memory.p_value, memory.direction
            if comparison.p_value is not None and comparison.p_value < p_value:
                p_value = comparison.p_value
                estimate = comparison.absolute.estimate
                direction = (estimate > 0) - (estimate < 0)
            absolute, moved_abs = (
                _intersect(memory.absolute, comparison.absolute)
                if intersect_absolute
                else (None, False)
            )
            relative, moved_rel = _intersect(memory.relative, comparison.relative)
            unstable = memory.unstable or moved_abs or moved_rel
            if moved_abs or moved_rel:
                warnings.append(
                    f"{memory.variant}: this look's interval no longer overlaps the earlier ones, "
                    "so the effect is changing over time (novelty, a shift in the audience); "
                    "the interval restarted from this look and no decision is taken on "
                    f"{memory.variant} in this experiment"
                )
            memories.append(
                replace(
                    memory,
                    p_value=p_value,
                    direction=direction,
                    absolute=absolute,
                    relative=relative,
                    unstable=unstable,
                )
            )
        return replace(self, looks=self.looks + 1, memories=tuple(memories)), warnings

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (infinite bounds become null)."""
        return {
            "version": self.VERSION,
            "method": self.method,
            "alpha": self.alpha,
            "sequential_tuning": self.sequential_tuning,
            "index": self.index,
            "mde": self.mde,
            "variants": list(self.variants),
            "looks": self.looks,
            "memories": [
                {
                    "variant": m.variant,
                    "p_value": m.p_value,
                    "direction": m.direction,
                    "absolute": _bounds_to_json(m.absolute),
                    "relative": _bounds_to_json(m.relative),
                    "unstable": m.unstable,
                }
                for m in self.memories
            ],
        }

    def to_json(self) -> str:
        """The state as a JSON string, for storage next to the experiment."""
        return json.dumps(self.to_dict(), separators=(",", ":"), allow_nan=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SequentialState:
        """Rebuild a state from :meth:`to_dict` output; StatsError when it is not one."""
        try:
            if data["version"] != cls.VERSION:
                raise StatsError(
                    f"sequential state version {data['version']!r} is not supported "
                    f"(this postwise reads version {cls.VERSION})",
                    field="previous",
                )
            state = cls(
                method=str(data["method"]),
                alpha=float(data["alpha"]),
                sequential_tuning=float(data["sequential_tuning"]),
                index=str(data["index"]),
                mde=None if data.get("mde") is None else float(data["mde"]),
                variants=tuple(str(v) for v in data["variants"]),
                looks=int(data["looks"]),
                memories=tuple(
                    ComparisonMemory(
                        variant=str(m["variant"]),
                        p_value=float(m["p_value"]),
                        direction=int(m["direction"]),
                        absolute=_bounds_from_json(m["absolute"]),
                        relative=_bounds_from_json(m["relative"]),
                        unstable=bool(m["unstable"]),
                    )
                    for m in data["memories"]
                ),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise StatsError(
                f"stored sequential state is malformed ({exc!r}); it must come from "
                "SequentialState.to_dict()",
                field="previous",
            ) from exc
        if tuple(m.variant for m in state.memories) != state.variants[1:]:
            raise StatsError(
                "stored sequential state is inconsistent: its records do not match its variants",
                field="previous",
            )
        return state

    @classmethod
    def from_json(cls, text: str) -> SequentialState:
        """Rebuild a state from :meth:`to_json` output."""
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise StatsError(
                f"stored sequential state is not JSON: {exc}", field="previous"
            ) from exc
        if not isinstance(data, dict):
            raise StatsError("stored sequential state must be a JSON object", field="previous")
        return cls.from_dict(data)
