"""Validating a plugin's options: ``provider_options.<name>`` and ``crm_options.<name>``.

A plugin declares its options as a pydantic model that forbids unknown keys and calls
:func:`parse_options` in its factory. A bad option raises
:class:`~postwise.errors.ConfigurationError` naming it in full
(``provider_options.sendgrid.base_url: must be an absolute http:// or https:// URL``), and an
unknown one lists the known ones. Values are never repeated in the message, so an API key
typed into the wrong option does not end up in a log.

:data:`AbsoluteUrl` is the field type for an API's base URL (trailing slash removed).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, TypeVar

from pydantic import AfterValidator, BaseModel
from pydantic import ValidationError as PydanticValidationError

from postwise.errors import ConfigurationError

__all__ = ["AbsoluteUrl", "absolute_url", "parse_options"]

Options = TypeVar("Options", bound=BaseModel)


def parse_options(model: type[Options], options: Mapping[str, Any], *, prefix: str) -> Options:
    """``options`` validated as ``model``; ``prefix`` is where they come from in the settings
    (``"crm_options.hubspot"``), used to name a bad option."""
    try:
        return model.model_validate(dict(options))
    except PydanticValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "options"
        if first["type"] == "extra_forbidden":
            message = "unknown option; known: " + ", ".join(sorted(model.model_fields))
        else:
            message = first["msg"].removeprefix("Value error, ")
        raise ConfigurationError(f"{prefix}.{where}: {message}") from None


def absolute_url(value: str) -> str:
    """``value`` if it is an absolute http(s) URL, without its trailing slash."""
    if not value.startswith(("https://", "http://")):
        raise ValueError("must be an absolute http:// or https:// URL")
    return value.rstrip("/")


AbsoluteUrl = Annotated[str, AfterValidator(absolute_url)]
