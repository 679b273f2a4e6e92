"""Compiled templates, cached per version, and rendering a message for one contact.

Everything that does not depend on the contact happens once per template version in
:func:`compile_template`: CSS inlining (premailer, the costliest step), link and asset rewriting,
generating the text part from the HTML, and compiling the three parts with Jinja. Rendering a
message is then three sandboxed Jinja renders plus one signed token per link the message
contains.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import jinja2
from jinja2 import Template

from postwise.content.limits import (
    DEFAULT_LIMITS,
    RenderLimits,
    TemplateLimitError,
    budget_scope,
    stream,
)
from postwise.content.links import (
    AssetConfig,
    LinkTracker,
    TrackingConfig,
    insert_open_pixel,
    rewrite_html,
)
from postwise.content.markup import JinjaShield
from postwise.content.recommendations import RecommenderFn, bind_recommendations
from postwise.content.templates import Part, TemplateKind, TemplateSource, compile_part
from postwise.content.text import html_to_text
from postwise.errors import ComplianceError, ConflictError, PostwiseError, TemplateError

__all__ = [
    "CompiledTemplate",
    "RenderedContent",
    "TemplateCache",
    "compile_template",
]

# Static text of a generated text part that would read as Jinja syntax ("{{" from "&#123;{").
_BRACE = re.compile(r"\{(?=[{%#])")
_RENDER_ERRORS = (jinja2.TemplateError, ArithmeticError, LookupError, TypeError, ValueError)


@dataclass(frozen=True, slots=True)
class RenderedContent:
    """The personalised parts of one message; ``text`` is always present."""

    subject: str
    html: str
    text: str


class CompiledTemplate:
    """A template version ready to render many messages. Build it with :class:`TemplateCache`."""

    __slots__ = (
        "_collapse_blank_lines",
        "_globals",
        "_html",
        "_limits",
        "_links",
        "_subject",
        "_text",
        "source",
    )

    def __init__(
        self,
        source: TemplateSource,
        *,
        subject: Template,
        html: Template,
        text: Template,
        links: tuple[str, ...],
        collapse_blank_lines: bool,
        limits: RenderLimits = DEFAULT_LIMITS,
    ) -> None:
        self.source = source
        self._limits = limits
        self._collapse_blank_lines = collapse_blank_lines
        self._subject = subject
        self._html = html
        self._text = text
        self._links = links
        self._globals = dict(html.globals)

    def render(
        self,
        contact: Mapping[str, Any],
        *,
        message_id: str,
        segments: Iterable[str] = (),
        recommender: RecommenderFn | None = None,
        unsubscribe_url: str | None = None,
        tracking: TrackingConfig | None = None,
    ) -> RenderedContent:
        """Render the message for ``contact``.

        ``contact`` fields are available by name and as ``contact``; ``segments`` are the names
        of the segments the contact belongs to; ``recommender`` answers ``recommendations(n)``
        for ``contact["id"]``. With ``tracking``, links and the open pixel carry tokens bound
        to ``message_id``. Marketing templates need ``unsubscribe_url``.
        """
        if self.source.kind is TemplateKind.MARKETING and not unsubscribe_url:
            raise ComplianceError(
                f"template {self.source.id!r} is marketing mail and needs an unsubscribe_url"
            )
        context = self._globals.copy()
        context.update(contact)
        context["contact"] = contact
        # A lone name is one segment, not a set of letters.
        context["segments"] = frozenset((segments,) if isinstance(segments, str) else segments)
        context["recommendations"] = bind_recommendations(recommender, contact.get("id"))
        context["unsubscribe_url"] = unsubscribe_url or ""
        tracker = LinkTracker(
            self._links, message_id=message_id, tracking=tracking, unsubscribe_url=unsubscribe_url
        )
        context["_pw"] = tracker
        context["_pw_open"] = tracker.open_pixel
        try:
            with budget_scope(self._limits):
                subject = _render(self._subject, context)
                html = _render(self._html, context)
                text = _render(self._text, context)
        except PostwiseError:
            raise
        except RecursionError as exc:
            raise TemplateLimitError(
                f"template {self.source.id!r} version {self.source.version} calls its macros or "
                "recursive loops too deeply; give the recursion an end"
            ) from exc
        except _RENDER_ERRORS as exc:
            raise TemplateError(
                f"template {self.source.id!r} version {self.source.version} failed to render "
                f"for contact {contact.get('id')!r}: {exc}"
            ) from exc
        if self._collapse_blank_lines:
            # Blocks of the HTML that rendered empty leave runs of blank lines in generated text
            # (str.replace: a regular expression here cost as much as rendering the text).
            while "\n\n\n" in text:
                text = text.replace("\n\n\n", "\n\n")
        return RenderedContent(subject=subject, html=html, text=text)


def _render(template: Template, context: dict[str, Any]) -> str:
    # Template.render copies the context and merges the globals on every call; the three parts
    # of a message share one context that already holds the globals, so they render from it
    # directly (a shared context is read-only to the template: `set` writes to its own scope).
    # The output is counted as it streams: the render's budget refuses it past its limit.
    return stream(template.root_render_func(template.new_context(context, shared=True)))


def compile_template(
    source: TemplateSource,
    *,
    assets: AssetConfig | None = None,
    limits: RenderLimits = DEFAULT_LIMITS,
) -> CompiledTemplate:
    """Do all per-version work for ``source``: inline CSS, rewrite URLs, compile the parts."""
    name = f"template {source.id!r} version {source.version}"
    # Compiling the author's sources first reports syntax errors with their own line numbers.
    subject = compile_part(Part.SUBJECT, source.subject, name=name)
    compile_part(Part.HTML, source.html, name=name)
    text = None if source.text is None else compile_part(Part.TEXT, source.text, name=name)

    shield = JinjaShield(source.html)
    protected = shield.hide(source.html)
    if "<style" in protected.lower():
        inlined = _inline_css(protected, name=name)
        # Blocks inside <style> are parsed as CSS and vanish; a template that silently lost
        # its conditional styles (or half of an if/endif pair) must not be sent.
        if shield.statements(inlined) != shield.statements(protected):
            raise TemplateError(
                f"{name}: template tags such as {{% if %}} inside <style> cannot be kept when "
                "the CSS is inlined; put the condition around elements or style attributes",
                field=str(Part.HTML),
            )
        protected = inlined
    protected, links = rewrite_html(protected, shield, assets=assets)
    generated_text = text is None
    if text is None:
        generated = _BRACE.sub("{{ '{' }}", _one_block_per_line(html_to_text(protected), shield))
        text = compile_part(Part.TEXT, shield.reveal(generated), name=name)
    protected = insert_open_pixel(protected, shield)
    html = compile_part(Part.HTML, shield.reveal(protected), name=name)
    return CompiledTemplate(
        source,
        subject=subject,
        html=html,
        text=text,
        links=links,
        collapse_blank_lines=generated_text,
        limits=limits,
    )


def _one_block_per_line(text: str, shield: JinjaShield) -> str:
    """Split lines made only of block tags (``{% endif %} {% for ... %}``) into one per line.

    A block tag alone on its line vanishes with its line break when rendered (trim_blocks),
    while the space between two tags on one line would be printed.
    """
    lines: list[str] = []
    for line in text.split("\n"):
        words = line.split()
        if len(words) > 1 and all((shield.code(w) or "").startswith("{%") for w in words):
            lines.extend(words)
        else:
            lines.append(line)
    return "\n".join(lines)


def _inline_css(html: str, *, name: str) -> str:
    import premailer

    try:
        return str(
            premailer.Premailer(
                html,
                allow_network=False,
                allow_loading_external_files=False,
                disable_validation=True,
                cssutils_logging_level=logging.CRITICAL,
            ).transform()
        )
    except Exception as exc:  # premailer raises bare Exceptions and lxml/cssutils errors
        raise TemplateError(
            f"{name}: CSS could not be inlined ({exc}); use <style> blocks, not linked "
            "stylesheets, and check the CSS syntax",
            field=str(Part.HTML),
        ) from exc


class TemplateCache:
    """Compiled templates by ``(id, version)``, least recently used evicted beyond a bound.

    Safe to share between threads. A version is immutable: getting a source whose content
    differs from the cached one for the same ``(id, version)`` raises
    :class:`postwise.errors.ConflictError`.
    """

    def __init__(
        self,
        *,
        assets: AssetConfig | None = None,
        limits: RenderLimits = DEFAULT_LIMITS,
        max_entries: int = 512,
    ) -> None:
        self._assets = assets
        self._limits = limits
        self._max_entries = max_entries
        self._entries: OrderedDict[tuple[int | str, int], CompiledTemplate] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, source: TemplateSource) -> CompiledTemplate:
        """The compiled form of ``source``, compiling it on first use."""
        key = (source.id, source.version)
        with self._lock:
            compiled = self._entries.get(key)
            if compiled is not None:
                self._entries.move_to_end(key)
        if compiled is None:
            compiled = compile_template(source, assets=self._assets, limits=self._limits)
            with self._lock:
                compiled = self._entries.setdefault(key, compiled)
                while len(self._entries) > self._max_entries:
                    self._entries.popitem(last=False)
        if compiled.source != source:
            raise ConflictError(
                f"template {source.id!r} version {source.version} changed without a new "
                "version number; save changes as a new version"
            )
        return compiled

    def __len__(self) -> int:
        return len(self._entries)
