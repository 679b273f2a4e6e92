"""The aggregate counts every analysis starts from, and the checks they must pass."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral

from postwise.errors import StatsError

__all__ = ["VariantData", "validate_alpha", "validate_variants", "validate_weights"]

#: How far weights may stray from summing to 1 (they usually come from decimal settings).
WEIGHT_SUM_TOLERANCE = 1e-6


def _count(value: object, field: str, variant: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise StatsError(
            f"variant {variant!r}: {field} must be a whole number, got {value!r}", field=field
        )
    count = int(value)
    if count < 0:
        raise StatsError(
            f"variant {variant!r}: {field} must not be negative, got {count}", field=field
        )
    return count


@dataclass(frozen=True, slots=True)
class VariantData:
    """Aggregate counts of one variant: contacts exposed and contacts who converted.

    ``conversions`` counts converted contacts (not events), so it never exceeds ``exposures``.
    Construction raises :class:`postwise.errors.StatsError` on negative or inconsistent counts.
    """

    name: str
    exposures: int
    conversions: int

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise StatsError(f"a variant needs a non-empty name, got {self.name!r}", field="name")
        exposures = _count(self.exposures, "exposures", self.name)
        conversions = _count(self.conversions, "conversions", self.name)
        if conversions > exposures:
            raise StatsError(
                f"variant {self.name!r}: conversions ({conversions}) exceed exposures "
                f"({exposures}); count converted contacts, not conversion events",
                field="conversions",
            )
        # Normalise numpy integers so results serialise to JSON as plain ints.
        object.__setattr__(self, "exposures", exposures)
        object.__setattr__(self, "conversions", conversions)

    @property
    def rate(self) -> float:
        """Conversion rate; 0 when nobody was exposed."""
        return self.conversions / self.exposures if self.exposures else 0.0


def validate_variants(variants: Sequence[VariantData]) -> tuple[VariantData, ...]:
    """Check there are at least two variants with distinct names; the first is the control."""
    items = tuple(variants)
    for item in items:
        if not isinstance(item, VariantData):
            raise StatsError(
                f"variants must be VariantData objects, got {type(item).__name__}",
                field="variants",
            )
    if len(items) < 2:
        raise StatsError(
            f"an experiment needs at least 2 variants (control first), got {len(items)}",
            field="variants",
        )
    seen: set[str] = set()
    for item in items:
        if item.name in seen:
            raise StatsError(
                f"duplicate variant name {item.name!r}; every variant needs its own name",
                field="variants",
            )
        seen.add(item.name)
    return items


def validate_alpha(alpha: float) -> float:
    """Check the significance level lies strictly between 0 and 0.5."""
    if isinstance(alpha, bool) or not isinstance(alpha, int | float):
        raise StatsError(f"alpha must be a number, got {alpha!r}", field="alpha")
    if not 0.0 < alpha < 0.5 or math.isnan(alpha):
        raise StatsError(
            f"alpha must lie strictly between 0 and 0.5 (0.05 is usual), got {alpha}",
            field="alpha",
        )
    return float(alpha)


def validate_weights(weights: Sequence[float], count: int) -> tuple[float, ...]:
    """Check ``count`` positive weights that sum to 1."""
    values = tuple(weights)
    if len(values) != count:
        raise StatsError(
            f"got {len(values)} weights for {count} variants; give one weight per variant",
            field="weights",
        )
    for value in values:
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise StatsError(f"weights must be finite numbers, got {value!r}", field="weights")
        if value <= 0:
            raise StatsError(
                f"weights must be positive, got {value}; drop a variant rather than weight it 0",
                field="weights",
            )
    total = math.fsum(values)
    if abs(total - 1.0) > WEIGHT_SUM_TOLERANCE:
        raise StatsError(
            f"weights must sum to 1, they sum to {total:.6g}; "
            f"for example use {', '.join(f'{v / total:.4g}' for v in values)}",
            field="weights",
        )
    return tuple(float(v) for v in values)
