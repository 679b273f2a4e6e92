"""Click tracking, the open pixel and CDN rewriting of asset URLs.

Rewriting happens once per template version, on HTML whose Jinja tokens are hidden
(:class:`postwise.content.markup.JinjaShield`):

* a static ``href`` becomes ``{{ _pw[i] }}``, its URL kept in a table of the compiled
  template, so a message only signs a token per link (item lookup, unlike a method call, costs
  no sandbox check);
* an ``href`` built from merge values (``{{ item.url }}``) is wrapped in
  ``{% filter _pw_track %}...{% endfilter %}`` and tracked once its URL is known;
* ``mailto:``, ``tel:``, other schemes, ``#anchors``, ``{{ unsubscribe_url }}`` and links marked
  ``data-pw-notrack`` are left alone (the marker attribute itself is removed);
* ``img src`` and ``background`` URLs that are relative or on a configured asset host are moved
  to the CDN base;
* ``{{ _pw_open }}`` (the open pixel) goes before ``</body>``.

Per message, :class:`LinkTracker` turns those expressions into
``<tracking base>/t/c/<token>`` and ``<tracking base>/t/o/<token>.gif``, where the tokens
(:mod:`postwise.tokens`) bind the message id, and for clicks the target URL.
"""

from __future__ import annotations

import html as htmllib
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from html.parser import HTMLParser
from typing import Any, Final

from jinja2 import pass_context
from jinja2.runtime import Context
from markupsafe import Markup, escape

from postwise.content.markup import JinjaShield
from postwise.errors import ConfigurationError
from postwise.tokens import Purpose, click_signer, sign

__all__ = [
    "AssetConfig",
    "LinkTracker",
    "TrackingConfig",
    "insert_open_pixel",
    "rewrite_html",
    "track_filter",
]

#: Attribute that opts a link out of click tracking.
NOTRACK_ATTRIBUTE: Final = "data-pw-notrack"

_SCHEME = re.compile(r"([a-zA-Z][a-zA-Z0-9+.-]*):")
_UNSUBSCRIBE = re.compile(r"\{\{-?\s*unsubscribe_url\s*-?\}\}")
_BODY_END = re.compile(r"</body\s*>", re.IGNORECASE)
_DEFAULT_TTL: Final = 90 * 86400.0


def _is_web_url(url: str) -> bool:
    return url[:8].lower().startswith(("http://", "https://"))


@dataclass(frozen=True, slots=True)
class TrackingConfig:
    """Where tracking links point and how their tokens are signed.

    ``base_url`` is the public URL of the tracking server (``https://t.example.com``); ``key``
    signs tokens (the first of the configured signing keys); ``ttl`` is how long, in seconds,
    links keep working.
    """

    base_url: str
    key: bytes
    ttl: float = _DEFAULT_TTL
    clicks: bool = True
    opens: bool = True

    def __post_init__(self) -> None:
        if not _is_web_url(self.base_url) or any(c in self.base_url for c in " \"'<>\r\n"):
            raise ConfigurationError(
                f"tracking base URL {self.base_url!r} must be an http(s) URL, "
                "e.g. https://t.example.com"
            )
        object.__setattr__(self, "base_url", self.base_url.rstrip("/"))


@dataclass(frozen=True, slots=True)
class AssetConfig:
    """Image URLs that are relative or on ``asset_hosts`` are rewritten to ``cdn_base``."""

    cdn_base: str
    asset_hosts: frozenset[str] = field(default_factory=frozenset)

    def __post_init__(self) -> None:
        if not _is_web_url(self.cdn_base):
            raise ConfigurationError(
                f"CDN base {self.cdn_base!r} must be an http(s) URL, e.g. https://cdn.example.com"
            )
        object.__setattr__(self, "cdn_base", self.cdn_base.rstrip("/"))
        object.__setattr__(self, "asset_hosts", frozenset(h.lower() for h in self.asset_hosts))


class LinkTracker:
    """Per-message tracking: signs tokens for the links a rendered message actually contains."""

    __slots__ = (
        "_cache",
        "_clicks",
        "_links",
        "_message_id",
        "_sign",
        "_unsubscribe_url",
        "open_pixel",
    )

    def __init__(
        self,
        links: tuple[str, ...],
        *,
        message_id: str,
        tracking: TrackingConfig | None,
        unsubscribe_url: str | None,
    ) -> None:
        self._links = links
        self._message_id = message_id
        self._clicks = tracking if tracking is not None and tracking.clicks else None
        self._unsubscribe_url = unsubscribe_url
        self._sign: Callable[[str], str] | None = None
        # The HTML and the generated text part share links; each is signed once per message.
        self._cache: dict[str, str] = {}
        #: The open-tracking ``<img>``, empty when open tracking is off.
        self.open_pixel = (
            _open_pixel(tracking, message_id)
            if tracking is not None and tracking.opens
            else Markup("")
        )

    def __getitem__(self, index: int) -> str:
        """The URL for static link ``index`` of the template: tracked when tracking is on."""
        url = self._links[index]
        if self._clicks is None:
            return url
        return self._cache.get(url) or self._click_url(self._clicks, url)

    def track(self, url: str) -> str:
        """The URL to put in place of a link whose target was computed while rendering."""
        if self._clicks is None or not _is_web_url(url) or url == self._unsubscribe_url:
            return url
        return self._cache.get(url) or self._click_url(self._clicks, url)

    def _click_url(self, tracking: TrackingConfig, url: str) -> str:
        if self._sign is None:
            self._sign = click_signer(self._message_id, key=tracking.key, ttl=tracking.ttl)
        tracked = f"{tracking.base_url}/t/c/{self._sign(url)}"
        self._cache[url] = tracked
        return tracked


def _open_pixel(tracking: TrackingConfig, message_id: str) -> Markup:
    token = sign(Purpose.OPEN, {"m": message_id}, key=tracking.key, ttl=tracking.ttl)
    return Markup(  # noqa: S704 - the only variable part is escaped
        f'<img src="{escape(f"{tracking.base_url}/t/o/{token}.gif")}" width="1" height="1" '
        'alt="" style="display:block;width:1px;height:1px;border:0" />'
    )


@pass_context
def track_filter(context: Context, value: Any) -> str:
    """``{% filter _pw_track %}``: track a link whose URL is only known while rendering."""
    tracker = context.get("_pw")
    if context.eval_ctx.autoescape:
        # The body of the filter block arrives HTML-escaped; the token must bind the real URL.
        url = htmllib.unescape(str(value)).strip()
        return escape(url if tracker is None else tracker.track(url))
    url = str(value).strip()
    return url if tracker is None else tracker.track(url)


def rewrite_html(
    protected_html: str, shield: JinjaShield, *, assets: AssetConfig | None
) -> tuple[str, tuple[str, ...]]:
    """Rewrite the links and asset URLs of ``protected_html``.

    Returns the new protected HTML and the table of static link URLs that ``_pw[i]`` refers
    to.
    """
    rewriter = _Rewriter(protected_html, shield, assets)
    rewriter.feed(protected_html)
    rewriter.close()
    return rewriter.apply(), tuple(rewriter.links)


def insert_open_pixel(protected_html: str, shield: JinjaShield) -> str:
    """``protected_html`` with the open-pixel expression before ``</body>`` (or at the end)."""
    pixel = shield.add("{{ _pw_open }}")
    ends = list(_BODY_END.finditer(protected_html))
    if not ends:
        return protected_html + pixel
    at = ends[-1].start()
    return protected_html[:at] + pixel + protected_html[at:]


class _Rewriter(HTMLParser):
    def __init__(self, source: str, shield: JinjaShield, assets: AssetConfig | None) -> None:
        super().__init__(convert_charrefs=True)
        self._source = source
        self._shield = shield
        self._assets = assets
        self._line_starts = [0] + [m.end() for m in re.finditer("\n", source)]
        self._edits: list[tuple[int, int, str]] = []
        self.links: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        changed = False
        new_attrs: list[tuple[str, str | None]] = []
        for name, value in attrs:
            if name == NOTRACK_ATTRIBUTE and tag in ("a", "area"):
                changed = True
                continue
            new_value = value
            if value is not None:
                if name == "href" and tag in ("a", "area") and not _has_notrack(attrs):
                    new_value = self._tracked_href(value)
                elif (name == "src" and tag == "img") or name == "background":
                    new_value = self._asset_url(value)
            changed = changed or new_value != value
            new_attrs.append((name, new_value))
        if changed:
            raw = self.get_starttag_text() or ""
            line, column = self.getpos()
            start = self._line_starts[line - 1] + column
            self._edits.append((start, start + len(raw), _serialise(tag, new_attrs, raw)))

    handle_startendtag = handle_starttag

    def apply(self) -> str:
        out: list[str] = []
        position = 0
        for start, end, replacement in self._edits:
            out.append(self._source[position:start])
            out.append(replacement)
            position = end
        out.append(self._source[position:])
        return "".join(out)

    def _tracked_href(self, value: str) -> str:
        url = value.strip()
        if not self._shield.is_dynamic(url):
            if not _is_web_url(url):
                return value
            self.links.append(url)
            return self._shield.add(f"{{{{ _pw[{len(self.links) - 1}] }}}}")
        code = self._shield.code(url)
        if code is not None and _UNSUBSCRIBE.fullmatch(code):
            return value
        prefix = self._shield.static_prefix(url).lstrip()
        scheme = _SCHEME.match(prefix)
        if prefix.startswith("#") or (scheme and scheme.group(1).lower() not in ("http", "https")):
            return value
        # The closing tag keeps its newline (+%}) so generated text lines are not joined.
        return (
            self._shield.add("{% filter _pw_track %}") + url + self._shield.add("{% endfilter +%}")
        )

    def _asset_url(self, value: str) -> str:
        if self._assets is None:
            return value
        url = value.strip()
        prefix = self._shield.static_prefix(url)
        if not url or url.startswith(("data:", "cid:", "#")):
            return value
        if url.startswith("//") or _SCHEME.match(url):
            rest = prefix.split("//", 1)[1] if "//" in prefix else ""
            if "/" not in rest:
                return value  # the host is not static (or there is no path): leave it
            host, path = rest.split("/", 1)
            if host.lower() not in self._assets.asset_hosts:
                return value
            return f"{self._assets.cdn_base}/{path}{url[len(prefix) :]}"
        if not prefix:
            return value  # starts with a merge value that may well be an absolute URL
        return f"{self._assets.cdn_base}/{url.lstrip('/')}"


def _has_notrack(attrs: Iterable[tuple[str, str | None]]) -> bool:
    return any(name == NOTRACK_ATTRIBUTE for name, _ in attrs)


def _serialise(tag: str, attrs: list[tuple[str, str | None]], raw: str) -> str:
    parts = [f"<{tag}"]
    for name, value in attrs:
        parts.append(f" {name}" if value is None else f' {name}="{htmllib.escape(value)}"')
    parts.append(" />" if raw.rstrip().endswith("/>") else ">")
    return "".join(parts)
