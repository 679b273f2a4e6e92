"""The one way postwise renders a page for a recipient (not an API client).

The pages behind links in email — unsubscribe, consent confirmation and withdrawal, a tracking
link that is no longer valid — are small, self-contained HTML: no script, no external resource,
never cached, never indexed, no referrer, and a form that can post only back to postwise. Text is
escaped; callers pass plain text, never markup.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence

from litestar import MediaType, Response
from litestar.openapi import ResponseSpec

__all__ = ["INVALID_LINK_RESPONSES", "PAGE_HEADERS", "invalid_link_page", "page"]

PAGE_HEADERS: Mapping[str, str] = {
    "Cache-Control": "no-store, no-cache, must-revalidate, private, max-age=0",
    "Pragma": "no-cache",
    "Expires": "0",
    "Referrer-Policy": "no-referrer",
    "X-Robots-Tag": "noindex, nofollow",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'"
    ),
}

#: The page a bad, tampered or expired token gets, for a route's ``responses`` (OpenAPI).
INVALID_LINK_RESPONSES = {
    404: ResponseSpec(
        data_container=str,
        media_type=MediaType.HTML,
        description="The token is invalid, tampered with or expired: an HTML page saying so.",
        generate_examples=False,
    )
}

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:32rem;margin:4rem auto;padding:0 1rem;"
    "line-height:1.5}h1{font-size:1.4em}button{font-size:1rem;padding:.6rem 1.2rem;cursor:pointer}"
)


def page(
    title: str,
    *paragraphs: str,
    status_code: int = 200,
    button: str | None = None,
    action: str = "",
    fields: Sequence[tuple[str, str]] = (),
) -> Response[str]:
    """An HTML page: ``title``, the ``paragraphs``, and with ``button`` a form that POSTs
    ``fields`` (hidden inputs) to ``action`` (default: the page's own address)."""
    body = "".join(f"<p>{html.escape(text)}</p>" for text in paragraphs)
    if button is not None:
        target = f' action="{html.escape(action)}"' if action else ""
        hidden = "".join(
            f'<input type="hidden" name="{html.escape(name)}" value="{html.escape(value)}">'
            for name, value in fields
        )
        body += (
            f'<form method="post"{target}>{hidden}'
            f'<button type="submit">{html.escape(button)}</button></form>'
        )
    document = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="robots" content="noindex">'
        f"<title>{html.escape(title)}</title><style>{_STYLE}</style></head>"
        f"<body><h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return Response(
        document, status_code=status_code, media_type=MediaType.HTML, headers=dict(PAGE_HEADERS)
    )


def invalid_link_page() -> Response[str]:
    """404 for a link whose token is missing, altered or expired."""
    return page(
        "This link is not valid",
        "The link is incomplete, altered or has expired. Please use the most recent email we "
        "sent you.",
        status_code=404,
    )
