"""The aggregate counts every analysis starts from, and the checks they must pass."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from numbers import Integral, Real

from postwise.errors import StatsError

__all__ = [
    "Covariate",
    "VariantData",
    "validate_alpha",
    "validate_variants",
    "validate_weights",
]

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


#: Largest magnitude of a covariate's mean accepted; beyond it the sums are not a pre-period
#: metric or a score but a bug upstream (and float sums lose the precision CUPED needs).
COVARIATE_LIMIT = 1e9


def _sum(value: object, field: str, variant: str) -> float:
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise StatsError(
            f"variant {variant!r}: covariate {field} must be a finite number, got {value!r}",
            field=f"covariate.{field}",
        )
    return float(value)


@dataclass(frozen=True, slots=True)
class Covariate:
    """Sums of a pre-exposure covariate X over the contacts of one variant that have it.

    X is known before exposure (the contact's engagement score when assigned, the same metric
    in a pre-period), so the treatment cannot move it. ``count`` contacts have it; the rest of
    the variant's exposures lack it and CUPED fills them with the pooled mean (which leaves the
    estimate unbiased and only reduces less). ``cross`` is the sum of X over those of the
    ``count`` who converted, and ``conversions`` how many of them converted.
    """

    count: int
    total: float
    squares: float
    cross: float
    conversions: int

    def check(self, variant: VariantData) -> None:
        """Raise StatsError when the sums cannot come from real per-contact values."""
        name = variant.name
        count = _count(self.count, "covariate.count", name)
        conversions = _count(self.conversions, "covariate.conversions", name)
        total = _sum(self.total, "total", name)
        squares = _sum(self.squares, "squares", name)
        cross = _sum(self.cross, "cross", name)
        if count > variant.exposures:
            raise StatsError(
                f"variant {name!r}: {count} contacts with a covariate but only "
                f"{variant.exposures} exposures",
                field="covariate.count",
            )
        if conversions > min(count, variant.conversions):
            raise StatsError(
                f"variant {name!r}: {conversions} converted contacts with a covariate, more "
                f"than those with one ({count}) or than all conversions ({variant.conversions})",
                field="covariate.conversions",
            )
        if count and abs(total) / count > COVARIATE_LIMIT:
            raise StatsError(
                f"variant {name!r}: covariate mean {total / count:.3g} is absurd (limit "
                f"{COVARIATE_LIMIT:g}); check the covariate's units",
                field="covariate.total",
            )
        slack = 1e-9 * max(1.0, squares)
        if squares < 0 or (count and squares * count + slack * count < total * total):
            raise StatsError(
                f"variant {name!r}: covariate sums are inconsistent (sum of squares {squares:g} "
                f"below (sum)^2 / count); they must come from the same contacts",
                field="covariate.squares",
            )
        if cross * cross > conversions * squares + slack:
            raise StatsError(
                f"variant {name!r}: covariate cross sum {cross:g} is impossible for "
                f"{conversions} converted contacts with sum of squares {squares:g}",
                field="covariate.cross",
            )


@dataclass(frozen=True, slots=True)
class VariantData:
    """Aggregate counts of one variant: contacts exposed and contacts who converted.

    ``conversions`` counts converted contacts (not events), so it never exceeds ``exposures``.
    Construction raises :class:`postwise.errors.StatsError` on negative or inconsistent counts.
    """

    name: str
    exposures: int
    conversions: int
    #: Pre-exposure covariate sums for CUPED; None when there is none.
    covariate: Covariate | None = None

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
        if self.covariate is not None:
            if not isinstance(self.covariate, Covariate):
                raise StatsError(
                    f"variant {self.name!r}: covariate must be a Covariate, got "
                    f"{type(self.covariate).__name__}",
                    field="covariate",
                )
            self.covariate.check(self)

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
