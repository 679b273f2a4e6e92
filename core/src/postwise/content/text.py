"""HTML to plain text, for the text alternative of templates that do not author one.

The conversion runs once per template version, on HTML whose Jinja tokens are hidden behind
placeholder words (see :mod:`postwise.content.markup`), so its result is itself a template: the
text part is then rendered per message like any other, without re-parsing HTML.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

__all__ = ["html_to_text"]

_SKIPPED = frozenset({"head", "style", "script", "title", "template"})
_PARAGRAPH = frozenset(
    {"p", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol", "blockquote", "pre", "dl"}
)
_LINE = frozenset(
    {"div", "tr", "li", "section", "article", "header", "footer", "center", "dt", "dd", "address"}
)
_SPACE = re.compile(r"[ \t\r\n\f\v]+")
_BLANK_LINES = re.compile(r"\n{3,}")


class _TextBuilder(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip_depth = 0
        self._pre_depth = 0
        self._link_href: str | None = None
        self._link_start = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIPPED:
            self._skip_depth += 1
            return
        if self._skip_depth:
            return
        if tag == "br":
            self.parts.append("\n")
        elif tag == "hr":
            self._break(2)
            self.parts.append("-" * 40)
            self._break(2)
        elif tag in _PARAGRAPH:
            self._break(2)
            if tag == "pre":
                self._pre_depth += 1
        elif tag in _LINE:
            self._break(1)
            if tag == "li":
                self.parts.append("- ")
        elif tag in ("td", "th"):
            if not self._at_space():
                self.parts.append(" ")
        elif tag == "a":
            self._link_href = (dict(attrs).get("href") or "").strip()
            self._link_start = len(self.parts)
        elif tag == "img":
            alt = _SPACE.sub(" ", dict(attrs).get("alt") or "").strip()
            if alt:
                self.parts.append(alt if self._at_space() else f" {alt}")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in ("br", "hr", "img"):
            self.handle_endtag(tag)

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED:
            self._skip_depth = max(0, self._skip_depth - 1)
            return
        if self._skip_depth:
            return
        if tag in _PARAGRAPH:
            self._break(2)
            if tag == "pre":
                self._pre_depth = max(0, self._pre_depth - 1)
        elif tag in _LINE:
            self._break(1)
        elif tag == "a" and self._link_href is not None:
            self._close_link(self._link_href)
            self._link_href = None

    def _break(self, lines: int) -> None:
        """End the current line, leaving ``lines - 1`` blank lines unless already there."""
        have = 0
        for part in reversed(self.parts):
            stripped = part.strip(" ")
            if stripped.strip("\n"):
                have += len(stripped) - len(stripped.rstrip("\n"))
                break
            have += stripped.count("\n")
        else:
            return  # nothing written yet: no leading blank lines
        if have < lines:
            self.parts.append("\n" * (lines - have))

    def _close_link(self, href: str) -> None:
        if not href or href.startswith("#"):
            return
        label = "".join(self.parts[self._link_start :]).strip()
        shown = href[7:] if href.lower().startswith("mailto:") else href
        if label == shown:
            return
        self.parts.append(f" ({href})" if label else href)

    def handle_data(self, data: str) -> None:
        if self._skip_depth:
            return
        if self._pre_depth:
            self.parts.append(data)
            return
        text = _SPACE.sub(" ", data)
        if text.startswith(" ") and self._at_space():
            text = text[1:]
        if text:
            self.parts.append(text)

    def _at_space(self) -> bool:
        """Whether the output so far is empty or ends with a space or line break."""
        for part in reversed(self.parts):
            if part:
                return part[-1] in " \n"
        return True


def html_to_text(html: str) -> str:
    """A readable plain-text rendering of ``html``: paragraphs, lists, ``label (url)`` links."""
    builder = _TextBuilder()
    builder.feed(html)
    builder.close()
    lines = [line.rstrip(" ") for line in "".join(builder.parts).split("\n")]
    text = _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip("\n")
    return text + "\n" if text else ""
