from __future__ import annotations

import re
from html.parser import HTMLParser
from typing import Any

import pytest

from postwise.content import AssetConfig, TemplateCache, TemplateSource, TrackingConfig
from postwise.errors import ConfigurationError
from postwise.tokens import InvalidToken, Purpose, verify

KEY = b"tracking-test-key-0123456789abcdef"
BASE = "https://t.example.com"
UNSUB = "https://t.example.com/u/unsub-token"
TRACKING = TrackingConfig(BASE, KEY, ttl=3600)

HTML = """<html><body>
<p><a href="https://www.example.com/pricing?plan=pro&amp;ref=mail">Pricing</a></p>
<p><a href="https://www.example.com/pricing?plan=pro&amp;ref=mail">Pricing again</a></p>
<p><a href="mailto:help@example.com">Mail us</a> <a href="tel:+4930123">Call</a>
<a href="#top">Top</a> <a href="https://www.example.com/private" data-pw-notrack>Private</a></p>
{% for item in recommendations(2) %}
<p><a href="{{ item.url }}">{{ item.title }}</a></p>
{% endfor %}
<p><a href="https://www.example.com/u/{{ first_name }}?x=1&amp;y=2">Profile</a></p>
<p><a href="mailto:{{ first_name }}@example.com">Yourself</a></p>
<p><a href="{{ unsubscribe_url }}">Unsubscribe</a></p>
</body></html>"""


def shop(contact_id: int | str, n: int) -> list[dict[str, Any]]:
    items = [("p1", "Kettle"), ("p2", "Teapot"), ("p3", "Mugs")]
    return [
        {
            "id": pid,
            "title": title,
            "url": f"https://shop.example.com/{pid}?c={contact_id}&s=mail",
            "image_url": None,
        }
        for pid, title in items[:n]
    ]


class Anchors(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.anchors: list[dict[str, str | None]] = []
        self.images: list[dict[str, str | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.anchors.append(dict(attrs))
        elif tag == "img":
            self.images.append(dict(attrs))


def parse(html: str) -> Anchors:
    parser = Anchors()
    parser.feed(html)
    return parser


def click_target(url: str, message_id: str = "msg-1") -> str:
    match = re.fullmatch(re.escape(BASE) + r"/t/c/([A-Za-z0-9_-]+)", url)
    assert match, url
    payload = verify(Purpose.CLICK, match.group(1), keys=[KEY])
    assert payload["m"] == message_id
    return str(payload["u"])


def rendered(tracking: TrackingConfig | None = TRACKING, html: str = HTML, **kw: Any) -> Any:
    src = TemplateSource(id="links", version=1, subject="s", html=html)
    cache = TemplateCache(assets=kw.pop("assets", None))
    return cache.get(src).render(
        {"id": 5, "first_name": "ann"},
        message_id="msg-1",
        recommender=shop,
        unsubscribe_url=UNSUB,
        tracking=tracking,
    )


def test_static_and_merged_links_point_to_signed_click_urls_for_their_targets() -> None:
    hrefs = [a["href"] or "" for a in parse(rendered().html).anchors]

    targets = [click_target(h) for h in hrefs if h.startswith(BASE + "/t/c/")]

    assert targets == [
        "https://www.example.com/pricing?plan=pro&ref=mail",
        "https://www.example.com/pricing?plan=pro&ref=mail",
        "https://shop.example.com/p1?c=5&s=mail",
        "https://shop.example.com/p2?c=5&s=mail",
        "https://www.example.com/u/ann?x=1&y=2",
    ]


def test_mailto_tel_anchor_unsubscribe_and_opted_out_links_are_left_alone() -> None:
    anchors = parse(rendered().html).anchors
    untracked = [a["href"] for a in anchors if not (a["href"] or "").startswith(BASE + "/t/c/")]

    assert untracked == [
        "mailto:help@example.com",
        "tel:+4930123",
        "#top",
        "https://www.example.com/private",
        "mailto:ann@example.com",
        UNSUB,
    ]
    assert all("data-pw-notrack" not in a for a in anchors)


def test_the_open_pixel_carries_an_open_token_for_the_message_before_body_end() -> None:
    html = rendered().html
    pixel = parse(html).images[-1]
    match = re.fullmatch(re.escape(BASE) + r"/t/o/([A-Za-z0-9_-]+)\.gif", pixel["src"] or "")

    assert match
    assert verify(Purpose.OPEN, match.group(1), keys=[KEY]) == {"m": "msg-1"}
    assert pixel["width"] == "1"
    assert pixel["height"] == "1"
    assert html.index("/t/o/") < html.index("</body>")
    with pytest.raises(InvalidToken):
        verify(Purpose.CLICK, match.group(1), keys=[KEY])


def test_the_generated_text_part_uses_the_same_tracked_links_and_no_pixel() -> None:
    out = rendered()
    html_links = {a["href"] for a in parse(out.html).anchors}
    text_links = set(re.findall(r"https://t\.example\.com/t/c/[A-Za-z0-9_-]+", out.text))

    assert len(text_links) == 4
    assert text_links <= html_links
    assert "/t/o/" not in out.text
    assert f"Unsubscribe ({UNSUB})" in out.text


def test_without_tracking_links_keep_their_targets_and_there_is_no_pixel() -> None:
    out = rendered(tracking=None)
    hrefs = [a["href"] for a in parse(out.html).anchors]

    assert hrefs[:2] == ["https://www.example.com/pricing?plan=pro&ref=mail"] * 2
    assert "https://shop.example.com/p1?c=5&s=mail" in hrefs
    assert "/t/" not in out.html.replace(UNSUB, "")
    assert parse(out.html).images == []


def test_click_and_open_tracking_can_be_switched_off_separately() -> None:
    opens_only = rendered(TrackingConfig(BASE, KEY, clicks=False))
    clicks_only = rendered(TrackingConfig(BASE, KEY, opens=False))

    assert "/t/c/" not in opens_only.html
    assert "/t/o/" in opens_only.html
    assert "/t/c/" in clicks_only.html
    assert "/t/o/" not in clicks_only.html


def test_each_message_gets_its_own_tokens() -> None:
    src = TemplateSource(
        id="x",
        version=1,
        subject="s",
        html='<a href="https://a.example/">a</a>{{ unsubscribe_url }}',
    )
    compiled = TemplateCache().get(src)

    first = compiled.render({"id": 1}, message_id="m-1", unsubscribe_url=UNSUB, tracking=TRACKING)
    second = compiled.render({"id": 2}, message_id="m-2", unsubscribe_url=UNSUB, tracking=TRACKING)

    first_href = parse(first.html).anchors[0]["href"] or ""
    second_href = parse(second.html).anchors[0]["href"] or ""
    assert click_target(first_href, "m-1") == click_target(second_href, "m-2")
    assert first_href != second_href


ASSET_HTML = """<body>
<img src="/img/logo.png" alt="logo">
<img src="images/hero.jpg">
<img src="https://static.example.com/a/b.png?v=2">
<img src="https://other.example.org/c.png">
<img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=">
<img src="/products/{{ first_name }}.png">
<img src="{{ first_name }}">
<table background="/bg/paper.png"><tr><td>x</td></tr></table>
{{ unsubscribe_url }}
</body>"""


def test_asset_urls_that_are_relative_or_on_an_asset_host_move_to_the_cdn() -> None:
    assets = AssetConfig("https://cdn.example.net/", frozenset({"STATIC.example.com"}))

    html = rendered(tracking=None, html=ASSET_HTML, assets=assets).html
    sources = [img["src"] for img in parse(html).images]

    assert sources == [
        "https://cdn.example.net/img/logo.png",
        "https://cdn.example.net/images/hero.jpg",
        "https://cdn.example.net/a/b.png?v=2",
        "https://other.example.org/c.png",
        "data:image/gif;base64,R0lGODlhAQABAAAAACw=",
        "https://cdn.example.net/products/ann.png",
        "ann",
    ]
    assert 'background="https://cdn.example.net/bg/paper.png"' in html


def test_asset_urls_stay_as_authored_without_a_cdn() -> None:
    html = rendered(tracking=None, html=ASSET_HTML).html

    assert parse(html).images[0]["src"] == "/img/logo.png"


@pytest.mark.parametrize("base", ["t.example.com", "ftp://t.example.com", "https://t.ex ample"])
def test_a_tracking_base_must_be_an_http_url(base: str) -> None:
    with pytest.raises(ConfigurationError, match="must be an http"):
        TrackingConfig(base, KEY)
