"""The built-in recommend plugin: the recommenders, the items API and previews."""

from __future__ import annotations

from typing import TYPE_CHECKING

from postwise import hookimpl

if TYPE_CHECKING:
    from postwise.hookspecs import RecommenderFactory, RouteHandler
    from postwise.registry import Register


@hookimpl
def postwise_register_recommenders(register: Register[RecommenderFactory]) -> None:
    from postwise.recommend.als import AlsRecommender
    from postwise.recommend.collaborative import CollaborativeRecommender
    from postwise.recommend.content import ContentRecommender
    from postwise.recommend.ease import EaseRecommender
    from postwise.recommend.hybrid import HybridRecommender
    from postwise.recommend.popularity import PopularityRecommender

    register("popularity", PopularityRecommender)
    register("collaborative", CollaborativeRecommender)
    register("content", ContentRecommender)
    register("ease", EaseRecommender)
    register("als", AlsRecommender)
    register("hybrid", HybridRecommender)


@hookimpl
def postwise_register_routes(register: Register[RouteHandler]) -> None:
    from postwise.recommend.api import ItemsController, RecommendationsController

    register("items-api", ItemsController)
    register("recommendations-api", RecommendationsController)
