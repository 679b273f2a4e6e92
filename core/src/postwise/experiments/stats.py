"""Analyse an A/B experiment from aggregate counts: the decision, and everything to read it by.

::

    from postwise.experiments.stats import VariantData, analyze

    result = analyze([VariantData("A", exposures=20000, conversions=600),
                      VariantData("B", exposures=20000, conversions=690)])
    result.winner  # "B", or None with result.reason saying why not

The first variant is the control. The gate is the same whatever the test: a sample-ratio
mismatch (p < 0.001) or a variant below the minimum sample withholds any decision; otherwise a
treatment wins when its Holm-adjusted p-value against the control is below alpha. With the default
always-valid test (``method="sequential"``) that holds however often anyone looks, provided the
state of the previous look is passed back in (``previous=result.state``).
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

from postwise.errors import PluginError, StatsError, UnknownComponentError
from postwise.experiments.bayes import BayesianReadout, beat_probability_and_loss, posteriors
from postwise.experiments.chi2 import ChiSquaredTest
from postwise.experiments.contract import Comparison, Index, Interval, StatsOptions, StatsTest
from postwise.experiments.cuped import fit as cuped_fit
from postwise.experiments.data import (
    VariantData,
    validate_alpha,
    validate_variants,
    validate_weights,
)
from postwise.experiments.multiple import holm
from postwise.experiments.sequential import (
    DEFAULT_TUNING,
    SequentialTest,
    rho_squared,
    validate_mde,
)
from postwise.experiments.srm import SRM_THRESHOLD, srm_p_value
from postwise.experiments.state import ComparisonMemory, SequentialState

__all__ = [
    "AnalysisResult",
    "BayesianReadout",
    "ChiSquaredTest",
    "Comparison",
    "Decision",
    "Interval",
    "Posterior",
    "SequentialState",
    "SequentialTest",
    "StatsOptions",
    "StatsTest",
    "VariantData",
    "VariantResult",
    "analyze",
    "builtin_tests",
]


def builtin_tests() -> dict[str, StatsTest]:
    """Fresh instances of the built-in tests, by name (what the built-in plugin registers)."""
    tests: list[StatsTest] = [SequentialTest(), ChiSquaredTest(), BayesianReadout()]
    return {test.name: test for test in tests}


class Decision(enum.StrEnum):
    """The outcome of the gate at this look."""

    #: A variant won: a treatment beat the control, or the control beat every treatment.
    WINNER = "winner"
    #: No treatment differs from the control beyond what chance explains (yet).
    NOT_SIGNIFICANT = "not_significant"
    #: The exposures do not match the configured split: the data cannot be trusted.
    SAMPLE_RATIO_MISMATCH = "sample_ratio_mismatch"
    #: Too few exposures or conversions for the approximations behind the test.
    BELOW_MINIMUM_SAMPLE = "below_minimum_sample"
    #: The method is a descriptive readout that never declares a winner.
    DESCRIPTIVE_ONLY = "descriptive_only"


@dataclass(frozen=True, slots=True)
class Posterior:
    """The Bayesian readout of one treatment against the control (never the gate)."""

    probability_to_beat_control: float
    #: E[max(control rate - treatment rate, 0)]: rate lost, on average, by shipping it.
    expected_loss: float


@dataclass(frozen=True, slots=True)
class VariantResult:
    """One variant's line of the report; lift fields are None for the control."""

    name: str
    is_control: bool
    exposures: int
    conversions: int
    rate: float
    absolute_lift: Interval | None
    relative_lift: Interval | None
    #: P-value against the control: for the sequential test the always-valid one (the running
    #: minimum over counted looks).
    p_value: float | None
    p_value_holm: float | None
    #: Holm-adjusted p-value below alpha (whatever the gate says about SRM or sample size).
    significant: bool
    posterior: Posterior | None
    #: With CUPED: the share of the lift's variance the covariate removed, which is also the
    #: share of exposures saved for the same power. None when the lift is not adjusted.
    variance_reduction: float | None = None
    #: Why this variant can no longer win (a guardrail stopped it); None while it runs.
    stopped: str | None = None


def _jsonable(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, SequentialState):
        return value.to_dict()
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _jsonable(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, tuple | list):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


@dataclass(frozen=True, slots=True)
class AnalysisResult:
    """Everything ``analyze`` concluded at one look."""

    method: str
    alpha: float
    control: str
    variants: tuple[VariantResult, ...]
    srm_p_value: float
    srm_flagged: bool
    decision: Decision
    winner: str | None
    #: Why there is (or is not) a winner, in words fit for the dashboard.
    reason: str
    warnings: tuple[str, ...]
    #: Persist and pass back as ``previous`` at the next look (always-valid tests only).
    state: SequentialState | None
    #: What this method's p-values, intervals and decision keep, in words.
    guarantees: str = ""
    #: The planned relative effect the sequential mixture was tuned to, if any.
    mde: float | None = None
    #: The CUPED fit (theta, correlation, coverage of the covariate), when the lift is adjusted.
    adjustment: dict[str, float] | None = None

    def variant(self, name: str) -> VariantResult:
        """The line of the variant called ``name``."""
        for item in self.variants:
            if item.name == name:
                return item
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; infinite interval bounds become null."""
        result: dict[str, Any] = _jsonable(self)
        return result


def _resolve_test(method: str, tests: Mapping[str, StatsTest] | None) -> StatsTest:
    registry = builtin_tests() if tests is None else tests
    if method not in registry:
        raise UnknownComponentError("stats test", method, list(registry))
    return registry[method]


def _check_counts(value: int, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise StatsError(f"{name} must be a whole number >= 0, got {value!r}", field=name)
    return value


def _shortfalls(
    variants: Sequence[VariantData], min_exposures: int, min_conversions: int
) -> list[str]:
    problems = [
        f"{v.name} has {v.exposures} exposures (minimum {min_exposures})"
        for v in variants
        if v.exposures < min_exposures
    ]
    control = variants[0]
    for v in variants[1:]:
        together = control.conversions + v.conversions
        if together < min_conversions:
            problems.append(
                f"{control.name} and {v.name} have {together} conversions together "
                f"(minimum {min_conversions})"
            )
    return problems


def _percent(value: float) -> str:
    return "unbounded" if math.isinf(value) else f"{value * 100:+.2f}%"


def _describe_win(result: VariantResult, alpha: float, control: str, always_valid: bool) -> str:
    lift = result.relative_lift or result.absolute_lift
    kind = "relative" if result.relative_lift else "absolute"
    assert lift is not None
    interval = "always-valid" if always_valid else f"{(1 - alpha) * 100:g}%"
    return (
        f"{result.name} beats control {control}: {kind} lift {_percent(lift.estimate)} "
        f"({interval} interval {_percent(lift.lower)} to {_percent(lift.upper)}), "
        f"Holm-adjusted p = {result.p_value_holm:.3g} < {alpha:g}"
    )


def analyze(
    variants: Sequence[VariantData],
    *,
    method: str = "sequential",
    alpha: float = 0.05,
    weights: Sequence[float] | None = None,
    sequential_tuning: float | None = None,
    index: Index = "exposures",
    min_exposures: int = 100,
    min_conversions: int = 10,
    srm_threshold: float = SRM_THRESHOLD,
    prior: tuple[float, float] = (1.0, 1.0),
    previous: SequentialState | None = None,
    tests: Mapping[str, StatsTest] | None = None,
    mde: float | None = None,
    cuped: bool = True,
    stopped: Mapping[str, str] | None = None,
) -> AnalysisResult:
    """Analyse one look at an experiment; ``variants[0]`` is the control.

    Args:
        variants: aggregate counts per variant, control first.
        method: the stats test by name: ``"sequential"`` (always-valid, the default),
            ``"chi2"`` (fixed horizon: one planned look) or ``"bayesian"`` (descriptive only).
        alpha: significance level, strictly between 0 and 0.5.
        weights: the configured traffic split (summing to 1) for the sample-ratio check;
            equal weights by default.
        sequential_tuning: N* of the sequential test, in units of ``index`` (both arms of a
            comparison together); :func:`postwise.experiments.planning.plan` recommends one.
            Defaults to 5,000 exposures or 1,000 outcomes.
        index: ``"exposures"`` for audiences that grow over time; ``"outcomes"`` when recipients
            are fixed at send and outcomes keep arriving (see
            :mod:`postwise.experiments.sequential`).
        min_exposures: every variant needs this many exposures before anything is decided.
        min_conversions: each treatment and the control need this many conversions together.
        srm_threshold: sample-ratio-mismatch p-value below which decisions are withheld.
        prior: Beta prior (a, b) of the Bayesian readout.
        previous: the ``state`` of the previous look (always-valid tests only).
        tests: stats tests by name (the plugin registry's); the built-ins by default.
        mde: the planned relative minimum detectable effect (0.10 = +10%): the sequential test's
            mixture is tuned to it (see :mod:`postwise.experiments.sequential`), for more power
            at that effect than any N*; it is pinned in the state like every other setting.
        cuped: adjust the lift with the variants' pre-exposure ``covariate`` sums (CUPED,
            :mod:`postwise.experiments.cuped`) when every variant carries them (exposure index).
        stopped: treatments stopped early (name -> reason, e.g. a guardrail's): they cannot
            win, and the sample-ratio check runs on the arms still receiving traffic.

    Raises:
        StatsError: inconsistent input (the message names the problem).
        UnknownComponentError: ``method`` names no installed stats test.
    """
    items = validate_variants(variants)
    alpha = validate_alpha(alpha)
    split = validate_weights(
        [1.0 / len(items)] * len(items) if weights is None else weights, len(items)
    )
    if index not in DEFAULT_TUNING:
        raise StatsError(f"index must be 'exposures' or 'outcomes', got {index!r}", field="index")
    min_exposures = _check_counts(min_exposures, "min_exposures")
    min_conversions = _check_counts(min_conversions, "min_conversions")
    if not 0.0 < srm_threshold < 1.0:
        raise StatsError(
            f"srm_threshold must lie between 0 and 1, got {srm_threshold}", field="srm_threshold"
        )
    tuning = DEFAULT_TUNING[index] if sequential_tuning is None else float(sequential_tuning)
    rho_squared(alpha, tuning)  # refuses a non-positive N* before any work is done
    mde = validate_mde(mde)
    test = _resolve_test(method, tests)
    names = [v.name for v in items]
    halted = _check_stopped(stopped, names)
    warnings: list[str] = []
    adjustment, use_cuped = _cuped_readout(items, index, cuped, warnings)
    options = StatsOptions(
        alpha=alpha,
        sequential_tuning=tuning,
        index=index,
        prior=prior,
        mde=mde,
        cuped=use_cuped,
    )

    running = [i for i, v in enumerate(items) if v.name not in halted]
    running_share = math.fsum(split[i] for i in running)
    srm_p = srm_p_value(
        [items[i].exposures for i in running], [split[i] / running_share for i in running]
    )
    srm_flagged = srm_p < srm_threshold
    shortfalls = _shortfalls(items, min_exposures, min_conversions)

    comparisons = list(test.compare(items, options))
    if [c.variant for c in comparisons] != names[1:]:
        raise PluginError(
            f"stats test {method!r} returned comparisons for "
            f"{[c.variant for c in comparisons]}, expected one per treatment: {names[1:]}"
        )

    state: SequentialState | None = None
    directions = [(c.absolute.estimate > 0) - (c.absolute.estimate < 0) for c in comparisons]
    unstable = [False] * len(comparisons)
    if test.always_valid:
        settings: dict[str, Any] = {
            "method": method,
            "alpha": alpha,
            "sequential_tuning": tuning,
            "index": index,
            "variants": names,
            "mde": mde,
        }
        if previous is None:
            state = SequentialState.start(**settings)
        else:
            previous.check_compatible(**settings)
            state = previous
        if not srm_flagged and not shortfalls:
            state, moved = state.record(comparisons, intersect_absolute=index == "exposures")
            warnings.extend(moved)
            comparisons = [
                _from_memory(c, m) for c, m in zip(comparisons, state.memories, strict=True)
            ]
            directions = [m.direction for m in state.memories]
        unstable = [m.unstable for m in state.memories]
    elif previous is not None:
        raise StatsError(
            f"method {method!r} is not an always-valid test, so it keeps no state across looks; "
            "pass previous only with method='sequential'",
            field="previous",
        )

    raw = [c.p_value for c in comparisons]
    adjusted: list[float | None] = [None] * len(raw)
    if test.decides:
        if any(p is None for p in raw):
            raise PluginError(f"stats test {method!r} decides but returned no p-value")
        adjusted = list(holm([p for p in raw if p is not None]))

    a, b = posteriors(items, prior)
    beat, loss = beat_probability_and_loss((float(a[0]), float(b[0])), (a[1:], b[1:]))

    control = items[0]
    lines = [
        VariantResult(
            name=control.name,
            is_control=True,
            exposures=control.exposures,
            conversions=control.conversions,
            rate=control.rate,
            absolute_lift=None,
            relative_lift=None,
            p_value=None,
            p_value_holm=None,
            significant=False,
            posterior=None,
        )
    ]
    for i, (variant, comparison) in enumerate(zip(items[1:], comparisons, strict=True)):
        p_holm = adjusted[i]
        lines.append(
            VariantResult(
                name=variant.name,
                is_control=False,
                exposures=variant.exposures,
                conversions=variant.conversions,
                rate=variant.rate,
                absolute_lift=comparison.absolute,
                relative_lift=comparison.relative,
                p_value=comparison.p_value,
                p_value_holm=p_holm,
                significant=p_holm is not None and p_holm < alpha,
                posterior=Posterior(float(beat[i]), float(loss[i])),
                variance_reduction=comparison.variance_reduction if use_cuped else None,
                stopped=halted.get(variant.name),
            )
        )

    decision, winner, reason = _decide(
        test=test,
        method=method,
        alpha=alpha,
        lines=lines,
        directions=directions,
        unstable=unstable,
        srm_p=srm_p,
        srm_flagged=srm_flagged,
        srm_threshold=srm_threshold,
        shortfalls=shortfalls,
    )
    return AnalysisResult(
        method=method,
        alpha=alpha,
        control=control.name,
        variants=tuple(lines),
        srm_p_value=srm_p,
        srm_flagged=srm_flagged,
        decision=decision,
        winner=winner,
        reason=reason,
        warnings=tuple(warnings),
        state=state,
        guarantees=_guarantees(test, mde, use_cuped),
        mde=mde,
        adjustment=adjustment,
    )


def _check_stopped(stopped: Mapping[str, str] | None, names: list[str]) -> dict[str, str]:
    if not stopped:
        return {}
    halted = {}
    for name, why in stopped.items():
        if name not in names[1:]:
            raise StatsError(
                f"stopped names {name!r}, which is not a treatment of this experiment "
                f"(treatments: {', '.join(names[1:])}; the control cannot be stopped)",
                field="stopped",
            )
        halted[name] = str(why)
    return halted


def _cuped_readout(
    items: Sequence[VariantData], index: str, cuped: bool, warnings: list[str]
) -> tuple[dict[str, float] | None, bool]:
    """The CUPED fit to report and whether the tests may adjust; explains any fallback."""
    if not cuped or all(v.covariate is None for v in items):
        return None, False
    if index != "exposures":
        warnings.append(
            "covariate ignored: CUPED adjusts a lift indexed by exposures; with "
            "index='outcomes' the test watches the share of outcome events, which it cannot adjust"
        )
        return None, False
    fitted, why = cuped_fit(items)
    if fitted is None:
        warnings.append(f"CUPED not applied: {why}")
        return None, False
    if fitted.coverage < 1.0:
        warnings.append(
            f"{(1 - fitted.coverage) * 100:.1f}% of exposed contacts had no covariate; they were "
            "given the pooled mean (still unbiased, less variance removed)"
        )
    return {
        "theta": fitted.theta,
        "correlation": fitted.correlation,
        "coverage": fitted.coverage,
    }, True


def _guarantees(test: StatsTest, mde: float | None, adjusted: bool) -> str:
    words = getattr(test, "guarantees", None)
    if not isinstance(words, str) or not words:
        if not test.decides:
            words = "descriptive only: never declares a winner"
        elif test.always_valid:
            words = "always-valid (as declared by the test): valid at every look"
        else:
            words = "fixed horizon: valid for one planned look only; peeking inflates false winners"
    if mde is not None and test.always_valid:
        words += f"; mixture tuned to a relative effect of {mde:g} (most power near it)"
    if adjusted:
        words += "; lift adjusted by CUPED with a pre-exposure covariate (unbiased, less variance)"
    return words


def _from_memory(current: Comparison, memory: ComparisonMemory) -> Comparison:
    """This look's estimates with the running p-value and running-intersection bounds."""
    absolute = current.absolute
    if memory.absolute is not None:
        absolute = Interval(absolute.estimate, *memory.absolute)
    relative = current.relative
    if relative is not None and memory.relative is not None:
        relative = Interval(relative.estimate, *memory.relative)
    return Comparison(
        current.variant, memory.p_value, absolute, relative, current.variance_reduction
    )


def _decide(
    *,
    test: StatsTest,
    method: str,
    alpha: float,
    lines: list[VariantResult],
    directions: list[int],
    unstable: list[bool],
    srm_p: float,
    srm_flagged: bool,
    srm_threshold: float,
    shortfalls: list[str],
) -> tuple[Decision, str | None, str]:
    control = lines[0]
    if not test.decides:
        return (
            Decision.DESCRIPTIVE_ONLY,
            None,
            f"method {method!r} is a descriptive readout and never declares a winner: "
            "stopping on it when it looks good is as peek-prone as p < 0.05; "
            "use method='sequential' for a decision",
        )
    if srm_flagged:
        return (
            Decision.SAMPLE_RATIO_MISMATCH,
            None,
            f"sample-ratio mismatch: the exposures do not match the configured split "
            f"(p = {srm_p:.2g} < {srm_threshold:g}); assignment or tracking is broken for some "
            "variant, so no difference can be trusted until the cause is fixed",
        )
    if shortfalls:
        return (
            Decision.BELOW_MINIMUM_SAMPLE,
            None,
            "below the minimum sample: " + "; ".join(shortfalls),
        )
    treatments = lines[1:]
    stable = [
        (t, d) for t, d, moved in zip(treatments, directions, unstable, strict=True) if not moved
    ]
    moving = [t.name for t, moved in zip(treatments, unstable, strict=True) if moved]
    better = [t for t, d in stable if t.significant and d > 0 and t.stopped is None]
    worse = [t for t, d in stable if t.significant and d < 0]
    if better:
        best = max(better, key=lambda t: t.rate)
        return (
            Decision.WINNER,
            best.name,
            _describe_win(best, alpha, control.name, test.always_valid),
        )
    if worse and len(worse) == len(treatments):
        return (
            Decision.WINNER,
            control.name,
            f"control {control.name} wins: every treatment is significantly worse "
            f"(largest Holm-adjusted p = {max(t.p_value_holm or 0.0 for t in worse):.3g} "
            f"< {alpha:g})",
        )
    smallest = min(t.p_value_holm for t in treatments if t.p_value_holm is not None)
    reason = (
        f"not significant: no treatment beats control {control.name} at alpha = {alpha:g} "
        f"(smallest Holm-adjusted p = {smallest:.3g})"
    )
    if worse:
        reason += "; significantly worse than control: " + ", ".join(t.name for t in worse)
    halted = [t for t in treatments if t.stopped is not None]
    if halted:
        reason += "; stopped: " + "; ".join(f"{t.name} ({t.stopped})" for t in halted)
    if moving:
        reason += (
            "; no decision on " + ", ".join(moving) + ": its effect changed over time "
            "(its intervals stopped overlapping)"
        )
    return Decision.NOT_SIGNIFICANT, None, reason
