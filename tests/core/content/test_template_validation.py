from __future__ import annotations

import pytest

from postwise.content import TemplateKind, TemplateSource, assert_valid_template, validate_template
from postwise.errors import TemplateError, ValidationError

FIELDS = {"first_name", "last_name", "plan", "city"}
FOOTER = '<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>'


def problems(subject: str, html: str, text: str | None = None, **kwargs: object) -> list[str]:
    found = validate_template(subject, html, text, known_variables=FIELDS, **kwargs)  # type: ignore[arg-type]
    return [f"{p.part}:{p.line}:{p.code}" for p in found]


def test_a_well_formed_template_has_no_problems() -> None:
    html = (
        '<p>Hi {{ first_name | default("there") }}</p>\n'
        '{% if "vip" in segments %}<p>VIP</p>{% endif %}\n'
        '{% if contact.plan == "pro" %}<p>Pro</p>{% endif %}\n'
        '{% for item in recommendations(4) %}<a href="{{ item.url }}">{{ item.title }}</a>'
        "{% endfor %}\n" + FOOTER
    )

    assert problems("Hello {{ first_name }}", html, "Bye {{ unsubscribe_url }}") == []


def test_syntax_errors_are_reported_with_their_line() -> None:
    html = "<p>one</p>\n<p>two</p>\n{% if first_name %}\n<p>never closed</p>\n" + FOOTER

    assert problems("Hi", html) == ["html:5:syntax"]


def test_unknown_variables_are_reported_once_with_their_first_line() -> None:
    html = "<p>{{ first_name }}</p>\n<p>{{ frist_name }}</p>\n<p>{{ frist_name }}</p>\n" + FOOTER

    assert problems("Hi", html) == ["html:2:unknown-variable"]


def test_variables_set_inside_the_template_are_not_unknown() -> None:
    html = "{% set greeting = 'Hi' %}{% for x in range(3) %}{{ loop.index }}{% endfor %}"

    assert problems("{{ greeting }}", html + "{{ greeting }}" + FOOTER) == [
        "subject:1:unknown-variable"
    ]


def test_unknown_filters_and_tests_are_reported() -> None:
    html = "<p>{{ first_name | shout }}</p>\n{% if plan is premium %}x{% endif %}" + FOOTER

    assert problems("Hi", html) == ["html:1:unknown-filter", "html:2:unknown-test"]


def test_postwise_internal_filters_are_not_available_to_authors() -> None:
    assert problems("{{ first_name | _pw_track }}", FOOTER) == ["subject:1:unknown-filter"]


def test_private_attribute_probes_are_reported() -> None:
    assert problems("{{ ''.__class__.__mro__ }}", FOOTER) == [
        "subject:1:unsafe-attribute",
        "subject:1:unsafe-attribute",
    ]
    assert problems("{{ contact['_secret'] }}", FOOTER) == ["subject:1:unsafe-attribute"]


def test_includes_and_imports_are_not_supported() -> None:
    assert problems("Hi", "{% include 'footer.html' %}" + FOOTER) == [
        "html:1:unsupported-statement"
    ]


@pytest.mark.parametrize(
    "call", ["recommendations(0)", "recommendations(500)", "recommendations('4')"]
)
def test_recommendations_with_an_impossible_count_are_reported(call: str) -> None:
    html = "{% for item in " + call + " %}{{ item.title }}{% endfor %}" + FOOTER

    assert problems("Hi", html) == ["html:1:bad-recommendations"]


def test_a_subject_spanning_lines_is_reported() -> None:
    assert problems("Hello\n{{ first_name }}", FOOTER) == ["subject:1:multiline-subject"]


def test_marketing_templates_need_an_unsubscribe_link_in_every_body_part() -> None:
    assert problems("Hi", "<p>No way out</p>", "Bye") == [
        "html:None:missing-unsubscribe",
        "text:None:missing-unsubscribe",
    ]
    assert problems("Hi", "<p>Receipt</p>", kind=TemplateKind.TRANSACTIONAL) == []


def test_assert_valid_template_raises_a_template_error_listing_every_problem() -> None:
    with pytest.raises(TemplateError) as caught:
        assert_valid_template(
            "{{ nope }}", "<p>{{ first_name | shout }}</p>", known_variables=FIELDS
        )

    message = str(caught.value)
    assert "subject line 1: unknown variable 'nope'" in message
    assert "html line 1: unknown filter 'shout'" in message
    assert "unsubscribe_url" in message
    assert caught.value.field == "subject"
    assert isinstance(caught.value, ValidationError)


def test_an_unknown_template_kind_is_refused() -> None:
    with pytest.raises(TemplateError, match="kind 'newsletter' is unknown"):
        TemplateSource(id=1, version=1, subject="s", html="h", kind="newsletter")
