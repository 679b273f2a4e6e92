from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import Any

import pytest

from postwise.content import TemplateCache, TemplateKind, TemplateSource
from postwise.errors import ComplianceError, ConflictError, TemplateError

UNSUB = "https://t.example.com/u/tok123"
FOOTER = '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>'

CATALOGUE = {
    "sku-1": {"title": "Kettle", "price": 30},
    "sku-2": {"title": "Teapot", "price": 25},
    "sku-3": {"title": "Mugs & Cups", "price": 12},
    "sku-4": {"title": "Tea <Sampler>", "price": 18},
    "sku-5": {"title": "Strainer", "price": 5},
}
PURCHASES = [
    (1, "sku-1"),
    (2, "sku-1"),
    (3, "sku-1"),
    (1, "sku-3"),
    (2, "sku-3"),
    (4, "sku-4"),
    (5, "sku-4"),
    (2, "sku-2"),
]


def popular(contact_id: int | str, n: int) -> list[dict[str, Any]]:
    """Bestsellers the contact has not bought yet: a real (tiny) popularity recommender."""
    counts = Counter(item for _, item in PURCHASES)
    owned = {item for who, item in PURCHASES if who == contact_id}
    ranked = sorted(CATALOGUE, key=lambda sku: (-counts[sku], sku))
    return [
        {
            "id": sku,
            "title": CATALOGUE[sku]["title"],
            "url": f"https://shop.example.com/p/{sku}?src=mail&c={contact_id}",
            "image_url": f"https://shop.example.com/img/{sku}.jpg",
        }
        for sku in ranked
        if sku not in owned
    ][:n]


def source(html: str, *, subject: str = "Hi", text: str | None = None, **kw: Any) -> TemplateSource:
    return TemplateSource(id="t1", version=1, subject=subject, html=html, text=text, **kw)


def render(src: TemplateSource, contact: Mapping[str, Any], **kw: Any) -> Any:
    kw.setdefault("message_id", "m-1")
    kw.setdefault("unsubscribe_url", UNSUB)
    return TemplateCache().get(src).render(contact, **kw)


def test_merge_tags_and_defaults_fill_subject_html_and_text() -> None:
    src = source(
        "<p>Dear {{ first_name | default('there') }} from {{ city | default('nowhere') }}</p>"
        + FOOTER,
        subject="{{ first_name | default('Friend') }}, news for {{ city }}",
        text="Dear {{ first_name | default('there') }}\n{{ unsubscribe_url }}\n",
    )

    out = render(src, {"id": 1, "first_name": "Ann"})

    assert out.subject == "Ann, news for "
    assert "<p>Dear Ann from nowhere</p>" in out.html
    assert out.text == f"Dear Ann\n{UNSUB}\n"


def test_missing_nested_fields_fall_back_to_their_default() -> None:
    src = source("<p>{{ contact.address.city | default('your city') }}</p>" + FOOTER)

    assert "<p>your city</p>" in render(src, {"id": 1}).html


def test_blocks_follow_segments_and_contact_attributes() -> None:
    src = source(
        '{% if "vip" in segments %}<p>VIP lounge</p>{% endif %}'
        '{% if contact.plan == "pro" %}<p>Pro tips</p>{% else %}<p>Upgrade</p>{% endif %}' + FOOTER
    )

    vip_pro = render(src, {"id": 1, "plan": "pro"}, segments={"vip", "eu"})
    plain = render(src, {"id": 2, "plan": "free"}, segments=["eu"])

    assert "VIP lounge" in vip_pro.html
    assert "Pro tips" in vip_pro.html
    assert "Upgrade" not in vip_pro.html
    assert "VIP lounge" not in plain.html
    assert "Upgrade" in plain.html


def test_html_autoescapes_merge_values_but_subject_and_text_do_not() -> None:
    src = source(
        "<p>{{ first_name }}</p>" + FOOTER,
        subject="For {{ first_name }}",
        text="For {{ first_name }} {{ unsubscribe_url }}",
    )

    out = render(src, {"id": 1, "first_name": "<b>Tom & Jerry</b>"})

    assert "<p>&lt;b&gt;Tom &amp; Jerry&lt;/b&gt;</p>" in out.html
    assert out.subject == "For <b>Tom & Jerry</b>"
    assert out.text.startswith("For <b>Tom & Jerry</b>")


@pytest.mark.parametrize(
    "probe",
    [
        "{{ ''.__class__ }}",
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ contact.__class__ }}",
        "{{ recommendations.__globals__ }}",
        "{{ 'a'.format.__self__ }}",
        "{{ '{0.__class__}'.format(contact) }}",
        "{{ segments.__iter__ }}",
    ],
)
def test_sandbox_escapes_fail_with_a_template_error(probe: str) -> None:
    src = source("<p>" + probe + "</p>" + FOOTER)

    with pytest.raises(TemplateError):
        render(src, {"id": 1})


def test_variables_set_in_one_part_do_not_leak_into_the_others_or_the_next_message() -> None:
    src = source(
        "{% set first_name = 'Overwritten' %}<p>{{ first_name }}</p>" + FOOTER,
        subject="{{ first_name }}",
        text="{{ first_name }} {{ unsubscribe_url }}",
    )
    compiled = TemplateCache().get(src)

    out = compiled.render({"id": 1, "first_name": "Ann"}, message_id="m", unsubscribe_url=UNSUB)
    again = compiled.render({"id": 2, "first_name": "Bob"}, message_id="m", unsubscribe_url=UNSUB)

    assert "<p>Overwritten</p>" in out.html
    assert out.subject == "Ann"
    assert out.text.startswith("Ann ")
    assert again.subject == "Bob"


def test_fields_named_like_dict_methods_are_the_fields() -> None:
    src = source("<p>{{ contact.items }} / {{ contact.keys | default('none') }}</p>" + FOOTER)

    out = render(src, {"id": 1, "items": "3 items"})

    assert "<p>3 items / " in out.html


def test_templates_cannot_mutate_the_data_they_are_given() -> None:
    contact: dict[str, Any] = {"id": 1, "tags": ["a"]}
    src = source("{{ contact.tags.append('hacked') }}" + FOOTER)

    with pytest.raises(TemplateError):
        render(src, contact)
    assert contact["tags"] == ["a"]


def test_a_runtime_error_in_a_template_is_a_template_error_naming_the_template() -> None:
    src = source("<p>{{ 100 / contact.visits }}</p>" + FOOTER)

    with pytest.raises(TemplateError, match="template 't1' version 1 failed to render"):
        render(src, {"id": 1, "visits": 0})


def test_a_syntax_error_is_reported_when_the_template_is_compiled() -> None:
    with pytest.raises(TemplateError, match="line 2"):
        TemplateCache().get(source("<p>ok</p>\n{% if x %}" + FOOTER))


def test_recommendation_blocks_call_the_recommender_for_the_contact() -> None:
    src = source(
        "<ul>{% for item in recommendations(2) %}<li>{{ item.title }}</li>{% endfor %}</ul>"
        + FOOTER
    )

    out = render(src, {"id": 1, "first_name": "Ann"}, recommender=popular)

    # Contact 1 owns sku-1 and sku-3, so the two bestsellers left are sku-4 and sku-2.
    assert "<ul><li>Tea &lt;Sampler&gt;</li><li>Teapot</li></ul>" in out.html
    assert "Tea <Sampler>" in out.text


def test_recommendations_are_asked_once_per_message_even_when_used_twice() -> None:
    calls: list[tuple[Any, int]] = []

    def counting(contact_id: int | str, n: int) -> list[dict[str, Any]]:
        calls.append((contact_id, n))
        return popular(contact_id, n)

    src = source(
        "{% for i in recommendations(3) %}{{ i.id }}{% endfor %}"
        "{% for i in recommendations(3) %}{{ i.title }}{% endfor %}" + FOOTER
    )

    render(src, {"id": 7}, recommender=counting)

    assert calls == [(7, 3)]


def test_recommendations_without_a_recommender_are_a_template_error() -> None:
    src = source("{% for i in recommendations(3) %}{{ i.id }}{% endfor %}" + FOOTER)

    with pytest.raises(TemplateError, match="no recommender was given"):
        render(src, {"id": 1})


def test_recommended_items_must_have_the_required_keys() -> None:
    def incomplete(contact_id: int | str, n: int) -> list[dict[str, Any]]:
        return [{"id": "x", "title": "No link"}]

    src = source("{% for i in recommendations(1) %}{{ i.id }}{% endfor %}" + FOOTER)

    with pytest.raises(TemplateError, match="without url, image_url"):
        render(src, {"id": 1}, recommender=incomplete)


def test_css_is_inlined_into_elements_that_hold_merge_tags_and_blocks() -> None:
    src = source(
        "<html><head><style>p.lead { color: #123456; font-size: 18px }"
        " td { padding: 4px }</style></head><body>"
        '<p class="lead">Hi {{ first_name | default("there") }} &amp; co</p>'
        '<p class="lead" style="margin: {{ gap | default(0) }}px">Spaced</p>'
        "<table><tr><td>head</td></tr>{% for item in recommendations(2) %}"
        '<tr><td><a href="{{ item.url }}">{{ item.title }}</a></td></tr>{% endfor %}</table>'
        + FOOTER
        + "</body></html>"
    )

    out = render(src, {"id": 1, "first_name": "Ann", "gap": 8}, recommender=popular)

    assert '<p class="lead" style="color:#123456; font-size:18px">Hi Ann &amp; co</p>' in out.html
    assert 'style="color:#123456; font-size:18px; margin:8px"' in out.html
    assert out.html.count('<td style="padding:4px">') == 3
    assert "<style>" not in out.html
    assert (
        out.html.index("Tea &lt;Sampler&gt;")
        < out.html.index("Teapot")
        < out.html.index("</table>")
    )


def test_template_blocks_inside_a_style_block_are_refused_not_dropped() -> None:
    src = source(
        "<style>{% if 'vip' in segments %}p { color: gold }{% endif %}</style><p>x</p>" + FOOTER
    )

    with pytest.raises(TemplateError, match="inside <style>"):
        TemplateCache().get(src)


def test_merge_tags_in_css_values_are_inlined() -> None:
    src = source(
        "<style>p.brand { color: {{ brand | default('black') }} }</style>"
        '<p class="brand">x</p>' + FOOTER
    )

    assert (
        '<p class="brand" style="color:teal">x</p>' in render(src, {"id": 1, "brand": "teal"}).html
    )


def test_media_queries_stay_in_a_style_block() -> None:
    src = source(
        "<html><head><style>p { color: red } @media (max-width: 600px) { p { color: blue } }"
        "</style></head><body><p>{{ first_name }}</p>" + FOOTER + "</body></html>"
    )

    html = render(src, {"id": 1, "first_name": "Ann"}).html

    assert '<p style="color:red">Ann</p>' in html
    assert "@media (max-width: 600px)" in html


def test_a_text_part_is_generated_from_the_html_when_none_is_authored() -> None:
    src = source(
        "<html><head><title>ignored</title><style>p {color: red}</style></head><body>"
        "<h1>Hello {{ first_name | default('there') }}</h1>"
        "{% if 'vip' in segments %}<p>VIP &amp; friends only</p>{% endif %}"
        "<p>Line one<br>line two</p><ul><li>first</li><li>second</li></ul>"
        '<p><a href="mailto:help@example.com">help@example.com</a></p>' + FOOTER + "</body></html>"
    )

    vip = render(src, {"id": 1, "first_name": "A&B <x>"}, segments={"vip"}).text
    plain = render(src, {"id": 2}).text

    assert vip == (
        "Hello A&B <x>\n\nVIP & friends only\n\nLine one\nline two\n\n- first\n- second\n\n"
        f"help@example.com\n\nUnsubscribe ({UNSUB})\n"
    )
    assert plain.startswith("Hello there\n\nLine one")
    assert "ignored" not in vip
    assert "color" not in vip


def test_block_tags_between_elements_leave_no_stray_spaces_in_generated_text() -> None:
    src = source(
        "<h1>Hi</h1>\n{% if 'vip' in segments %}\n<p>VIP</p>\n{% else %}\n<p>Hello</p>\n"
        "{% endif %}\n{% for item in recommendations(2) %}\n"
        '<div><a href="{{ item.url }}">{{ item.title }}</a></div>\n{% endfor %}\n' + FOOTER
    )

    text = render(src, {"id": 1}, recommender=popular, tracking=None).text

    assert text == (
        "Hi\n\nHello\n\n"
        "Tea <Sampler> (https://shop.example.com/p/sku-4?src=mail&c=1)\n"
        "Teapot (https://shop.example.com/p/sku-2?src=mail&c=1)\n\n"
        f"Unsubscribe ({UNSUB})\n"
    )


def test_marketing_mail_cannot_render_without_an_unsubscribe_url() -> None:
    src = source("<p>Sale</p>" + FOOTER)

    with pytest.raises(ComplianceError, match="needs an unsubscribe_url"):
        TemplateCache().get(src).render({"id": 1}, message_id="m", unsubscribe_url=None)


def test_transactional_mail_renders_without_an_unsubscribe_url() -> None:
    src = source("<p>Receipt {{ order }}</p>", kind=TemplateKind.TRANSACTIONAL)

    out = TemplateCache().get(src).render({"id": 1, "order": "A-1"}, message_id="m")

    assert "<p>Receipt A-1</p>" in out.html
    assert out.text == "Receipt A-1\n"


def test_the_cache_compiles_each_version_once() -> None:
    cache = TemplateCache()
    v1 = source("<p>one</p>" + FOOTER)
    v2 = TemplateSource(id="t1", version=2, subject="Hi", html="<p>two</p>" + FOOTER)

    first = cache.get(v1)

    assert cache.get(TemplateSource(**{f: getattr(v1, f) for f in v1.__slots__})) is first
    assert cache.get(v2) is not first
    assert "two" in cache.get(v2).render({"id": 1}, message_id="m", unsubscribe_url=UNSUB).html
    assert len(cache) == 2


def test_css_is_inlined_once_per_version_not_per_message(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import premailer

    calls: list[int] = []
    real_transform = premailer.Premailer.transform

    def counted(self: premailer.Premailer, *args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real_transform(self, *args, **kwargs)

    monkeypatch.setattr(premailer.Premailer, "transform", counted)
    cache = TemplateCache()
    src = source("<style>p { color: #123456 }</style><p>{{ first_name }}</p>" + FOOTER)

    outputs = [
        cache.get(src).render(
            {"id": i, "first_name": f"n{i}"}, message_id=f"m{i}", unsubscribe_url=UNSUB
        )
        for i in range(50)
    ]

    assert len(calls) == 1
    assert all(f'<p style="color:#123456">n{i}</p>' in out.html for i, out in enumerate(outputs))


def test_changing_a_version_in_place_is_a_conflict() -> None:
    cache = TemplateCache()
    cache.get(source("<p>one</p>" + FOOTER))

    with pytest.raises(ConflictError, match="new version"):
        cache.get(source("<p>edited</p>" + FOOTER))


def test_the_cache_evicts_the_least_recently_used_version_beyond_its_bound() -> None:
    cache = TemplateCache(max_entries=2)
    a, b, c = (
        TemplateSource(id=name, version=1, subject="s", html="<p>x</p>" + FOOTER) for name in "abc"
    )
    first_a = cache.get(a)
    cache.get(b)
    cache.get(a)
    cache.get(c)

    assert len(cache) == 2
    assert cache.get(a) is first_a
    assert cache.get(b) is not None
    assert len(cache) == 2
