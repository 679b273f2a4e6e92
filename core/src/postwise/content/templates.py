"""Template sources, the sandboxed Jinja environments, and validation when a template is saved.

Templates are written by users of the platform, so they are compiled by Jinja's
``ImmutableSandboxedEnvironment``: no access to underscore attributes (``''.__class__``), no
mutation of lists or dicts, no imports or includes. Any attempt fails with
:class:`postwise.errors.TemplateError`. The HTML part autoescapes merge values; the subject and
the text part do not (they are not HTML).

Names a template can use: every contact field (``{{ first_name }}``), ``contact`` (the whole
contact, ``{{ contact.plan }}``), ``segments`` (``{% if "vip" in segments %}``),
``recommendations(n)`` and ``unsubscribe_url``, plus Jinja's own globals (``range``...).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Final, NoReturn

from jinja2 import ChainableUndefined, Template, TemplateSyntaxError, meta, nodes
from jinja2.runtime import Context
from jinja2.sandbox import ImmutableSandboxedEnvironment, SecurityError
from jinja2.visitor import NodeTransformer

from postwise.content import limits
from postwise.content.links import track_filter
from postwise.content.recommendations import MAX_RECOMMENDATIONS
from postwise.errors import TemplateError, ValidationError

__all__ = [
    "CONTACT_FIELDS",
    "RESERVED_VARIABLES",
    "Part",
    "Problem",
    "TemplateKind",
    "TemplateSource",
    "assert_valid_template",
    "compile_part",
    "known_variables",
    "validate_template",
]

#: Contact columns a template can use by name (attributes are added on top of these).
CONTACT_FIELDS: Final = (
    "id",
    "email",
    "first_name",
    "last_name",
    "timezone",
    "country",
    "status",
    "engagement_score",
)
_VARIABLE_CHARS: Final = frozenset(
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_"
)

#: Names every template may use besides the contact's fields.
RESERVED_VARIABLES: Final = frozenset({"contact", "segments", "recommendations", "unsubscribe_url"})

#: Filters postwise adds for its own generated code; templates cannot call them.
_INTERNAL_FILTERS: Final = frozenset({"_pw_track"})


class TemplateKind(enum.StrEnum):
    """Marketing mail needs consent and an unsubscribe link; transactional mail needs neither."""

    MARKETING = "marketing"
    TRANSACTIONAL = "transactional"


class Part(enum.StrEnum):
    """The parts of a template."""

    SUBJECT = "subject"
    HTML = "html"
    TEXT = "text"


@dataclass(frozen=True, slots=True)
class TemplateSource:
    """One immutable version of a template, as saved by its author.

    ``text`` is ``None`` when the author wrote no text part: one is generated from the HTML.
    A change of content must come with a new ``version``; compiled templates are cached by
    ``(id, version)``.
    """

    id: int | str
    version: int
    subject: str
    html: str
    text: str | None = None
    kind: TemplateKind | str = TemplateKind.MARKETING

    def __post_init__(self) -> None:
        try:
            kind = TemplateKind(self.kind)
        except ValueError:
            raise TemplateError(
                f"template kind {self.kind!r} is unknown; use 'marketing' or 'transactional'",
                field="kind",
            ) from None
        # Normalised so comparisons never depend on whether a plain string was passed.
        object.__setattr__(self, "kind", kind)


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a template, located by part and (when known) line."""

    part: Part
    line: int | None
    code: str
    message: str

    def __str__(self) -> str:
        where = f"{self.part} line {self.line}" if self.line else str(self.part)
        return f"{where}: {self.message}"


class _Bounded(NodeTransformer):
    """Rewrites a parsed template so its costs go through :mod:`postwise.content.limits`.

    Each loop body and macro body starts by ticking the render's budget (so nested loops,
    recursive loops and recursive macros are all counted), and ``a ~ b`` concatenation becomes
    a checked call. The names used are globals of the environment, never the author's.
    """

    def _tick_first(self, body: list[nodes.Node], lineno: int) -> list[nodes.Node]:
        tick = nodes.Output([nodes.Call(nodes.Name(_TICK, "load"), [], [], None, None)])
        tick.set_lineno(lineno)
        return [tick, *body]

    def visit_For(self, node: nodes.For) -> nodes.Node:
        visited = self.generic_visit(node)
        assert isinstance(visited, nodes.For)
        visited.body = self._tick_first(visited.body, visited.lineno)
        return visited

    def visit_Macro(self, node: nodes.Macro) -> nodes.Node:
        visited = self.generic_visit(node)
        assert isinstance(visited, nodes.Macro)
        visited.body = self._tick_first(visited.body, visited.lineno)
        return visited

    def visit_CallBlock(self, node: nodes.CallBlock) -> nodes.Node:
        visited = self.generic_visit(node)
        assert isinstance(visited, nodes.CallBlock)
        visited.body = self._tick_first(visited.body, visited.lineno)
        return visited

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        visited = self.generic_visit(node)
        assert isinstance(visited, nodes.Concat)
        call = nodes.Call(nodes.Name(_CONCAT, "load"), list(visited.nodes), [], None, None)
        call.set_lineno(visited.lineno)
        return call


_TICK: Final = "_pw_tick"
_CONCAT: Final = "_pw_concat"


class _Environment(ImmutableSandboxedEnvironment):
    """The sandbox, made strict and bounded.

    An unsafe attribute fails at once instead of rendering empty. ``obj.name`` on a dict (a
    contact, a recommended item) looks the key up first, so a field called ``items`` or
    ``title`` wins over the dict method of that name, and the common case costs no
    AttributeError. Anything else goes through the sandbox's checks unchanged. Resources are
    bounded by :mod:`postwise.content.limits`: operators that can build large values are
    intercepted (and so never folded while compiling), filters and method calls are checked
    before they allocate, and loops and macros tick the render's budget.
    """

    intercepted_binops = frozenset(limits.BINOPS)

    def getattr(self, obj: Any, attribute: str) -> Any:
        # Even a missing private attribute is refused: a probe must fail loudly, not render "".
        if attribute[:1] == "_":
            self.unsafe_undefined(obj, attribute)
        if type(obj) is dict and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)

    def unsafe_undefined(self, obj: Any, attribute: str) -> NoReturn:
        raise SecurityError(
            f"access to attribute {attribute!r} of a {type(obj).__name__!r} object is not allowed"
        )

    def call_binop(self, context: Context, operator: str, left: Any, right: Any) -> Any:
        return limits.checked_binop(operator, left, right)

    def call(__self, __context: Context, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        args = limits.checked_call(__obj, args, kwargs)
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value: Any) -> Any:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        text: str = value.__self__
        limits.checked_format(text)
        is_map = value.__name__ == "format_map"

        def bounded(*args: Any, **kwargs: Any) -> Any:
            if is_map and len(args) == 1 and isinstance(args[0], Mapping):
                limits.checked_format_args(text, (), args[0])
            else:
                limits.checked_format_args(text, args, kwargs)
            return wrapped(*args, **kwargs)

        return bounded

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        tree = super()._parse(source, name, filename)
        bounded = _Bounded().visit(tree)
        assert isinstance(bounded, nodes.Template)
        return bounded


def _make_environment(*, autoescape: bool) -> _Environment:
    env = _Environment(
        autoescape=autoescape,
        # A missing field renders empty and chains (contact.address.city), so `default` works
        # at any depth; unknown names are caught when the template is saved, not at send time.
        undefined=ChainableUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        auto_reload=False,
        finalize=limits.checked_output,
    )
    env.globals.pop("lipsum", None)
    env.filters = {name: limits.checked_filter(name, f) for name, f in env.filters.items()}
    env.filters["_pw_track"] = track_filter
    env.globals[_TICK] = limits.tick
    env.globals[_CONCAT] = limits.checked_concat
    return env


HTML_ENV: Final = _make_environment(autoescape=True)
PLAIN_ENV: Final = _make_environment(autoescape=False)
_ENVIRONMENTS: Final = {Part.SUBJECT: PLAIN_ENV, Part.HTML: HTML_ENV, Part.TEXT: PLAIN_ENV}


def compile_part(part: Part, source: str, *, name: str) -> Template:
    """Compile one part; syntax errors (and unknown filters, a TemplateSyntaxError subclass)
    become :class:`TemplateError` with the part and line number."""
    try:
        return _ENVIRONMENTS[part].from_string(source)
    except TemplateSyntaxError as exc:
        raise TemplateError(
            f"{name}, {part} line {exc.lineno}: {exc.message}", field=str(part)
        ) from exc


def validate_template(
    subject: str,
    html: str,
    text: str | None = None,
    *,
    known_variables: Iterable[str],
    kind: TemplateKind | str = TemplateKind.MARKETING,
) -> list[Problem]:
    """Everything wrong with a template, part by part; empty when it is fine.

    ``known_variables`` are the contact fields templates may use. Reported: syntax errors,
    unknown variables, filters and tests, access to private attributes, includes/imports,
    ``recommendations(n)`` with an ``n`` out of range, a subject spanning lines, and (for
    marketing templates) a body without ``unsubscribe_url``.
    """
    allowed = set(known_variables) | RESERVED_VARIABLES | set(HTML_ENV.globals)
    problems: list[Problem] = []
    # A trailing line break (from a text area) is harmless in a subject; others are not.
    parts = [(Part.SUBJECT, subject.rstrip("\r\n")), (Part.HTML, html)]
    if text is not None:
        parts.append((Part.TEXT, text))
    for part, source in parts:
        try:
            ast = _ENVIRONMENTS[part].parse(source)
        except TemplateSyntaxError as exc:
            problems.append(Problem(part, exc.lineno, "syntax", exc.message or "syntax error"))
            continue
        problems.extend(_check_ast(part, source, ast, allowed))
        if (
            str(kind) == TemplateKind.MARKETING
            and part is not Part.SUBJECT
            and not any(n.name == "unsubscribe_url" for n in ast.find_all(nodes.Name))
        ):
            problems.append(
                Problem(
                    part,
                    None,
                    "missing-unsubscribe",
                    "marketing templates must link to {{ unsubscribe_url }} in every body part",
                )
            )
    return problems


def assert_valid_template(
    subject: str,
    html: str,
    text: str | None = None,
    *,
    known_variables: Iterable[str],
    kind: TemplateKind | str = TemplateKind.MARKETING,
) -> None:
    """Raise :class:`TemplateError` listing every problem :func:`validate_template` finds."""
    problems = validate_template(subject, html, text, known_variables=known_variables, kind=kind)
    if problems:
        listing = "; ".join(str(p) for p in problems)
        raise TemplateError(f"template is not valid: {listing}", field=str(problems[0].part))


def _undeclared_variables(part: Part, source: str, ast: nodes.Template) -> set[str]:
    env = _ENVIRONMENTS[part]
    missing_filters = {f.name for f in ast.find_all(nodes.Filter) if f.name not in env.filters}
    missing_tests = {t.name for t in ast.find_all(nodes.Test) if t.name not in env.tests}
    if missing_filters or missing_tests:
        # Jinja's analysis compiles the template, which fails on an unknown filter or test;
        # stand-ins let it finish so unknown variables are still reported alongside.
        env = env.overlay()
        # An overlay shares its parent's dicts: replace them, never update them in place.
        env.filters = {**env.filters, **dict.fromkeys(missing_filters, _stand_in)}
        env.tests = {**env.tests, **dict.fromkeys(missing_tests, _stand_in)}
        ast = env.parse(source)
    return meta.find_undeclared_variables(ast)


def _stand_in(value: Any, *args: Any, **kwargs: Any) -> Any:
    return value


def _check_ast(
    part: Part, source: str, ast: nodes.Template, allowed: set[str]
) -> Iterator[Problem]:
    env = _ENVIRONMENTS[part]
    unknown = _undeclared_variables(part, source, ast) - allowed
    reported: set[str] = set()
    for node in ast.find_all(nodes.Name):
        if node.ctx == "load" and node.name in unknown and node.name not in reported:
            reported.add(node.name)
            yield Problem(
                part,
                node.lineno,
                "unknown-variable",
                f"unknown variable {node.name!r}; use a contact field, one of "
                f"{', '.join(sorted(RESERVED_VARIABLES))}, or add a default",
            )
    for filt in ast.find_all(nodes.Filter):
        if filt.name not in env.filters or filt.name in _INTERNAL_FILTERS:
            yield Problem(part, filt.lineno, "unknown-filter", f"unknown filter {filt.name!r}")
    for test in ast.find_all(nodes.Test):
        if test.name not in env.tests:
            yield Problem(part, test.lineno, "unknown-test", f"unknown test {test.name!r}")
    for access in ast.find_all((nodes.Getattr, nodes.Getitem)):
        if isinstance(access, nodes.Getattr):
            name: str | None = access.attr
        else:
            assert isinstance(access, nodes.Getitem)
            name = _const_str(access.arg)
        if name is not None and name.startswith("_"):
            yield Problem(
                part, access.lineno, "unsafe-attribute", f"access to {name!r} is not allowed"
            )
    for stmt in ast.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)):
        yield Problem(
            part,
            stmt.lineno,
            "unsupported-statement",
            "extends, include and import are not supported; templates are self-contained",
        )
    for call in ast.find_all(nodes.Call):
        yield from _check_recommendations_call(part, call)
    if part is Part.SUBJECT:
        for data in ast.find_all(nodes.TemplateData):
            if "\n" in data.data or "\r" in data.data:
                yield Problem(
                    part, data.lineno, "multiline-subject", "the subject must be one line"
                )
                break


def _check_recommendations_call(part: Part, call: nodes.Call) -> Iterator[Problem]:
    if not (isinstance(call.node, nodes.Name) and call.node.name == "recommendations"):
        return
    if len(call.args) != 1 or call.kwargs or call.dyn_args or call.dyn_kwargs:
        yield Problem(
            part, call.lineno, "bad-recommendations", "call recommendations(n) with one number"
        )
        return
    arg = call.args[0]
    if isinstance(arg, nodes.Const) and not (
        type(arg.value) is int and 1 <= arg.value <= MAX_RECOMMENDATIONS
    ):
        yield Problem(
            part,
            call.lineno,
            "bad-recommendations",
            f"recommendations(n) needs a whole number n from 1 to {MAX_RECOMMENDATIONS}",
        )


def _const_str(node: nodes.Node) -> str | None:
    if isinstance(node, nodes.Const) and isinstance(node.value, str):
        return node.value
    return None


def known_variables(variables: Iterable[str] = ()) -> set[str]:
    """Names a template may use: contact fields, ``postal_address`` and declared ``variables``."""
    names = set(CONTACT_FIELDS) | {"postal_address"}
    for name in variables:
        if not name or not set(name) <= _VARIABLE_CHARS or name[0].isdigit():
            raise ValidationError(
                f"{name!r} is not a variable name (letters, digits, underscores)",
                field="variables",
            )
        names.add(name)
    return names
