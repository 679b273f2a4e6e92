"""Settings: environment over config file over defaults, validated with one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest

from postwise.errors import ConfigurationError
from postwise.settings import RateLimit, load_settings


def test_embedded_defaults_need_no_servers(tmp_path: Path) -> None:
    settings = load_settings(environ={}, data_dir=tmp_path)
    assert settings.resolved_database_url.startswith("sqlite:///")
    assert settings.redis_url.startswith("fakeredis://")


def test_environment_switches_to_postgres_and_redis() -> None:
    settings = load_settings(
        environ={
            "POSTWISE_DATABASE_URL": "postgresql://postgres@127.0.0.1:5432/test",
            "POSTWISE_REDIS_URL": "redis://127.0.0.1:6379/0",
        }
    )
    assert settings.resolved_database_url == "postgresql://postgres@127.0.0.1:5432/test"
    assert settings.redis_url == "redis://127.0.0.1:6379/0"


def test_environment_overrides_the_config_file(tmp_path: Path) -> None:
    config = tmp_path / "postwise.toml"
    config.write_text(
        "[postwise]\nsmtp_port = 2525\nbatch_size = 100\n"
        '[postwise.provider_options.sendgrid]\napi_key = "from-file"\n'
    )
    settings = load_settings(environ={"POSTWISE_BATCH_SIZE": "250"}, config_file=config)
    assert settings.smtp_port == 2525
    assert settings.batch_size == 250
    assert settings.provider_options["sendgrid"]["api_key"] == "from-file"


def test_nested_settings_from_double_underscore_variables() -> None:
    settings = load_settings(environ={"POSTWISE_PROVIDER_OPTIONS__SENDGRID__API_KEY": "k"})
    assert settings.provider_options == {"sendgrid": {"api_key": "k"}}


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        (
            {"POSTWISE_SMTP_PORT": "seventy"},
            "POSTWISE_SMTP_PORT='seventy': Input should be a valid integer",
        ),
        (
            {"POSTWISE_SMTP_PORT": "70000"},
            "POSTWISE_SMTP_PORT='70000': Input should be less than or equal to 65535",
        ),
        ({"POSTWISE_REDIS_URL": "http://x"}, "must start with redis://"),
        ({"POSTWISE_RATE_LIMITS": "smtp=fast"}, "write it as COUNT/UNIT"),
        ({"POSTWISE_SMTP_STARTTLS": "maybe"}, "POSTWISE_SMTP_STARTTLS='maybe'"),
        ({"POSTWISE_BATCHSIZE": "10"}, "POSTWISE_BATCHSIZE: unknown setting"),
    ],
)
def test_invalid_settings_raise_one_line_naming_setting_and_value(
    env: dict[str, str], expected: str
) -> None:
    with pytest.raises(ConfigurationError) as info:
        load_settings(environ=env)
    assert expected in str(info.value)
    assert "\n" not in str(info.value)


def test_secrets_are_masked_in_errors_and_dumps() -> None:
    settings = load_settings(environ={"POSTWISE_SMTP_PASSWORD": "hunter2"})
    assert "hunter2" not in str(settings.public_dict())
    assert settings.smtp_password.get_secret_value() == "hunter2"


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="does not exist"):
        load_settings(environ={}, config_file=tmp_path / "nope.toml")


@pytest.mark.parametrize(
    ("text", "per_second", "burst"),
    [("1000/m", 1000 / 60, 166), ("50/s", 50, 50), ("3600/h burst 5", 1, 5), ("10/5s", 2, 10)],
)
def test_rate_limits_parse(text: str, per_second: float, burst: int) -> None:
    rate = RateLimit.parse(text)
    assert rate.per_second == pytest.approx(per_second)
    assert rate.burst == burst


def test_embedded_secret_is_generated_once_and_kept(tmp_path: Path) -> None:
    first = load_settings(environ={}, data_dir=tmp_path).signing_keys()[0]
    second = load_settings(environ={}, data_dir=tmp_path).signing_keys()[0]
    assert first == second and len(first) >= 32
    assert (tmp_path / "secret.key").stat().st_mode & 0o077 == 0
