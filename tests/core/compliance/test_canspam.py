"""CAN-SPAM: a marketing template needs the postal address and a working unsubscribe link."""

from __future__ import annotations

import pytest

from postwise.compliance.canspam import check_marketing_template, require_marketing_template
from postwise.errors import ComplianceError

ADDRESS = "Acme Inc., 1 Main Street, Springfield, 12345"
GOOD_HTML = (
    "<p>Hello {{ first_name }}</p>"
    '<footer>{{ postal_address }} · <a href="{{ unsubscribe_url }}">Unsubscribe</a></footer>'
)
GOOD_TEXT = "Hello\n\n{{ postal_address }}\nUnsubscribe: {{ unsubscribe_url }}\n"


def test_a_compliant_template_has_no_problems() -> None:
    assert check_marketing_template(GOOD_HTML, GOOD_TEXT) == []
    assert check_marketing_template(GOOD_HTML, None) == []


@pytest.mark.parametrize(
    "html",
    [
        '<a href="{{unsubscribe_url}}">x</a> {{postal_address}}',
        "<a class=u href='{{ unsubscribe_url }}'>x</a> {{ postal_address|e }}",
        '<a\n  href = "{{- unsubscribe_url -}}">x</a><p>{{ postal_address }}</p>',
    ],
)
def test_merge_tag_spellings_are_recognised(html: str) -> None:
    assert check_marketing_template(html, None) == []


def test_the_literal_configured_address_counts() -> None:
    html = (
        "<p>Acme Inc.<br>1 Main Street,   Springfield, 12345</p>"
        '<a href="{{ unsubscribe_url }}">unsubscribe</a>'
    )
    assert check_marketing_template(html, None, postal_address=ADDRESS) == []
    assert len(check_marketing_template(html, None)) == 1


def test_a_missing_address_is_reported() -> None:
    problems = check_marketing_template('<a href="{{ unsubscribe_url }}">u</a>', None)
    assert len(problems) == 1 and "postal address" in problems[0]


def test_an_unsubscribe_url_that_is_not_a_link_does_not_count() -> None:
    problems = check_marketing_template("{{ postal_address }} Visit {{ unsubscribe_url }}", None)
    assert len(problems) == 1 and "unsubscribe" in problems[0]


def test_commented_out_footers_do_not_count() -> None:
    html = '<!-- {{ postal_address }} <a href="{{ unsubscribe_url }}">u</a> -->'
    assert len(check_marketing_template(html, None)) == 2
    jinja_comment = '{# {{ postal_address }} #}<a href="{{ unsubscribe_url }}">u</a>'
    assert len(check_marketing_template(jinja_comment, None)) == 1


def test_the_text_part_is_checked_when_authored() -> None:
    problems = check_marketing_template(GOOD_HTML, "Hello, no footer here")
    assert len(problems) == 2
    assert all(p.startswith("the text part") for p in problems)


def test_saving_a_non_compliant_template_raises_a_compliance_error() -> None:
    with pytest.raises(ComplianceError) as raised:
        require_marketing_template("<p>Buy now</p>", None)
    assert "postal address" in str(raised.value) and "unsubscribe" in str(raised.value)
    require_marketing_template(GOOD_HTML, GOOD_TEXT)
