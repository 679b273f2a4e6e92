"""The plugin's own tests: only ``pip install`` and ``pytest`` needed, anywhere.

The fixtures (``runtime``, ``settings``, ``client``...) and the contract suites come from the
postwise pytest plugin, which installing postwise registers; there is no conftest here.
"""

from __future__ import annotations

from typing import Any

from postwise.plugins import CONDITIONS
from postwise.runtime import Runtime
from postwise.testing.contracts import ConditionContract, StaticContext
from postwise.triggers.conditions import ConditionType
from postwise_example_ltv import LifetimeValue


class TestLifetimeValueContract(ConditionContract):
    valid_configs = [{"at_least": 500}, {"at_least": 10, "currency": "USD"}]
    invalid_configs = [
        ({"at_least": 0}, "at_least"),
        ({"currency": "EURO", "at_least": 1}, "currency"),
    ]

    def make_condition(self) -> ConditionType[Any]:
        return LifetimeValue()

    def test_it_compares_the_lifetime_value_attribute(self) -> None:
        condition = self.make_condition()
        config = condition.parse_config({"at_least": 100})
        rich = StaticContext(contact={"attributes": {"lifetime_value": "150"}})
        poor = StaticContext(contact={"attributes": {"lifetime_value": 99}})
        other = StaticContext(contact={"attributes": {"lifetime_value": 900, "currency": "USD"}})
        assert condition.evaluate(config, self.sample_event(), rich) is True
        assert condition.evaluate(config, self.sample_event(), poor) is False
        assert condition.evaluate(config, self.sample_event(), other) is False


def test_postwise_loads_the_installed_plugin(runtime: Runtime) -> None:
    # Registered through the entry point in pyproject.toml, as a user's installation loads it.
    assert isinstance(runtime.component(CONDITIONS, "lifetime_value"), LifetimeValue)


def test_the_api_validates_triggers_with_the_condition(client: Any) -> None:
    definition = {
        "name": "big-spenders",
        "event_type": "purchase",
        "conditions": {"all": [{"type": "lifetime_value", "config": {"at_least": -5}}]},
        "action": {"type": "send_template", "template": "thanks"},
    }
    response = client.post("/v1/triggers", json=definition)
    # The running application knows the condition type: it checks its configuration.
    assert response.status_code == 422, response.text
    assert "at_least" in response.text
