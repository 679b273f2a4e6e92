"""What a delivery process builds once and reuses for every batch, per runtime.

The composer (template cache, DKIM signer), the compliance gate, the frequency cap, the token
buckets and the recommender are built on first use and kept for the runtime's lifetime, so a
worker compiles each template version once and reuses its SMTP connections across batches.
"""

from __future__ import annotations

import logging
from functools import cached_property
from typing import TYPE_CHECKING, Any

from postwise.compliance.gate import ComplianceGate
from postwise.content.recommendations import RecommenderFn
from postwise.db.engine import installation_uid
from postwise.delivery.compose import Composer, no_recommendations, recommender_function
from postwise.delivery.frequency import FrequencyCap
from postwise.delivery.ratelimit import TokenBucket
from postwise.errors import UnknownComponentError
from postwise.recommend.service import recommender_for

if TYPE_CHECKING:
    from postwise.runtime import Runtime

__all__ = ["DEFAULT_RECOMMENDER", "DeliveryServices", "services_for"]

log = logging.getLogger(__name__)

#: The recommender that fills ``recommendations(n)`` blocks.
DEFAULT_RECOMMENDER = "popularity"


def services_for(runtime: Runtime) -> DeliveryServices:
    """The delivery services of ``runtime`` (built once)."""
    return runtime.shared(DeliveryServices, lambda: DeliveryServices(runtime))


class DeliveryServices:
    """Long-lived delivery components of one runtime."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self._buckets: dict[str, TokenBucket | None] = {}
        self._recommender: Any = None

    @cached_property
    def gate(self) -> ComplianceGate:
        return ComplianceGate(self.runtime.settings)

    @cached_property
    def frequency_cap(self) -> FrequencyCap | None:
        return FrequencyCap.from_setting(self.runtime.settings.frequency_cap)

    @cached_property
    def composer(self) -> Composer:
        with self.runtime.session() as session:
            installation = installation_uid(session)
        return Composer(
            self.runtime.settings, recommender=self._recommender_fn(), installation=installation
        )

    def bucket(self, provider: str) -> TokenBucket | None:
        """The token bucket of ``provider``, or None when it has no rate limit."""
        if provider not in self._buckets:
            limit = self.runtime.settings.rate_limit_for(provider)
            self._buckets[provider] = (
                TokenBucket(self.runtime.redis, provider, limit) if limit is not None else None
            )
        return self._buckets[provider]

    def use_recommender(self, recommender: Any, *, name: str = DEFAULT_RECOMMENDER) -> None:
        """Fill recommendation blocks from ``recommender`` (a fitted Recommender) from now on."""
        self._recommender = recommender
        function = recommender_function(recommender, name=name)
        if "composer" in self.__dict__:
            self.composer.recommender = function

    def _recommender_fn(self) -> RecommenderFn:
        if self._recommender is not None:
            return recommender_function(self._recommender, name=DEFAULT_RECOMMENDER)

        try:
            # The configured recommender (setting "recommender"), trained once and shared by
            # every worker through the model store.
            return recommender_for(self.runtime)
        except UnknownComponentError as exc:
            log.warning(
                "recommendation blocks will be empty: %s (install or enable the plugin that "
                "registers it)",
                exc,
            )
            return no_recommendations
