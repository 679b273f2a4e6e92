"""Training the configured recommender from the database, and serving it to rendering.

The ``recommender`` setting names a registered recommender (``popularity``, ``collaborative``,
``content``, ``hybrid``, or one from a plugin). :func:`train` fits it on the catalogue and the
stored product events and saves it in the model store (:mod:`postwise.recommend.store`).
:func:`recommender_for` gives rendering a :data:`~postwise.content.recommendations.RecommenderFn`
that answers from the stored model, loaded once per process:

* at most every :data:`REFRESH_SECONDS` a process checks (one small read) whether a newer model
  was stored, and loads it; ``postwise recommend train`` on a schedule keeps models fresh;
* when no model is stored at all, the first process that needs one trains and stores it, while
  the others wait for it instead of each training their own (a lock in Redis); with the
  embedded Redis stand-in the lock covers one process only;
* when the store cannot be reached, a process keeps answering from the model it has.

Nothing here raises a :class:`~postwise.errors.PostwiseError` on a temporary failure (Redis or
the database down): rendering treats those as a fault of the message, whereas a plain
exception fails the batch, which is then retried.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from postwise.db.models import utcnow
from postwise.errors import ConfigurationError
from postwise.plugins import RECOMMENDERS
from postwise.recommend.base import Interaction, Item, Recommender
from postwise.recommend.catalogue import (
    InteractionSource,
    iter_interactions,
    iter_purchases,
    load_items,
    unavailable_items,
)
from postwise.recommend.rules import BusinessRules, Purchases, RuledModel, recommend_with_rules
from postwise.recommend.store import ModelStore, StoredModel, model_store

if TYPE_CHECKING:
    from postwise.content.recommendations import RecommenderFn
    from postwise.runtime import Runtime

__all__ = [
    "REFRESH_SECONDS",
    "TrainReport",
    "fit_from_database",
    "recommend_block",
    "recommender_for",
    "rules_from_settings",
    "serving_recommender",
    "train",
]

log = logging.getLogger(__name__)

#: How often a serving process looks for a newer stored model.
REFRESH_SECONDS: Final = 60.0
#: How long one process may hold the training lock; a crashed trainer's lock ends with it.
_TRAINING_LOCK_SECONDS = 1800
_WAIT_POLL_SECONDS = 1.0


@dataclass(frozen=True)
class TrainReport:
    """What one training run did."""

    model: StoredModel
    items: int
    pairs: int
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.model.to_dict(),
            "items": self.items,
            "pairs": self.pairs,
            "seconds": round(self.seconds, 3),
        }


class _Counted:
    """Counts interactions as a recommender consumes them (the stream is read only once)."""

    def __init__(self, interactions: Iterable[Interaction]) -> None:
        self._interactions = interactions
        self.count = 0

    def __iter__(self) -> Iterator[Interaction]:
        for interaction in self._interactions:
            self.count += 1
            yield interaction


def fit_from_database(
    runtime: Runtime, name: str, source: InteractionSource | None = None
) -> tuple[Recommender, dict[str, Any]]:
    """A fresh ``name`` recommender fitted on the active catalogue and the stored events.

    Returns the recommender and what went into it (items, pairs, seconds, parameters).
    """
    source = source or InteractionSource()
    factory = runtime.component(RECOMMENDERS, name)
    started = time.perf_counter()
    items = load_items(runtime.engine)
    recommender: Recommender = factory()
    interactions = _Counted(iter_interactions(runtime.engine, source))
    recommender.fit(interactions, items)
    purchases = Purchases(iter_purchases(runtime.engine, lookback_days=source.lookback_days))
    info: dict[str, Any] = {
        "items": len(items),
        "pairs": interactions.count,
        "seconds": time.perf_counter() - started,
        "weights": dict(source.weights),
        "lookback_days": source.lookback_days,
        "max_pairs": source.max_pairs,
        "purchases": len(purchases),
    }
    tuned = getattr(recommender, "tuned", None)
    if isinstance(tuned, dict):
        info["tuned"] = _plain(tuned)
    backend = getattr(recommender, "backend", None)
    if backend is None:
        backend = getattr(getattr(recommender, "collaborative", None), "backend", None)
    if isinstance(backend, str):
        info["backend"] = backend
    return RuledModel(recommender, purchases), info


def _plain(value: Any) -> Any:
    """``value`` with NumPy scalars and tuples made JSON-friendly."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    item = getattr(value, "item", None)
    return item() if callable(item) and not isinstance(value, str | int | float) else value


def rules_from_settings(settings: Any) -> BusinessRules:
    """The business rules the settings configure (``recommend_*``)."""
    return BusinessRules(
        max_per_category=settings.recommend_max_per_category,
        category_attribute=settings.recommend_category_attribute,
        boosts=dict(settings.recommend_boosts),
        stock_attribute=settings.recommend_stock_attribute,
        exclude_purchased=settings.recommend_exclude_purchased,
    )


def recommend_block(
    runtime: Runtime, contact_id: int, n: int, name: str | None = None
) -> list[Item]:
    """What a recommendation block shows the contact: the served model, rules applied."""
    name = name or runtime.settings.recommender
    runtime.component(RECOMMENDERS, name)
    return _serving(runtime, name, None).block(contact_id, n, rules_from_settings(runtime.settings))


def train(
    runtime: Runtime,
    name: str | None = None,
    *,
    source: InteractionSource | None = None,
    store: ModelStore | None = None,
) -> TrainReport:
    """Fit ``name`` (default: the ``recommender`` setting) and store it for every process.

    This process serves the new model at once; others pick it up within
    :data:`REFRESH_SECONDS`.
    """
    name = name or runtime.settings.recommender
    store = store or model_store(runtime)
    trained_at = utcnow()
    recommender, info = fit_from_database(runtime, name, source)
    model = store.save(name, recommender, trained_at=trained_at, info=info)
    _serving(runtime, name, store).install(model, recommender)
    log.info(
        "trained recommender %s: %d items, %d pairs in %.1fs (model %s, %d bytes)",
        name,
        info["items"],
        info["pairs"],
        info["seconds"],
        model.version,
        model.size,
    )
    return TrainReport(model, info["items"], info["pairs"], info["seconds"])


def serving_recommender(runtime: Runtime, name: str | None = None) -> Recommender:
    """The fitted recommender this process serves for ``name`` (default: the setting).

    Loads the stored model, or trains and stores one when there is none. Its ``recommend``
    ranks without the business rules; :func:`recommend_block` applies them.
    """
    name = name or runtime.settings.recommender
    runtime.component(RECOMMENDERS, name)  # an unknown name fails here, listing the known
    served = _serving(runtime, name, None).recommender()
    # The fitted recommender itself; business rules apply in recommend_block.
    return served.inner if isinstance(served, RuledModel) else served


def recommender_for(runtime: Runtime) -> RecommenderFn:
    """What rendering calls for ``recommendations(n)``: the configured recommender, served.

    Raises :class:`~postwise.errors.UnknownComponentError` at once when the ``recommender``
    setting names nothing installed; the model itself is loaded on the first call.
    """
    name = runtime.settings.recommender
    runtime.component(RECOMMENDERS, name)
    serving = _serving(runtime, name, None)
    rules = rules_from_settings(runtime.settings)

    def recommend(contact_id: Any, n: int) -> list[Mapping[str, Any]]:
        return [item.to_dict() for item in serving.block(int(contact_id), n, rules)]

    recommend.__name__ = f"recommend_{name}"
    return recommend


class _Serving:
    """The model of one recommender name in one process, refreshed from the store."""

    def __init__(self, runtime: Runtime, name: str, store: ModelStore | None) -> None:
        self.runtime = runtime
        self.name = name
        self.store = store or model_store(runtime)
        self._lock = threading.Lock()
        self._model: StoredModel | None = None
        self._recommender: Recommender | None = None
        self._checked = -float("inf")
        self._unavailable: frozenset[str] = frozenset()
        self._unavailable_checked = -float("inf")

    def block(self, contact_id: int, n: int, rules: BusinessRules) -> list[Item]:
        """The contact's block: the model's ranking with ``rules`` applied.

        A model that fails while ranking (one written by incompatible code) leaves the block
        empty rather than failing the message; the error is logged.
        """
        recommender = self.recommender()
        try:
            return recommend_with_rules(
                recommender,
                contact_id,
                n,
                rules,
                unavailable=self.unavailable(rules.stock_attribute),
            )
        except (AttributeError, TypeError, IndexError, KeyError, ValueError):
            log.exception(
                "recommender %s model %s failed; the block is left empty (retrain it with "
                "`postwise recommend train`)",
                self.name,
                self._model.version if self._model else "?",
            )
            return []

    def unavailable(self, stock_attribute: str) -> frozenset[str]:
        """Inactive and out-of-stock items, re-read at most every REFRESH_SECONDS."""
        now = time.monotonic()
        if now - self._unavailable_checked < REFRESH_SECONDS:
            return self._unavailable
        try:
            self._unavailable = frozenset(unavailable_items(self.runtime.engine, stock_attribute))
        except Exception:
            log.warning(
                "cannot read item availability; using the last known (%d items)",
                len(self._unavailable),
                exc_info=True,
            )
        self._unavailable_checked = now
        return self._unavailable

    def install(self, model: StoredModel, recommender: Recommender) -> None:
        with self._lock:
            self._model, self._recommender = model, recommender
            self._checked = time.monotonic()

    def recommender(self) -> Recommender:
        current = self._recommender
        if current is not None and time.monotonic() - self._checked < REFRESH_SECONDS:
            return current
        with self._lock:
            if self._recommender is not None and time.monotonic() - self._checked < REFRESH_SECONDS:
                return self._recommender
            self._refresh()
            assert self._recommender is not None
            return self._recommender

    def _refresh(self) -> None:
        try:
            stored = self.store.current(self.name)
        except Exception:
            if self._recommender is None:
                raise
            log.warning(
                "cannot reach the model store; serving recommender %s version %s meanwhile",
                self.name,
                self._model.version if self._model else "?",
                exc_info=True,
            )
            self._checked = time.monotonic()
            return
        if stored is not None and self._model is not None and stored.version == self._model.version:
            self._checked = time.monotonic()
            return
        if stored is None or not self._load():
            self._train_or_wait()
        self._checked = time.monotonic()

    def _load(self) -> bool:
        try:
            loaded = self.store.load(self.name)
        except ConfigurationError as exc:
            log.warning("stored model of recommender %s refused: %s", self.name, exc)
            return False
        if loaded is None:
            return False
        self._model, self._recommender = loaded
        log.info("loaded recommender %s model %s", self.name, self._model.version)
        return True

    def _train_or_wait(self) -> None:
        """Train and store a model, unless another process is doing so: then wait for it."""
        redis = self.runtime.redis
        lock = f"postwise:recommend:training:{self.name}"
        token = f"{os.getpid()}-{uuid.uuid4().hex}"
        while True:
            if redis.set(lock, token, nx=True, ex=_TRAINING_LOCK_SECONDS):
                try:
                    trained_at: datetime = utcnow()
                    recommender, info = fit_from_database(self.runtime, self.name)
                    self._model = self.store.save(
                        self.name, recommender, trained_at=trained_at, info=info
                    )
                    self._recommender = recommender
                    log.info(
                        "no stored model of recommender %s: trained one (%d items, %d pairs)",
                        self.name,
                        info["items"],
                        info["pairs"],
                    )
                    return
                finally:
                    # Not atomic, but the lock expires anyway; this only frees it early.
                    if redis.get(lock) == token.encode():
                        redis.delete(lock)
            time.sleep(_WAIT_POLL_SECONDS)
            if self.store.current(self.name) is not None and self._load():
                return


def _serving(runtime: Runtime, name: str, store: ModelStore | None) -> _Serving:
    return runtime.shared((_Serving, name), lambda: _Serving(runtime, name, store))
