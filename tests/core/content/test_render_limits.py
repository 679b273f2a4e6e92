"""Templates cannot take a process down: every way to build, loop or print without bound is cut.

Each hostile template below was, before the limits, either folded into a gigabyte constant while
compiling, or a render that pinned a thread for hours. Each must now fail fast, in bounded
memory, with a message that names the limit.
"""

from __future__ import annotations

import resource
import time
from typing import Any

import pytest

from postwise.content import TemplateCache, TemplateSource
from postwise.content.limits import RenderLimits, TemplateLimitError
from postwise.delivery.templates import check_template, preview
from postwise.errors import TemplateError, ValidationError
from postwise.runtime import Runtime
from postwise.settings import Settings

HOSTILE = {
    "constant list folded at compile time": "{% set l = [0] * 50000000 %}{{ l|length }}",
    "nested loops": (
        "{% for i in range(99999) %}{% for j in range(99999) %}x{% endfor %}{% endfor %}"
    ),
    "center filter": "{{ 'x'|center(1000000000) }}",
    "str method": "{{ 'x'.ljust(1000000000) }}",
    "printf width": "{{ '%1000000000s' % 1 }}",
    "format width": "{{ '{:>1000000000}'.format(1) }}",
    "format filter width": "{{ '%1000000000s'|format(1) }}",
    "huge power": "{{ 10 ** 100000000 }}",
    "join of repeated large strings": "{% set s = 'x' * 1000000 %}{{ ([s] * 100000)|join }}",
    "replace amplification": "{% set s = 'x' * 1000000 %}{{ s|replace('x', s) }}",
    "concatenation doubling": (
        "{% set ns = namespace(s='x' * 1000000) %}"
        "{% for i in range(40) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s|length }}"
    ),
    "exponential macro": (
        "{% macro f(n) %}{% if n > 0 %}{{ f(n - 1) }}{{ f(n - 1) }}{% endif %}{% endmacro %}"
        "{{ f(40) }}"
    ),
    "recursive loop": (
        "{% for x in range(10) recursive %}"
        "{% if loop.depth < 20 %}{{ loop(range(10)) }}{% endif %}{% endfor %}"
    ),
    "endless recursion": "{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}",
    "output flood": "{% set s = 'x' * 900000 %}{% for i in range(50) %}{{ s }}{% endfor %}",
    # Small lists holding many references to one large value: each is within the length
    # limits, but printing, joining or summing them walks every element of every reference.
    "repeated reference to a large list": (
        "{% set a = [0] * 999999 %}{% set b = [a] * 999999 %}{{ b }}"
    ),
    "nested list literals": (
        "{% set a = 'x' * 999999 %}{% set b = [a, a, a, a, a, a, a, a, a, a] %}"
        "{% set c = [b, b, b, b, b, b, b, b, b, b] %}{% set d = [c, c, c, c, c, c, c, c, c, c] %}"
        "{% set e = [d, d, d, d, d, d, d, d, d, d] %}{{ e }}"
    ),
    "nested list literals joined": (
        "{% set a = 'x' * 999999 %}{% set b = [a, a, a, a, a, a, a, a, a, a] %}"
        "{% set c = [b, b, b, b, b, b, b, b, b, b] %}{{ c|map('join')|join }}"
    ),
    "nested list literals concatenated": (
        "{% set a = [0] * 999999 %}{% set b = [a, a, a, a, a, a, a, a, a, a] %}"
        "{% set c = [b, b, b, b, b, b, b, b, b, b] %}{{ c ~ c }}"
    ),
    "sum of repeated lists": (
        "{% set a = [0] * 999 %}{% set b = [a, a, a, a, a, a, a, a, a, a] %}"
        "{% set c = [b, b, b, b, b, b, b, b, b, b] %}{% set d = [c, c, c, c, c, c, c, c, c, c] %}"
        "{{ (d|sum(start=[]))|sum(start=[])|length }}"
    ),
    "indent by a long string": "{{ ('x\\n' * 499999)|indent('y' * 999999) }}",
    "printf width from the arguments": "{{ '%*s' % (999999999, 'x') }}",
    "printf precision from the arguments": "{{ '%.*f' % (999999999, 1.0) }}",
    "format width from a nested field": "{{ '{:{}}'.format(1, 999999999) }}",
    "format width from a keyword": "{{ '{:{w}}'.format(1, w=999999999) }}",
    "format_map width": "{{ '{x:{w}}'.format_map({'x': 1, 'w': 999999999}) }}",
    "slow filter chain": "{{ range(99999)|map('center', 999999)|map('length')|sum }}",
}


def _render(html: str, limits: RenderLimits | None = None, **fields: Any) -> str:
    cache = TemplateCache() if limits is None else TemplateCache(limits=limits)
    source = TemplateSource(id="t", version=1, subject="hi", html=html, kind="transactional")
    return cache.get(source).render({"id": 1, **fields}, message_id="m").html


@pytest.mark.parametrize("html", HOSTILE.values(), ids=HOSTILE.keys())
def test_a_hostile_template_fails_fast_in_bounded_memory(html: str) -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    started = time.monotonic()
    with pytest.raises(TemplateLimitError):
        _render(html)
    assert time.monotonic() - started < 5.0
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 200


def test_ordinary_templates_render_as_before() -> None:
    html = (
        "<p>Hi {{ first_name }}{% for i in range(3) %}<b>{{ i ~ '!' }}</b>{% endfor %}</p>"
        "{{ ('a' ~ '<b>')|upper }} {{ 'a'|replace('a', 'bb') }} {{ [1, 2]|join(',') }} "
        "{{ '%s-%d'|format('a', 3) }} {{ 'x' * 3 }} {{ 2 ** 10 }} {{ [1] + [2] }} "
        "{{ '{}!'.format(first_name) }} {{ '%*s' % (3, 'x') }} {{ '{:{}}'.format(1, 2) }} "
        "{{ '%d' % 5000000 }}"
    )
    out = _render(html, first_name="<Zoë>")
    assert "Hi &lt;Zoë&gt;<b>0!</b><b>1!</b><b>2!</b>" in out
    assert "A&lt;B&gt; bb 1,2 a-3 xxx 1024 [1, 2] &lt;Zoë&gt;!   x  1 5000000" in out


def test_the_iteration_limit_counts_every_loop_of_one_render() -> None:
    # The text part is generated from the HTML, so both parts loop: 2 x (9 + 81) = 180.
    limits = RenderLimits(max_iterations=200)
    html = "{% for i in range(items) %}{% for j in range(items) %}.{% endfor %}{% endfor %}"
    assert _render(html, limits, items=9).count(".") == 81
    with pytest.raises(TemplateLimitError, match="200 loop iterations"):
        _render(html, limits, items=11)


def test_the_time_limit_stops_a_slow_render() -> None:
    limits = RenderLimits(max_seconds=0.05, max_iterations=10_000_000)
    html = "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}"
    started = time.monotonic()
    with pytest.raises(TemplateLimitError, match=r"longer than 0\.05 s"):
        _render(html, limits)
    assert time.monotonic() - started < 1.0


def test_a_limit_that_depends_on_the_contact_fails_that_contact_only() -> None:
    limits = RenderLimits(max_iterations=1_000)
    cache = TemplateCache(limits=limits)
    source = TemplateSource(
        id="t",
        version=1,
        subject="hi",
        html="{% for i in range(n) %}{% for j in range(n) %}.{% endfor %}{% endfor %}",
        kind="transactional",
    )
    compiled = cache.get(source)
    assert compiled.render({"id": 1, "n": 10}, message_id="a").html.count(".") == 100
    with pytest.raises(TemplateError):
        compiled.render({"id": 2, "n": 1000}, message_id="b")
    # The budget is per render: the next contact starts from zero.
    assert compiled.render({"id": 3, "n": 10}, message_id="c").html.count(".") == 100


@pytest.mark.parametrize(
    "html",
    [HOSTILE["constant list folded at compile time"], HOSTILE["nested loops"]],
    ids=["constant", "loops"],
)
def test_a_template_over_its_limits_is_refused_at_save(settings: Settings, html: str) -> None:
    with pytest.raises(TemplateLimitError, match="too costly to render"):
        check_template(settings, subject="hi", html=html, text=None, kind="transactional")


def test_a_template_whose_cost_depends_on_data_is_saved_and_bounded_at_preview(
    runtime: Runtime,
) -> None:
    from postwise.delivery.templates import create_template

    html = "{% for i in range(n|int) %}{% for j in range(n|int) %}.{% endfor %}{% endfor %}"
    with runtime.session() as session:
        template = create_template(
            session,
            runtime.settings,
            name="loops",
            subject="hi",
            html=html,
            kind="transactional",
            variables=["n"],
        )
        session.commit()
        assert template.id is not None
        shown = preview(session, runtime.settings, template.id, fields={"n": "5"})
        assert shown["html"].count(".") == 25
        with pytest.raises(TemplateLimitError):
            preview(session, runtime.settings, template.id, fields={"n": "99999"})


def test_the_limits_come_from_the_settings(make_settings: Any) -> None:
    strict = make_settings(template_max_iterations=10)
    with pytest.raises(TemplateLimitError, match="10 loop iterations"):
        check_template(
            strict,
            subject="hi",
            html="{% for i in range(50) %}.{% endfor %}",
            text=None,
            kind="transactional",
        )


def test_an_oversized_template_source_is_refused(settings: Settings) -> None:
    with pytest.raises(ValidationError, match="limit is 500,000"):
        check_template(settings, subject="hi", html="x" * 600_000, text=None, kind="transactional")
