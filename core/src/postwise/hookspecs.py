"""Every hook a postwise plugin can implement.

Plugins are modules or objects registered through the ``postwise`` entry-point group. They
implement any of these hooks with ``@postwise.hookimpl``. Two families:

* **Register-style hooks** (``postwise_register_*``) receive a ``register(name, component)``
  callable bound to the plugin and fill one named registry each. Configuration then picks a
  component by name (``provider = "sendgrid"``).
* **Lifecycle hooks** let plugins observe sends, events and contact changes, and veto a send.

The built-in components are registered through these same hooks, by each subsystem's own plugin
module (``postwise.<subsystem>.plugin``, entry points ``contacts``, ``delivery``, ``triggers``...
in core/pyproject.toml), exactly as third-party plugins register theirs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeAlias

import pluggy

if TYPE_CHECKING:
    from litestar.types import ControllerRouterHandler

    from postwise.analytics.sinks import AnalyticsSink
    from postwise.crm.connector import CrmConnector
    from postwise.delivery.provider import OutgoingMessage, Provider, SendResult
    from postwise.experiments.stats import StatsTest
    from postwise.recommend.base import Recommender
    from postwise.registry import Register
    from postwise.runtime import Runtime
    from postwise.settings import Settings
    from postwise.triggers.conditions import ConditionType

__all__ = [
    "hookspec",
    "postwise_after_send",
    "postwise_before_send",
    "postwise_contact_changed",
    "postwise_event_tracked",
    "postwise_register_analytics_sinks",
    "postwise_register_conditions",
    "postwise_register_crm_connectors",
    "postwise_register_health_checks",
    "postwise_register_providers",
    "postwise_register_recommenders",
    "postwise_register_routes",
    "postwise_register_stats_tests",
]

hookspec = pluggy.HookspecMarker("postwise")

#: A factory building a provider from settings and the provider's own options.
ProviderFactory = Callable[["Settings", Mapping[str, Any]], "Provider"]
#: A factory building a CRM connector from settings and the connector's own options.
CrmConnectorFactory = Callable[["Settings", Mapping[str, Any]], "CrmConnector"]
#: A factory building an analytics sink from settings and the sink's own options.
AnalyticsSinkFactory = Callable[["Settings", Mapping[str, Any]], "AnalyticsSink"]
#: A zero-argument factory (usually the class) of a recommender.
RecommenderFactory = Callable[[], "Recommender"]
#: A readiness check: what is wrong right now, in words an operator can act on (empty: ok).
HealthCheck = Callable[["Runtime"], list[str]]
#: A Litestar route handler, ``Controller`` subclass or ``Router`` (a plugin that registers
#: routes needs no import of Litestar's types for the annotation).
RouteHandler: TypeAlias = "ControllerRouterHandler"


@hookspec
def postwise_register_providers(register: Register[ProviderFactory]) -> None:
    """Register ESP providers: ``register("sendgrid", factory)``.

    ``factory(settings, options)`` returns a :class:`postwise.delivery.provider.Provider`.
    ``options`` are the provider's own settings (``POSTWISE_PROVIDER_OPTIONS__SENDGRID__API_KEY``
    or the ``[provider_options.sendgrid]`` table of the config file).
    """


@hookspec
def postwise_register_crm_connectors(register: Register[CrmConnectorFactory]) -> None:
    """Register CRM connectors: ``register("hubspot", factory)``.

    ``factory(settings, options)`` returns a :class:`postwise.crm.connector.CrmConnector`.
    """


@hookspec
def postwise_register_conditions(register: Register[ConditionType[Any]]) -> None:
    """Register trigger condition types: ``register("vip_customer", VipCustomer())``.

    The component is an instance of :class:`postwise.triggers.conditions.ConditionType`; its
    ``config_model`` validates each trigger's configuration when the trigger is saved.
    """


@hookspec
def postwise_register_recommenders(register: Register[RecommenderFactory]) -> None:
    """Register recommenders: ``register("popularity", PopularityRecommender)``.

    The component is a zero-argument factory (usually the class) of
    :class:`postwise.recommend.base.Recommender`.
    """


@hookspec
def postwise_register_stats_tests(register: Register[StatsTest]) -> None:
    """Register statistical tests for experiments: ``register("sequential", SequentialTest())``.

    The component implements :class:`postwise.experiments.stats.StatsTest`; experiments and
    ``analyze(..., method=NAME)`` pick it by name.
    """


@hookspec
def postwise_register_analytics_sinks(register: Register[AnalyticsSinkFactory]) -> None:
    """Register long-term event stores: ``register("clickhouse", factory)``.

    ``factory(settings, options)`` returns a :class:`postwise.analytics.sinks.AnalyticsSink`;
    the ``analytics_sink`` setting picks one.
    """


@hookspec
def postwise_register_health_checks(register: Register[HealthCheck]) -> None:
    """Register readiness checks: ``register("delivery", stalls)``.

    ``check(runtime)`` returns the problems it finds (empty when all is well); ``/health``
    reports each under its name and answers 503 while any finds one. A check that raises is
    reported as an error, never raised.
    """


@hookspec
def postwise_register_routes(register: Register[RouteHandler]) -> None:
    """Register HTTP routes: ``register("sendgrid-webhooks", WebhookController)``.

    The component is a Litestar route handler, ``Controller`` subclass or ``Router``. Handlers
    under ``/v1`` require an API key; public endpoints (webhooks) must authenticate requests
    themselves, for example by verifying the provider's signature.
    """


@hookspec
def postwise_before_send(message: OutgoingMessage, contact_id: int | None) -> bool | None:
    """Called before a message is handed to its provider.

    Return ``False`` to veto the send (the message is recorded as skipped with reason
    ``vetoed``); return ``None`` or ``True`` to let it go.
    """


@hookspec
def postwise_after_send(message: OutgoingMessage, result: SendResult) -> None:
    """Called for each message handed to its provider, with the result the provider returned.

    ``result.outcome`` is any :class:`~postwise.delivery.provider.Outcome`: accepted, permanent,
    failed, transient, deferred or unknown. ``result.code`` is the SMTP reply code only;
    ``result.http_status`` carries an HTTP API's status. A message retried or deferred is
    reported again at its next attempt; messages never handed over (skipped, vetoed, held back
    by a rate limit, a pause, a provider's throttle or the circuit breaker) are not reported.
    """


@hookspec
def postwise_event_tracked(event: Mapping[str, Any]) -> None:
    """Called for every event accepted into the event pipeline (product and email events).

    Runs on the ingestion path: keep it fast and never block on I/O.
    """


@hookspec
def postwise_contact_changed(contact_id: int, changes: Mapping[str, Any], source: str) -> None:
    """Called after a contact is created, changed or erased.

    ``changes`` maps field names to new values (``{"erased": True}`` on erasure); ``source`` says
    where the change came from (``"api"``, ``"import"``, ``"crm:hubspot"``, ``"compliance"``).
    """
