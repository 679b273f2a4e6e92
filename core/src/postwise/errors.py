"""The one error hierarchy of postwise.

Every error raised on purpose by postwise derives from :class:`PostwiseError`. Messages say what
was wrong and what to do about it, because they are shown to users as they are (CLI output, 4xx
response bodies).
"""

from __future__ import annotations

__all__ = [
    "ComplianceError",
    "ConfigurationError",
    "ConflictError",
    "DeliveryError",
    "NotFoundError",
    "PermanentDeliveryError",
    "PluginError",
    "PostwiseError",
    "StatsError",
    "TemplateError",
    "TransientDeliveryError",
    "UnknownComponentError",
    "ValidationError",
]


class PostwiseError(Exception):
    """Base class of every error postwise raises deliberately."""


class ConfigurationError(PostwiseError):
    """A setting is missing or has a value that is not allowed."""


class PluginError(PostwiseError):
    """A plugin could not be loaded or broke its contract."""


class UnknownComponentError(ConfigurationError):
    """Configuration names a component (provider, condition, ...) that is not installed."""

    def __init__(self, kind: str, name: str, installed: list[str]) -> None:
        self.kind = kind
        self.name = name
        self.installed = sorted(installed)
        listing = ", ".join(self.installed) if self.installed else "none"
        super().__init__(f"unknown {kind} {name!r}; installed {kind}s: {listing}")


class ValidationError(PostwiseError):
    """Input failed validation. ``field`` names the offending field when there is one."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        self.field = field
        super().__init__(f"{field}: {message}" if field else message)


class NotFoundError(PostwiseError):
    """A named or identified object does not exist."""


class ConflictError(PostwiseError):
    """The request conflicts with the current state (duplicate name, wrong status, ...)."""


class TemplateError(ValidationError):
    """A template failed to compile or render (syntax, unknown variable, sandbox violation)."""


class DeliveryError(PostwiseError):
    """Sending a message failed."""


class TransientDeliveryError(DeliveryError):
    """A failure worth retrying later (SMTP 4xx, connection loss, timeouts, rate limits)."""


class PermanentDeliveryError(DeliveryError):
    """A failure that retrying will not fix (SMTP 5xx): recorded as a bounce."""


class StatsError(ValidationError):
    """Statistical input is inconsistent (bad weights, counts, alpha)."""


class ComplianceError(PostwiseError):
    """An action would break a compliance rule (missing consent, missing postal address, ...)."""
