"""The contract of a stats test: what a built-in or plugin test computes, and from what.

A stats test turns the aggregate counts of an experiment into one :class:`Comparison` per
treatment (every variant after the first, which is the control): a p-value against the control
and intervals for the absolute and relative lift. It does not decide anything; ``analyze``
applies the gate (sample-ratio check, minimum sample, Holm correction) the same way to every
test, so a plugin cannot weaken it.

A plugin registers an instance through ``postwise_register_stats_tests``::

    @postwise.hookimpl
    def postwise_register_stats_tests(register):
        register("my-test", MyTest())
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from postwise.experiments.data import VariantData

__all__ = ["Comparison", "Index", "Interval", "StatsOptions", "StatsTest"]

#: What a sequential test counts its looks in: exposed contacts, or outcome events.
Index = Literal["exposures", "outcomes"]


@dataclass(frozen=True, slots=True)
class Interval:
    """A point estimate with the bounds of its interval (bounds may be infinite)."""

    estimate: float
    lower: float
    upper: float

    def excludes_zero(self) -> bool:
        """True when the whole interval lies on one side of zero."""
        return self.lower > 0.0 or self.upper < 0.0


@dataclass(frozen=True, slots=True)
class StatsOptions:
    """Settings handed to every stats test; a test ignores those it has no use for."""

    #: Significance level of the decision, also the miscoverage of the intervals.
    alpha: float = 0.05
    #: N* of the sequential test: the sample (in units of ``index``, both arms of a comparison
    #: together) at which its interval is tightest. Any fixed value keeps the guarantee; a value
    #: near the planned sample gives the most power.
    sequential_tuning: float = 5000.0
    #: What the sequential test is indexed by (see :mod:`postwise.experiments.sequential`).
    index: Index = "exposures"
    #: Beta prior (successes, failures) of the Bayesian readout.
    prior: tuple[float, float] = (1.0, 1.0)
    #: Planned relative minimum detectable effect: tunes the sequential test's mixture to it
    #: (instead of ``sequential_tuning``). None for the N*-tuned mixture.
    mde: float | None = None
    #: Adjust with the variants' pre-exposure covariate (CUPED) when they carry one.
    cuped: bool = True


@dataclass(frozen=True, slots=True)
class Comparison:
    """One treatment against the control, as a stats test sees it at one look."""

    variant: str
    #: Two-sided p-value of "no difference from control"; None for descriptive tests.
    p_value: float | None
    #: Treatment rate minus control rate.
    absolute: Interval
    #: Treatment rate over control rate, minus 1; None when the control rate is 0.
    relative: Interval | None
    #: With CUPED: 1 - adjusted / unadjusted variance of the absolute lift; None without.
    variance_reduction: float | None = None


@runtime_checkable
class StatsTest(Protocol):
    """A named way of comparing every treatment with the control."""

    #: The name ``analyze(method=...)`` and configuration use.
    name: str
    #: True when p-values and intervals stay valid however often anyone looks; ``analyze`` then
    #: carries their running minimum / running intersection across looks.
    always_valid: bool
    #: False for descriptive readouts whose numbers must never gate a decision.
    decides: bool
    # Optional: ``guarantees`` (a sentence on what the test's p-values and intervals keep, shown
    # in every report); ``analyze`` words one from ``always_valid`` / ``decides`` when absent.

    def compare(self, variants: Sequence[VariantData], options: StatsOptions) -> list[Comparison]:
        """Compare each of ``variants[1:]`` with ``variants[0]``; one result each, in order.

        ``variants`` have passed validation (at least two, distinct names, consistent counts).
        The test must not raise for data that is merely small: it reports p = 1 and the widest
        honest interval instead, and ``analyze`` withholds the decision.
        """
        ...
