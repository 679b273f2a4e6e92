"""The OpenAPI document says exactly what the server accepts.

Litestar builds the document from the handlers; two things it cannot say are added here, once,
when the document is first served:

* Bodies typed with ``msgspec`` structs (:class:`postwise.server.dto.Body` and
  :class:`~postwise.server.dto.Out`) get the schema msgspec itself derives: unknown fields
  refused (``additionalProperties: false``), constraints on list items, formats (``email``) and
  examples, which litestar's own rendering drops.
* A handler that reads its body itself (``POST /v1/events`` decodes a batch in one pass) names
  the body's type with ``opt={"request_body": function}``, a function of no arguments that
  returns the type (litestar deep-copies ``opt``, which a type with ``msgspec.Meta`` refuses),
  so the document shows it.
"""

from __future__ import annotations

from typing import Any

import msgspec
from litestar import Litestar
from litestar._openapi.plugin import OpenAPIPlugin
from litestar.routes import HTTPRoute

__all__ = ["refine_openapi"]


def _structs() -> dict[str, type[msgspec.Struct]]:
    found: dict[str, type[msgspec.Struct]] = {}
    pending: list[type[msgspec.Struct]] = [msgspec.Struct]
    while pending:
        cls = pending.pop()
        for sub in cls.__subclasses__():
            pending.append(sub)
            if sub.__module__.startswith("postwise"):
                found.setdefault(sub.__name__, sub)
    return found


def _bodies(app: Litestar) -> dict[tuple[str, str], Any]:
    bodies: dict[tuple[str, str], Any] = {}
    for route in app.routes:
        if not isinstance(route, HTTPRoute):
            continue
        for handler in route.route_handlers:
            make_body = handler.opt.get("request_body")
            if make_body is not None:
                body = make_body()
                for method in handler.http_methods:
                    bodies[(route.path_format or "/", method.lower())] = body
    return bodies


def refine(document: dict[str, Any], bodies: dict[tuple[str, str], Any]) -> None:
    """Replace struct components by msgspec's schemas and add self-read request bodies."""
    components: dict[str, Any] = document.setdefault("components", {}).setdefault("schemas", {})
    structs = _structs()
    wanted: list[Any] = [structs[name] for name in components if name in structs]
    wanted.extend(bodies.values())
    if not wanted:
        return
    schemas, generated = msgspec.json.schema_components(
        wanted, ref_template="#/components/schemas/{name}"
    )
    components.update(generated)
    for (path, method), schema in zip(bodies, schemas[len(wanted) - len(bodies) :], strict=True):
        operation = document.get("paths", {}).get(path, {}).get(method)
        if operation is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": schema}},
            }


class _RefinedOpenAPIPlugin(OpenAPIPlugin):
    __slots__ = ()

    def provide_openapi_schema(self) -> dict[str, Any]:
        if not self._openapi_schema:
            document = super().provide_openapi_schema()
            refine(document, self.app.state.openapi_bodies)
        return self._openapi_schema or {}


def refine_openapi(app: Litestar) -> None:
    """Serve the refined document from ``app`` (see the module docstring)."""
    app.state.openapi_bodies = _bodies(app)
    plugin = app.plugins.get(OpenAPIPlugin)
    # Same slots, one overridden method: the plugin instance litestar made serves the document.
    plugin.__class__ = _RefinedOpenAPIPlugin
