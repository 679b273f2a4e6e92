"""postwise.options: how every plugin validates its options and names a bad one."""

from __future__ import annotations

import pytest
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from postwise.errors import ConfigurationError
from postwise.options import AbsoluteUrl, parse_options


class _Options(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    api_key: SecretStr = SecretStr("")
    base_url: AbsoluteUrl = "https://api.example.com/v3"
    timeout: float = Field(default=10.0, gt=0)


def test_valid_options_are_parsed_and_a_base_url_loses_its_trailing_slash() -> None:
    parsed = parse_options(
        _Options, {"api_key": "k", "base_url": "http://127.0.0.1:8080/"}, prefix="p.x"
    )
    assert parsed.base_url == "http://127.0.0.1:8080"
    assert parsed.api_key.get_secret_value() == "k"


def test_an_unknown_option_is_named_with_the_known_ones() -> None:
    with pytest.raises(ConfigurationError) as raised:
        parse_options(_Options, {"apikey": "SG.secret-value"}, prefix="provider_options.x")
    message = str(raised.value)
    assert message == (
        "provider_options.x.apikey: unknown option; known: api_key, base_url, timeout"
    )
    assert "secret-value" not in message  # a key typed into the wrong option is not logged


@pytest.mark.parametrize(
    ("options", "expected"),
    [
        ({"base_url": "api.example.com"}, "crm_options.y.base_url: must be an absolute http"),
        ({"timeout": 0}, "crm_options.y.timeout: Input should be greater than 0"),
        ({"timeout": "soon"}, "crm_options.y.timeout: Input should be a valid number"),
    ],
)
def test_a_bad_value_names_the_option_and_what_is_wrong(
    options: dict[str, object], expected: str
) -> None:
    with pytest.raises(ConfigurationError) as raised:
        parse_options(_Options, options, prefix="crm_options.y")
    assert str(raised.value).startswith(expected)
    assert "Value error" not in str(raised.value)
