from __future__ import annotations

from postwise.content import html_to_text


def test_paragraphs_headings_and_breaks_become_lines() -> None:
    html = "<h1>Title</h1><p>First   paragraph\nwrapped</p><p>Line<br>break</p>"

    assert html_to_text(html) == "Title\n\nFirst paragraph wrapped\n\nLine\nbreak\n"


def test_lists_tables_and_rules_read_naturally() -> None:
    html = (
        "<ul><li>one</li><li>two</li></ul>"
        "<table><tr><td>a</td><td>b</td></tr><tr><td>c</td></tr></table><hr><div>end</div>"
    )

    assert html_to_text(html) == "- one\n- two\n\na b\nc\n\n" + "-" * 40 + "\n\nend\n"


def test_links_show_their_target_unless_the_label_already_is_it() -> None:
    html = (
        '<p><a href="https://example.com/a">Read more</a> '
        '<a href="https://example.com/b">https://example.com/b</a> '
        '<a href="mailto:help@example.com">help@example.com</a> '
        '<a href="#top">Top</a> '
        '<a href="https://example.com/c"><img src="x.png" alt="Logo"></a></p>'
    )

    assert html_to_text(html) == (
        "Read more (https://example.com/a) https://example.com/b help@example.com Top "
        "Logo (https://example.com/c)\n"
    )


def test_head_style_and_script_content_is_dropped_and_entities_decoded() -> None:
    html = (
        "<html><head><title>T</title><style>p {color: red}</style></head><body>"
        "<script>alert(1)</script><p>Fish &amp; chips &lt;3 &eacute;</p></body></html>"
    )

    assert html_to_text(html) == "Fish & chips <3 é\n"


def test_preformatted_text_keeps_its_spacing() -> None:
    assert html_to_text("<pre>a  b\n  c</pre>") == "a  b\n  c\n"


def test_empty_html_gives_empty_text() -> None:
    assert html_to_text("<html><head><title>x</title></head><body> </body></html>") == ""
