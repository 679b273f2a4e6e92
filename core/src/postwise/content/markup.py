"""Hide Jinja syntax from HTML tools and bring it back afterwards.

premailer (lxml) and the HTML parser behind link rewriting and text generation do not know
Jinja: ``{% if %}`` between table rows, ``{{ url }}`` inside an ``href`` or a quote inside a
filter argument would be moved, escaped or split. So before the HTML of a template version is
processed, every Jinja token is replaced by an inert placeholder word (letters and digits only,
which survive HTML parsing, serialisation and CSS parsing unchanged), and the tokens are put
back once the HTML work is done. Processing can add Jinja code of its own (tracking
expressions) through :meth:`JinjaShield.add`.
"""

from __future__ import annotations

import re

__all__ = ["JinjaShield"]

# A Jinja token, matched the way the Jinja lexer delimits it: quoted strings inside a tag may
# contain the closing delimiter; raw blocks are kept whole.
_JINJA_TOKEN = re.compile(
    r"""
      \{%-?\s*raw\s*-?%\}.*?\{%-?\s*endraw\s*-?%\}
    | \{\#.*?\#\}
    | \{\{(?:[^}'"]|'(?:\\.|[^'\\])*'|"(?:\\.|[^"\\])*"|\}(?!\}))*\}\}
    | \{%(?:[^%'"]|'(?:\\.|[^'\\])*'|"(?:\\.|[^"\\])*"|%(?!\}))*%\}
    """,
    re.DOTALL | re.VERBOSE,
)


class JinjaShield:
    """Placeholders for the Jinja tokens of one template source."""

    def __init__(self, source: str) -> None:
        prefix = "pwjq"
        # The prefix must not occur in the source, or static text would be mistaken for a token.
        while prefix in source:
            prefix += "q"
        self._prefix = prefix
        self._tokens: list[str] = []
        self._pattern = re.compile(re.escape(prefix) + r"(\d+)z")

    def hide(self, source: str) -> str:
        """``source`` with every Jinja token replaced by a placeholder."""
        return _JINJA_TOKEN.sub(lambda m: self.add(m.group(0)), source)

    def add(self, jinja_code: str) -> str:
        """Register ``jinja_code`` and return the placeholder that stands for it."""
        self._tokens.append(jinja_code)
        return f"{self._prefix}{len(self._tokens) - 1}z"

    def reveal(self, text: str) -> str:
        """``text`` with every placeholder replaced by the Jinja code it stands for."""
        return self._pattern.sub(lambda m: self._tokens[int(m.group(1))], text)

    def is_dynamic(self, text: str) -> bool:
        """Whether ``text`` contains a placeholder."""
        return self._prefix in text

    def static_prefix(self, text: str) -> str:
        """The part of ``text`` before its first placeholder."""
        match = self._pattern.search(text)
        return text if match is None else text[: match.start()]

    def statements(self, text: str) -> list[str]:
        """The ``{% ... %}`` tokens behind the placeholders of ``text``, in order."""
        found = (self._tokens[int(m.group(1))] for m in self._pattern.finditer(text))
        return [token for token in found if token.startswith("{%")]

    def code(self, text: str) -> str | None:
        """The Jinja code if ``text`` is exactly one placeholder (spaces around allowed)."""
        match = self._pattern.fullmatch(text.strip())
        return None if match is None else self._tokens[int(match.group(1))]
