"""Keyset pagination, the one style every ``/v1`` list uses.

Use as ``after: After = 0, limit: Limit = 100`` in a handler's signature.

A list takes ``after`` (return objects whose id sorts after this; 0 or absent: from the start)
and ``limit``; it answers its items under their plural name and ``next_after``: the value to pass
as ``after`` for the next page, ``null`` on the last page. Pages stay correct while objects are
added or removed, unlike offsets.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Annotated, Any, TypeVar

from litestar.params import Parameter

from postwise.server.validation import MAX_ID

__all__ = ["After", "Limit", "next_after"]

T = TypeVar("T")

#: ``?after=``: ids greater than this.
After = Annotated[
    int,
    Parameter(
        ge=0,
        le=MAX_ID,
        description="Return objects with ids greater than this: the previous page's next_after.",
    ),
]
#: ``?limit=``: at most this many per page.
Limit = Annotated[int, Parameter(ge=1, le=1000, description="The most objects to return (1-1000).")]


def _row_id(row: Any) -> Any:
    return row.id


def next_after(rows: Sequence[T], limit: int, key: Callable[[T], Any] = _row_id) -> Any | None:
    """The ``after`` of the next page: the last row's key when the page is full, else ``None``."""
    return key(rows[-1]) if rows and len(rows) >= limit else None
