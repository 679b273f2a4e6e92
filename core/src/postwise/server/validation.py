"""Input rules every ``/v1`` endpoint shares, checked before a handler runs.

* Ids are 32-bit: an integer path parameter above ``2**31 - 1`` is a 404 (nothing has that
  id) before the database sees it; :data:`OptionalId` (a query parameter) and :data:`IdField`
  (a body field) refuse one with a 422 naming the field.
* :func:`check_request` (the application's ``before_request``) refuses, for ``/v1``:
  a body that is not JSON (415), not UTF-8 (400), nested deeper than :data:`MAX_DEPTH` (400) or
  holding a NUL character in any string (422 naming the field), and NUL characters in the query
  string (422). Bodies over ``Settings.api_max_body_bytes`` are refused by litestar (413).
* :func:`reject_unknown` and :func:`check_text` are the checks controllers that take free-form
  JSON call on their own.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Annotated, Any
from urllib.parse import unquote_to_bytes

import msgspec
from litestar import Request
from litestar.exceptions import ValidationException
from litestar.params import Parameter

from postwise.errors import ValidationError
from postwise.server.errors import ProblemError

__all__ = [
    "MAX_DEPTH",
    "MAX_ID",
    "Id",
    "IdField",
    "OptionalId",
    "check_request",
    "check_text",
    "find_nul",
    "json_depth",
    "reject_unknown",
]

#: The largest id a table holds (PostgreSQL ``integer``).
MAX_ID = 2**31 - 1
#: The deepest nesting a JSON body may have (objects and arrays).
MAX_DEPTH = 32

#: An id in a path or query: 1 .. 2**31-1.
Id = Annotated[int, Parameter(ge=1, le=MAX_ID, description="An id (1 to 2147483647).")]
#: An optional id in a query (``campaign_id: OptionalId = None``).
OptionalId = Annotated[
    int | None, Parameter(ge=1, le=MAX_ID, description="An id (1 to 2147483647).")
]
#: An id in a request body.
IdField = Annotated[int, msgspec.Meta(ge=1, le=MAX_ID, description="An id (1 to 2147483647).")]

_STRINGS = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(rb"[\[\]{}]")
_JSON_MEDIA = re.compile(r"^application/([a-z0-9.+-]+\+)?json$")
_NO_BODY = frozenset({"GET", "HEAD", "OPTIONS", "DELETE"})


def json_depth(body: bytes) -> int:
    """The deepest nesting of objects and arrays in a JSON text (strings are skipped)."""
    if body.count(b"[") + body.count(b"{") <= MAX_DEPTH:
        return body.count(b"[") + body.count(b"{")
    depth = deepest = 0
    for bracket in _BRACKETS.findall(_STRINGS.sub(b"", body)):
        if bracket in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def find_nul(value: Any, path: str = "") -> str | None:
    """The path of the first string (or object key) holding a NUL character, or ``None``."""
    if isinstance(value, str):
        return path or "$" if "\x00" in value else None
    if isinstance(value, Mapping):
        for key, item in value.items():
            here = f"{path}.{key}" if path else str(key)
            if "\x00" in str(key):
                return here
            found = find_nul(item, here)
            if found:
                return found
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found = find_nul(item, f"{path}[{index}]")
            if found:
                return found
    return None


def check_text(value: str, field: str, *, max_length: int | None = None) -> str:
    """``value`` unchanged, or a :class:`ValidationError` naming ``field``."""
    if "\x00" in value:
        raise ValidationError("must not contain NUL characters", field=field)
    if max_length is not None and len(value) > max_length:
        raise ValidationError(f"must be at most {max_length} characters", field=field)
    return value


def reject_unknown(data: Mapping[str, Any], allowed: Iterable[str], *, prefix: str = "") -> None:
    """422 naming the first key of ``data`` not in ``allowed``."""
    allowed = tuple(allowed)
    unknown = sorted(str(k) for k in data if k not in allowed)
    if unknown:
        field = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
        raise ValidationError(f"unknown field; allowed: {', '.join(allowed)}", field=field)


_TYPED: dict[int, Any] = {}
_UNKNOWN_AT_TOP = re.compile(r"^Object contains unknown field `([^`]*)`(?: - at `\$`)?$")


def _body_type(handler: Any) -> Any:
    """The annotation of ``handler``'s ``data`` when it involves a msgspec struct, else None."""
    key = id(handler)
    if key not in _TYPED:
        field = handler.parsed_data_field
        annotation = field.annotation if field is not None else None
        text = repr(annotation)
        structs = (
            [cls for cls in _struct_types(annotation) if issubclass(cls, msgspec.Struct)]
            if annotation is not None
            else []
        )
        _TYPED[key] = annotation if structs and "Any" not in text else None
    return _TYPED[key]


def _struct_types(annotation: Any) -> list[type]:
    args = getattr(annotation, "__args__", None)
    if args:
        return [t for arg in args for t in _struct_types(arg)]
    return [annotation] if isinstance(annotation, type) else []


def _check_typed_body(request: Request[Any, Any, Any], body: bytes) -> None:
    """Decode a struct-typed body strictly (litestar converts laxly: ``0`` for ``false``)."""
    annotation = _body_type(request.scope["route_handler"])
    if annotation is None:
        return
    try:
        msgspec.json.decode(body, type=annotation, strict=True)
    except msgspec.ValidationError as exc:
        unknown = _UNKNOWN_AT_TOP.match(str(exc))
        structs = [t for t in _struct_types(annotation) if issubclass(t, msgspec.Struct)]
        if unknown and len(structs) == 1:
            allowed = ", ".join(structs[0].__struct_fields__)
            raise ProblemError(
                422, f"unknown field; allowed: {allowed}", field=unknown.group(1)
            ) from None
        raise ValidationException(
            detail="the body does not match its schema",
            extra=[{"message": str(exc), "key": "data", "source": "body"}],
        ) from None
    except msgspec.DecodeError:
        return  # litestar reports the syntax error


async def check_request(request: Request[Any, Any, Any]) -> None:
    """The shared checks of ``/v1`` requests (see the module docstring)."""
    path: str = request.scope["path"]
    if not path.startswith("/v1/") and path != "/v1":
        return
    query = request.scope.get("query_string", b"")
    if query and b"%00" in query.lower():
        name = next(
            (
                unquote_to_bytes(part.split(b"=", 1)[0]).decode("utf-8", "replace")
                for part in query.split(b"&")
                if b"%00" in part.lower()
            ),
            None,
        )
        raise ProblemError(422, "must not contain NUL characters", field=name)
    for name, value in request.path_params.items():
        if isinstance(value, int) and not 0 <= value <= MAX_ID:
            # No row has such an id: the object does not exist (and PostgreSQL never sees it).
            raise ProblemError(404, f"nothing has {name} {value}", field=name)
    if request.method in _NO_BODY:
        return
    body = await request.body()
    if not body.strip():
        return
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if not _JSON_MEDIA.match(media):
        raise ProblemError(
            415,
            f"send the body as JSON with 'Content-Type: application/json' "
            f"(got {media or 'no content type'!r})",
            headers={"Accept": "application/json"},
        )
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProblemError(
            400, f"the body is not valid UTF-8 (byte {exc.start}); send UTF-8 encoded JSON"
        ) from None
    if json_depth(body) > MAX_DEPTH:
        raise ProblemError(400, f"the body is nested deeper than {MAX_DEPTH} levels; flatten it")
    _check_typed_body(request, body)
    if b"\\u0000" in body:
        try:
            decoded = msgspec.json.decode(body)
        except msgspec.DecodeError:
            return  # the handler reports the syntax error
        where = find_nul(decoded)
        if where:
            raise ProblemError(422, "must not contain NUL characters", field=where)
