"""The content layer: templates, rendering, link tracking and generated text parts.

Typical use on the send path::

    cache = TemplateCache(assets=AssetConfig("https://cdn.example.com", {"www.example.com"}))
    compiled = cache.get(TemplateSource(id=7, version=3, subject=..., html=...))
    content = compiled.render(contact, message_id=mid, segments=segs, recommender=rec,
                              unsubscribe_url=url, tracking=TrackingConfig(base, key))
"""

from __future__ import annotations

from postwise.content.links import AssetConfig, TrackingConfig
from postwise.content.recommendations import RecommenderFn
from postwise.content.render import CompiledTemplate, RenderedContent, TemplateCache
from postwise.content.templates import (
    Problem,
    TemplateKind,
    TemplateSource,
    assert_valid_template,
    validate_template,
)
from postwise.content.text import html_to_text

__all__ = [
    "AssetConfig",
    "CompiledTemplate",
    "Problem",
    "RecommenderFn",
    "RenderedContent",
    "TemplateCache",
    "TemplateKind",
    "TemplateSource",
    "TrackingConfig",
    "assert_valid_template",
    "html_to_text",
    "validate_template",
]
