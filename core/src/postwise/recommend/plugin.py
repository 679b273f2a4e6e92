"""The built-in recommend plugin."""

from __future__ import annotations

from typing import Any

from postwise import hookimpl


@hookimpl
def postwise_register_recommenders(register: Any) -> None:
    from postwise.recommend.popularity import PopularityRecommender

    register("popularity", PopularityRecommender)
