"""CAN-SPAM checks on marketing templates, run when a template is saved.

A commercial message must carry the sender's valid physical postal address and a working way to
opt out (15 U.S.C. 7704(a)(3) and (a)(5)). A marketing template is rejected when saved unless

* it shows the postal address: the merge tag ``{{ postal_address }}`` (filled from the
  ``postal_address`` setting) or the configured address written out literally; and
* it links to ``{{ unsubscribe_url }}``: in the HTML part as a link target (``href``), in the
  text part anywhere. An unsubscribe link that is merely mentioned in HTML text is not
  clickable, so it does not count.

Transactional templates are exempt (the rules cover commercial messages only).
"""

from __future__ import annotations

import re
from html import unescape

from postwise.errors import ComplianceError

__all__ = ["check_marketing_template", "require_marketing_template"]

_POSTAL_TAG = re.compile(r"\{\{-?\s*postal_address\s*(\|[^}]*)?-?\}\}")
_UNSUBSCRIBE_TAG = r"\{\{-?\s*unsubscribe_url\s*(?:\|[^}]*)?-?\}\}"
_UNSUBSCRIBE_ANY = re.compile(_UNSUBSCRIBE_TAG)
_UNSUBSCRIBE_HREF = re.compile(
    r"""<a\b[^>]*?\bhref\s*=\s*(?:"\s*"""
    + _UNSUBSCRIBE_TAG
    + r"""\s*"|'\s*"""
    + _UNSUBSCRIBE_TAG
    + r"""\s*'|"""
    + _UNSUBSCRIBE_TAG
    + r")",
    re.I | re.S,
)
_COMMENT = re.compile(r"<!--.*?-->|\{#.*?#\}", re.S)
_TAGS = re.compile(r"<[^>]+>")
_SPACE = re.compile(r"\s+")


def _visible(html: str) -> str:
    """The text a reader sees: comments and tags removed, entities decoded, spaces collapsed."""
    return _SPACE.sub(" ", unescape(_TAGS.sub(" ", _COMMENT.sub(" ", html)))).strip()


def _normalised(text: str) -> str:
    return _SPACE.sub(" ", text.replace(",", " ").lower()).strip()


def _has_postal(source: str, *, visible: str, postal_address: str | None) -> bool:
    if _POSTAL_TAG.search(source):
        return True
    if postal_address and postal_address.strip():
        return _normalised(postal_address) in _normalised(visible)
    return False


def check_marketing_template(
    html: str, text: str | None, *, postal_address: str | None = None
) -> list[str]:
    """Problems that keep a marketing template from being saved; empty when it complies.

    ``postal_address`` is the configured address (``settings.postal_address``); when given, the
    address written out literally also counts. ``text`` may be ``None`` when the text part is
    generated from the HTML, and then only the HTML is checked.
    """
    problems: list[str] = []
    html = html or ""
    html_code = _COMMENT.sub(" ", html)
    if not _has_postal(html_code, visible=_visible(html), postal_address=postal_address):
        problems.append(
            "the HTML part must show the sender's postal address: add {{ postal_address }} "
            "(CAN-SPAM requires a valid physical postal address in marketing mail)"
        )
    if not _UNSUBSCRIBE_HREF.search(html_code):
        problems.append(
            'the HTML part must link to the unsubscribe page: add <a href="{{ unsubscribe_url }}">'
            "unsubscribe</a> (CAN-SPAM requires a working opt-out in marketing mail)"
        )
    if text is not None and text.strip():
        text_code = _COMMENT.sub(" ", text)
        if not _has_postal(text_code, visible=text_code, postal_address=postal_address):
            problems.append("the text part must show the postal address: add {{ postal_address }}")
        if not _UNSUBSCRIBE_ANY.search(text_code):
            problems.append(
                "the text part must contain the unsubscribe link: add {{ unsubscribe_url }}"
            )
    return problems


def require_marketing_template(
    html: str, text: str | None, *, postal_address: str | None = None
) -> None:
    """Raise ComplianceError listing every problem :func:`check_marketing_template` finds."""
    problems = check_marketing_template(html, text, postal_address=postal_address)
    if problems:
        raise ComplianceError("marketing template rejected: " + "; ".join(problems))
