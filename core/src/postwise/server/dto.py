"""Conventions for typed request and response bodies (documented in the OpenAPI schema).

* Request bodies derive from :class:`Body`: a ``msgspec.Struct`` that rejects unknown fields
  (422 naming the field) and takes its fields by keyword (a subclass of a subclass repeats
  ``kw_only=True`` in its class line: msgspec does not inherit it). Constrain fields with
  ``Annotated[..., msgspec.Meta(...)]`` (:data:`Name`, :data:`Text`, :data:`IdField`) so the
  schema says what is accepted and litestar refuses the rest with a 422 naming the field.
* Response bodies derive from :class:`Out` (a plain ``msgspec.Struct``), with
  ``Meta(examples=[...])`` on fields where an example helps.
"""

from __future__ import annotations

from typing import Annotated

import msgspec

from postwise.server.validation import IdField

__all__ = ["Body", "Email", "IdField", "IpAddress", "Key", "Name", "Out", "Text"]


class Body(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A request body: unknown fields are refused (422 naming them)."""


class Out(msgspec.Struct, kw_only=True):
    """A response body."""


#: A name: 1-200 characters, not only blanks.
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"\S")]
#: A key or identifier chosen by the caller: 1-200 characters, not only blanks.
Key = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=r"\S")]
#: An email address (normalised by the server; an address it cannot use is a 422).
Email = Annotated[
    str,
    msgspec.Meta(
        max_length=254,
        extra_json_schema={"format": "email"},
        examples=["ann@example.com"],
    ),
]
#: An IPv4 or IPv6 address.
IpAddress = Annotated[
    str,
    msgspec.Meta(
        min_length=2,
        max_length=45,
        extra_json_schema={"anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]},
        examples=["203.0.113.7"],
    ),
]
#: Free text up to 1 MB (template bodies).
Text = Annotated[str, msgspec.Meta(max_length=1_000_000)]
