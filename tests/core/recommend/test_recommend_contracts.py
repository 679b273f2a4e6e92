"""Every built-in recommender passes the contract suite plugin recommenders run."""

from __future__ import annotations

import pytest

from postwise.plugins import RECOMMENDERS
from postwise.recommend.als import AlsRecommender, implicit_available
from postwise.recommend.base import Recommender
from postwise.recommend.collaborative import CollaborativeRecommender
from postwise.recommend.content import ContentRecommender
from postwise.recommend.ease import EaseRecommender
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


class TestEase(RecommenderContract):
    def make_recommender(self) -> Recommender:
        return EaseRecommender()


@pytest.mark.skipif(not implicit_available(), reason="needs the implicit library (postwise[ml])")
class TestAls(RecommenderContract):
    def make_recommender(self) -> Recommender:
        return AlsRecommender(factors=8)


def test_the_plugin_registers_all_six_by_name(runtime: Runtime) -> None:
    registry = runtime.plugins.registry(RECOMMENDERS)
    expected = {"popularity", "collaborative", "content", "ease", "als", "hybrid"}
    assert expected <= set(registry.names())
    for name in ("collaborative", "content", "ease", "als", "hybrid"):
        recommender = runtime.component(RECOMMENDERS, name)()
        assert isinstance(recommender, Recommender) and recommender.name == name
