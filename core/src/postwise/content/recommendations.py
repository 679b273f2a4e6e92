"""The template side of recommendation blocks: ``{% for item in recommendations(4) %}``.

The recommender itself comes from the recommender registry (``postwise.recommend``); rendering
only sees a callable ``(contact_id, n) -> list[Mapping]``. This module binds it to the contact
being rendered, checks what it returns, and calls it at most once per ``n`` per message.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Final

from postwise.errors import TemplateError

__all__ = ["MAX_RECOMMENDATIONS", "REQUIRED_ITEM_KEYS", "RecommenderFn", "bind_recommendations"]

#: Upper bound on ``n``: a block is a handful of items, never a catalogue.
MAX_RECOMMENDATIONS: Final = 50

#: Keys every recommended item must have (values may be ``None`` for ``image_url``).
REQUIRED_ITEM_KEYS: Final = ("id", "title", "url", "image_url")

#: What rendering needs from a recommender: up to ``n`` items for a contact, best first.
RecommenderFn = Callable[[Any, int], Sequence[Mapping[str, Any]]]


def bind_recommendations(
    recommender: RecommenderFn | None, contact_id: Any
) -> Callable[[int], list[Mapping[str, Any]]]:
    """The ``recommendations(n)`` function a template sees while rendering one contact."""
    memo: dict[int, list[Mapping[str, Any]]] = {}

    def recommendations(n: int) -> list[Mapping[str, Any]]:
        if type(n) is not int or not 1 <= n <= MAX_RECOMMENDATIONS:
            raise TemplateError(
                f"recommendations(n) needs a whole number n from 1 to {MAX_RECOMMENDATIONS}, "
                f"got {n!r}"
            )
        if n in memo:
            return memo[n]
        if recommender is None:
            raise TemplateError(
                "the template uses recommendations() but no recommender was given; "
                "configure one for this send"
            )
        if contact_id is None:
            raise TemplateError("recommendations() needs the contact's 'id' field")
        items = list(recommender(contact_id, n))[:n]
        for item in items:
            if not isinstance(item, Mapping):
                raise TemplateError(
                    f"recommender returned {type(item).__name__!r} items; it must return mappings"
                )
            missing = [key for key in REQUIRED_ITEM_KEYS if key not in item]
            if missing:
                raise TemplateError(
                    f"recommender returned an item without {', '.join(missing)} "
                    f"(item id {item.get('id')!r}); items need {', '.join(REQUIRED_ITEM_KEYS)}"
                )
        memo[n] = items
        return items

    return recommendations
