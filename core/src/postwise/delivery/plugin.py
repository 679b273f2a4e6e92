"""The built-in delivery plugin: the SMTP provider and the templates, campaigns and sends API.

Registered through the same hooks as any third-party plugin; imports stay inside the hooks so
loading plugins costs nothing until a component is used.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from postwise import hookimpl
from postwise.errors import ConfigurationError

if TYPE_CHECKING:
    import ssl

    from postwise.delivery.smtp import SmtpProvider
    from postwise.hookspecs import HealthCheck, ProviderFactory, RouteHandler
    from postwise.registry import Register
    from postwise.settings import Settings


def smtp_provider(settings: Settings, options: Mapping[str, Any]) -> SmtpProvider:
    """Build the SMTP provider from the ``smtp_*`` settings (``provider_options.smtp`` wins)."""
    from postwise.delivery.smtp import SmtpProvider

    username = options.get("username", settings.smtp_username) or None
    password = options.get("password", settings.smtp_password.get_secret_value()) or None
    ca_file = options.get("ca_file", settings.smtp_ca_file)
    return SmtpProvider(
        str(options.get("host", settings.smtp_host)),
        int(options.get("port", settings.smtp_port)),
        username=username if password else None,
        password=password if username else None,
        starttls=options.get("starttls", settings.smtp_starttls),
        implicit_tls=bool(options.get("implicit_tls", settings.smtp_implicit_tls)),
        pool_size=int(options.get("pool_size", settings.smtp_pool_size)),
        timeout=float(options.get("timeout", settings.smtp_timeout)),
        ssl_context=_trusting(Path(ca_file)) if ca_file else None,
    )


def _trusting(ca_file: Path) -> ssl.SSLContext:
    """A verifying TLS client context that trusts only the CA certificates in ``ca_file``."""
    import ssl

    try:
        return ssl.create_default_context(cafile=str(ca_file))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigurationError(
            f"smtp_ca_file={str(ca_file)!r}: cannot load CA certificates from it ({exc}); "
            "give a PEM file of certificates"
        ) from None


@hookimpl
def postwise_register_providers(register: Register[ProviderFactory]) -> None:
    register("smtp", smtp_provider)


@hookimpl
def postwise_register_health_checks(register: Register[HealthCheck]) -> None:
    from postwise.delivery.recovery import stalls

    # Batches held by dead workers, rows past their due time, dispatches that stopped.
    register("delivery", stalls)


@hookimpl
def postwise_register_routes(register: Register[RouteHandler]) -> None:
    from postwise.delivery.api import CampaignsController, SendsController, TemplatesController

    register("templates-api", TemplatesController)
    register("campaigns-api", CampaignsController)
    register("sends-api", SendsController)
