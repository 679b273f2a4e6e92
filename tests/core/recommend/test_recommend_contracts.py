"""Every built-in recommender passes the contract suite plugin recommenders run."""

from __future__ import annotations

from postwise.recommend.base import Recommender
from postwise.recommend.collaborative import CollaborativeRecommender
from postwise.recommend.content import ContentRecommender
from postwise.recommend.hybrid import HybridRecommender
from postwise.recommend.popularity import PopularityRecommender
from postwise.runtime import Runtime
from postwise.testing.contracts import RecommenderContract


class TestPopularity(RecommenderContract):
    def make_recommender(self) -> Recommender:
        return PopularityRecommender()


class TestCollaborativeWithSurprise(RecommenderContract):
    def make_recommender(self) -> Recommender:
        return CollaborativeRecommender(backend="surprise")


class TestCollaborativeWithNumpy(RecommenderContract):
    def make_recommender(self) -> Recommender:
        return CollaborativeRecommender(backend="numpy")


class TestContent(RecommenderContract):
    def make_recommender(self) -> Recommender:
        return ContentRecommender()


class TestHybrid(RecommenderContract):
    def make_recommender(self) -> Recommender:
        return HybridRecommender()


def test_the_plugin_registers_all_four_by_name(runtime: Runtime) -> None:
    registry = runtime.plugins.registry("recommenders")
    assert {"popularity", "collaborative", "content", "hybrid"} <= set(registry.names())
    for name in ("collaborative", "content", "hybrid"):
        recommender = runtime.component("recommenders", name)()
        assert isinstance(recommender, Recommender) and recommender.name == name
