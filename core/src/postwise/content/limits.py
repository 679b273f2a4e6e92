"""Bounds on what a template may cost: time, loop iterations, output and the values it builds.

Templates are written by users, and Jinja's sandbox guards attribute access, not resources:
``{% set l = [0] * 50000000 %}`` is folded into a constant while compiling (gigabytes before
any render starts), and two nested loops over ``range(99999)`` run for hours. Every route to
unbounded work goes through one of these checks:

* binary operators ``*``, ``**``, ``%``, ``+`` are intercepted (which also stops Jinja from
  folding them at compile time) and refuse results larger than ``max_value_chars``;
* ``~`` concatenation, filters and method calls that build strings or lists (``center``,
  ``replace``, ``join``, ``ljust``, ``format``...) are checked *before* they allocate;
* every iteration of a ``for`` loop, of a recursive loop and every macro call ticks the
  render's :class:`Budget`, which refuses beyond ``max_iterations`` and past the deadline;
* rendered output is counted as it streams, and refused beyond ``max_output_chars``.

A render that exceeds a limit raises :class:`TemplateLimitError` (a ``TemplateError``): at
save and preview the author is told which limit and by what; at send time that one message
fails and the rest of its batch goes on.
"""

from __future__ import annotations

import contextvars
import re
import string
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from markupsafe import Markup, soft_str

from postwise.errors import TemplateError
from postwise.settings import Settings

__all__ = [
    "BINOPS",
    "DEFAULT_LIMITS",
    "Budget",
    "RenderLimits",
    "TemplateLimitError",
    "budget_scope",
    "checked_binop",
    "checked_call",
    "checked_concat",
    "checked_filter",
    "checked_format",
    "checked_format_args",
    "checked_output",
    "limits_from_settings",
    "stream",
    "tick",
]


class TemplateLimitError(TemplateError):
    """A template went past one of its render limits."""


@dataclass(frozen=True, slots=True)
class RenderLimits:
    """What rendering one message (all of its parts) may cost.

    The defaults are far above what real email needs (a 100-product loop renders in about a
    millisecond; Gmail clips messages over 102 kB) and far below what hurts a worker.
    """

    max_seconds: float = 2.0
    max_iterations: int = 100_000
    max_output_chars: int = 2_000_000
    max_value_chars: int = 1_000_000

    def __post_init__(self) -> None:
        for name in ("max_seconds", "max_iterations", "max_output_chars", "max_value_chars"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive")


DEFAULT_LIMITS: Final = RenderLimits()


def limits_from_settings(settings: Settings) -> RenderLimits:
    """The render limits a deployment configured (``template_max_*`` settings)."""
    return RenderLimits(
        max_seconds=settings.template_max_render_seconds,
        max_iterations=settings.template_max_iterations,
        max_output_chars=settings.template_max_output_chars,
        max_value_chars=settings.template_max_value_chars,
    )


class Budget:
    """The running cost of one render; lives in a context variable while the render runs."""

    __slots__ = ("_check_every", "deadline", "iterations", "limits", "output", "weights")

    def __init__(self, limits: RenderLimits) -> None:
        self.limits = limits
        self.deadline = time.monotonic() + limits.max_seconds
        self.iterations = 0
        self.output = 0
        self._check_every = 256
        # Weights of the containers measured so far (the sandbox is immutable, so a container
        # keeps its weight for the render); each entry holds the container so its id stays its.
        self.weights: dict[int, tuple[Any, int]] = {}

    def tick(self) -> None:
        self.iterations += 1
        if self.iterations > self.limits.max_iterations:
            raise TemplateLimitError(
                f"the template ran more than {self.limits.max_iterations:,} loop iterations or "
                "macro calls; loop over fewer items"
            )
        if self.iterations % self._check_every == 0:
            self.check_time()

    def check_time(self) -> None:
        if time.monotonic() > self.deadline:
            raise TemplateLimitError(
                f"the template took longer than {self.limits.max_seconds:g} s to render; "
                "simplify its loops"
            )

    def add_output(self, chunk: str) -> None:
        self.output += len(chunk)
        if self.output > self.limits.max_output_chars:
            raise TemplateLimitError(
                f"the template rendered more than {self.limits.max_output_chars:,} characters"
            )


_CURRENT: contextvars.ContextVar[Budget | None] = contextvars.ContextVar(
    "postwise_template_budget", default=None
)


class budget_scope:
    """Make a fresh :class:`Budget` current for the renders inside the ``with`` block."""

    __slots__ = ("_budget", "_token")

    def __init__(self, limits: RenderLimits) -> None:
        self._budget = Budget(limits)
        self._token: contextvars.Token[Budget | None] | None = None

    def __enter__(self) -> Budget:
        self._token = _CURRENT.set(self._budget)
        return self._budget

    def __exit__(self, *exc: object) -> None:
        assert self._token is not None
        _CURRENT.reset(self._token)


def _limits() -> RenderLimits:
    budget = _CURRENT.get()
    return DEFAULT_LIMITS if budget is None else budget.limits


def tick() -> str:
    """Called by generated code at each loop iteration and macro call; renders nothing."""
    budget = _CURRENT.get()
    if budget is not None:
        budget.tick()
    return ""


def stream(chunks: Iterable[str]) -> str:
    """Join rendered chunks, refusing output (and time) beyond the current budget."""
    budget = _CURRENT.get()
    if budget is None:
        return "".join(chunks)
    parts: list[str] = []
    for chunk in chunks:
        budget.add_output(chunk)
        parts.append(chunk)
    budget.check_time()
    return "".join(parts)


def _too_big(what: str, size: int) -> TemplateLimitError:
    return TemplateLimitError(
        f"{what} would build a value of {size:,} characters or items; the limit is "
        f"{_limits().max_value_chars:,}"
    )


_CONTAINERS: Final = (list, tuple, dict, set, frozenset)


def _weight(value: Any, memo: dict[int, tuple[Any, int]], limit: int) -> int:
    """Characters and items ``value`` holds, counting a shared element once per reference.

    ``[a] * n`` and ``[b, b, b]`` are small lists whose printing, joining or summing walks every
    element of every reference; their weight is what that walk costs. Stops past ``limit``.
    """
    if isinstance(value, (str, bytes)):
        return len(value)
    if not isinstance(value, _CONTAINERS):
        return 1
    known = memo.get(id(value))
    if known is not None and known[0] is value:
        return known[1]
    total = len(value)
    children = (
        (x for pair in value.items() for x in pair) if isinstance(value, dict) else iter(value)
    )
    for child in children:
        if isinstance(child, (str, bytes, *_CONTAINERS)):
            total += _weight(child, memo, limit)
            if total > limit:
                break
    memo[id(value)] = (value, total)
    return total


def _check_weight(what: str, *values: Any) -> None:
    """Refuse values that would cost more than the limit to print, join or walk."""
    budget = _CURRENT.get()
    memo = budget.weights if budget is not None else {}
    limit = _limits().max_value_chars
    for value in values:
        if isinstance(value, _CONTAINERS):
            weight = _weight(value, memo, limit)
            if weight > limit:
                raise _too_big(what, weight)
    if budget is not None:
        budget.check_time()


def checked_output(value: Any) -> Any:
    """Jinja's ``finalize``: a value is measured before it is turned into text."""
    _check_weight("printing a value", value)
    return value


def _size(value: Any) -> int | None:
    if isinstance(value, (str, bytes, list, tuple)):
        return len(value)
    return None


def _check_size(what: str, size: int) -> None:
    if size > _limits().max_value_chars:
        raise _too_big(what, size)


def _mul(left: Any, right: Any) -> Any:
    for seq, count in ((left, right), (right, left)):
        length = _size(seq)
        if length is not None and isinstance(count, int):
            _check_size("'*'", length * max(count, 0))
            if isinstance(seq, (list, tuple)) and count > 0:
                _check_size("'*'", _weight(seq, {}, _limits().max_value_chars) * count)
    return left * right


def _pow(left: Any, right: Any) -> Any:
    # Bits of the result, roughly: big integers cost time and memory quadratically.
    if (
        isinstance(left, int)
        and isinstance(right, int)
        and right > 0
        and abs(left) > 1
        and abs(left).bit_length() * right > 4096
    ):
        raise TemplateLimitError(f"'**' would build a number of about {right} digits or more")
    return left**right


def _add(left: Any, right: Any) -> Any:
    left_size, right_size = _size(left), _size(right)
    if left_size is not None and right_size is not None:
        _check_size("'+'", left_size + right_size)
    _check_weight("'+'", left, right)
    return left + right


# A width or precision in a printf-style or str.format specification ("%1000000000s").
_WIDTH = re.compile(r"(\d{7,})")


def _check_format_spec(spec: Any) -> None:
    if isinstance(spec, str):
        for match in _WIDTH.finditer(spec):
            if int(match.group(1)) > _limits().max_value_chars:
                raise TemplateLimitError(
                    f"a format width of {int(match.group(1)):,} is larger than the limit "
                    f"{_limits().max_value_chars:,}"
                )


def _mod(left: Any, right: Any) -> Any:
    _check_format_spec(left)
    _check_weight("'%'", right)
    if isinstance(left, str) and "*" in left:
        # "%*s" and "%.*f" take the width or precision from the arguments.
        _check_args("'%'", right if isinstance(right, tuple) else (right,))
    return left % right


#: The operators the sandbox routes through :func:`checked_binop` (and never folds).
BINOPS: Final[Mapping[str, Callable[[Any, Any], Any]]] = {
    "*": _mul,
    "**": _pow,
    "%": _mod,
    "+": _add,
}


def checked_binop(op: str, left: Any, right: Any) -> Any:
    return BINOPS[op](left, right)


def checked_concat(*values: Any) -> Any:
    """``a ~ b ~ c`` with Jinja's semantics (markup-aware), refused when too long."""
    _check_weight("'~'", *values)
    texts = [soft_str(v) for v in values]
    _check_size("'~'", sum(len(t) for t in texts))
    if any(hasattr(v, "__html__") for v in texts):
        return Markup("").join(texts)
    return "".join(texts)


def _check_args(what: str, args: Iterable[Any]) -> None:
    limit = _limits().max_value_chars
    for arg in args:
        if isinstance(arg, int) and not isinstance(arg, bool) and abs(arg) > limit:
            raise TemplateLimitError(f"{what} was given {arg:,}, larger than the limit {limit:,}")


def _check_replace(what: str, text: Any, old: Any, new: Any, count: Any = -1) -> None:
    if isinstance(text, str) and isinstance(old, str) and isinstance(new, str):
        hits = text.count(old) if old else len(text) + 1
        if isinstance(count, int) and count >= 0:
            hits = min(hits, count)
        _check_size(what, len(text) + hits * (len(new) - len(old)))


def _check_join(what: str, separator: Any, items: Any) -> Any:
    """Check a join before it runs; returns the items as a list (they may be an iterator)."""
    listed = list(items)
    _check_size(what, len(listed))
    sep = len(separator) if isinstance(separator, str) else 0
    total = sep * max(len(listed) - 1, 0) + sum(len(x) for x in listed if isinstance(x, str))
    _check_size(what, total)
    return listed


def checked_filter(name: str, function: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a Jinja filter so its arguments cannot make it allocate beyond the limits."""
    if name == "join":
        return _bounded_join(function)

    def bounded(*args: Any, **kwargs: Any) -> Any:
        # Jinja passes the environment or context first to some filters: check values only.
        values = [a for a in args if isinstance(a, (int, str))]
        _check_args(f"the {name!r} filter", [*values, *kwargs.values()])
        _check_weight(f"the {name!r} filter", *args, *kwargs.values())
        if name == "replace":
            strings = [a for a in args if isinstance(a, str)]
            if len(strings) >= 3:
                count = next((a for a in args if type(a) is int), kwargs.get("count", -1))
                text, old, new = strings[:3]
                _check_replace("the 'replace' filter", text, old, new, count)
        elif name == "format":
            _check_format_spec(next((a for a in args if isinstance(a, str)), None))
        elif name == "indent":
            # indent(text, width): a string width is put before every line.
            strings = [a for a in [*args, kwargs.get("width")] if isinstance(a, str)]
            if len(strings) >= 2:
                text, width = strings[0], strings[1]
                _check_size("the 'indent' filter", len(text) + (text.count("\n") + 1) * len(width))
        result = function(*args, **kwargs)
        size = _size(result)
        if size is not None:
            _check_size(f"the {name!r} filter", size)
        return result

    return _keep_marker(function, bounded, name)


def _bounded_join(function: Callable[..., Any]) -> Callable[..., Any]:
    def join(eval_ctx: Any, value: Any, d: str = "", attribute: Any = None) -> Any:
        _check_weight("the 'join' filter", value)
        listed = _check_join("the 'join' filter", d, value if attribute is None else list(value))
        result = function(eval_ctx, listed, d, attribute)
        _check_size("the 'join' filter", len(result))
        return result

    return _keep_marker(function, join, "join")


def _keep_marker(
    function: Callable[..., Any], wrapper: Callable[..., Any], name: str
) -> Callable[..., Any]:
    wrapper.__name__ = getattr(function, "__name__", name)
    # Keep Jinja's pass_context / pass_eval_context / pass_environment marker.
    if hasattr(function, "jinja_pass_arg"):
        wrapper.jinja_pass_arg = function.jinja_pass_arg  # type: ignore[attr-defined]
    return wrapper


_SIZED_METHODS: Final = frozenset({"center", "ljust", "rjust", "zfill", "expandtabs"})


def checked_call(obj: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> tuple[Any, ...]:
    """Refuse a method call whose arguments would allocate beyond the limits, before it runs.

    Returns the positional arguments to call with (an iterator given to ``join`` is read once
    here to measure it, so the call gets the list).
    """
    _check_weight("a method call", *args, *kwargs.values())
    owner = getattr(obj, "__self__", None)
    name = getattr(obj, "__name__", "")
    if not isinstance(owner, (str, bytes)):
        return args
    what = f"str.{name}()"
    if name in _SIZED_METHODS:
        _check_args(what, [*args, *kwargs.values()])
    elif name == "replace" and len(args) >= 2:
        _check_replace(what, owner, *args[:3])
    elif name == "join" and args:
        return (_check_join(what, owner, args[0]), *args[1:])
    elif name in ("format", "format_map"):
        _check_format_spec(owner)
    return args


def checked_format(value: Any) -> None:
    """Refuse a format string with a width or precision beyond the limits."""
    _check_format_spec(value)


def checked_format_args(value: str, args: Iterable[Any], kwargs: Mapping[str, Any]) -> None:
    """Refuse ``str.format`` arguments that a nested field (``{:{}}``) makes a width."""
    try:
        nested = any(spec and "{" in spec for _, _, spec, _ in string.Formatter().parse(value))
    except ValueError:
        return  # str.format itself reports the malformed string
    if nested:
        _check_args("str.format()", [*args, *kwargs.values()])
