"""Built-in components and the example plugin pass the contract suites plugin authors use."""

from __future__ import annotations

from typing import Any

from postwise.plugins import CONDITIONS
from postwise.recommend.base import Recommender
from postwise.recommend.popularity import PopularityRecommender
from postwise.testing.contracts import ConditionContract, RecommenderContract, StaticContext
from postwise.triggers.conditions import ConditionType


class TestPopularityRecommender(RecommenderContract):
    def make_recommender(self) -> Recommender:
        return PopularityRecommender()


class TestExampleLifetimeValueCondition(ConditionContract):
    valid_configs = [{"at_least": 100}, {"at_least": 5, "currency": "USD"}]
    invalid_configs = [
        ({"at_least": 0}, "at_least"),
        ({"currency": "EURO", "at_least": 1}, "currency"),
    ]

    def make_condition(self) -> ConditionType[Any]:
        from postwise_example_ltv import LifetimeValue

        return LifetimeValue()

    def test_it_compares_the_lifetime_value_attribute(self) -> None:
        condition = self.make_condition()
        config = condition.parse_config({"at_least": 100})
        rich = StaticContext(contact={"attributes": {"lifetime_value": "150"}})
        poor = StaticContext(contact={"attributes": {"lifetime_value": 99}})
        assert condition.evaluate(config, self.sample_event(), rich) is True
        assert condition.evaluate(config, self.sample_event(), poor) is False


def test_popularity_ranks_by_weight_and_skips_what_the_contact_has() -> None:
    from postwise.recommend.base import Interaction, Item

    items = [Item(x, x.upper(), f"https://e.example/{x}") for x in "abc"]
    rec = PopularityRecommender(half_life_days=None)
    rec.fit([Interaction(1, "b", 5), Interaction(2, "c", 2), Interaction(3, "b", 1)], items)
    assert [i.id for i in rec.recommend(99, 3)] == ["b", "c", "a"]
    assert [i.id for i in rec.recommend(1, 3)] == ["c", "a"]


def test_the_example_plugin_is_discovered_and_usable_by_name(runtime: Any) -> None:
    described = runtime.plugins.describe()
    plugin = next(p for p in described["plugins"] if p["name"] == "example-ltv")
    assert plugin["distribution"] == "postwise-example-ltv"
    assert plugin["contributes"] == {"conditions": ["lifetime_value"]}
    condition = runtime.component(CONDITIONS, "lifetime_value")
    config = condition.parse_config({"at_least": 10})
    assert condition.evaluate(
        config,
        TestExampleLifetimeValueCondition().sample_event(),
        StaticContext(contact={"attributes": {"lifetime_value": 11}}),
    )
