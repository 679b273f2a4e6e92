"""postwise settings: ``POSTWISE_*`` environment variables over an optional TOML config file.

Every setting has an embedded default that needs no servers: a SQLite file and an in-process
Redis stand-in. ``POSTWISE_DATABASE_URL`` and ``POSTWISE_REDIS_URL`` switch to PostgreSQL and
Redis. Settings are validated once, at start-up; an invalid value raises
:class:`postwise.errors.ConfigurationError` with one line naming the setting, the value and what
is allowed.

Nested settings use a double underscore in the environment:
``POSTWISE_PROVIDER_OPTIONS__SENDGRID__API_KEY=...`` sets
``provider_options["sendgrid"]["api_key"]``.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator
from pydantic import ValidationError as PydanticValidationError

from postwise.errors import ConfigurationError

__all__ = ["RateLimit", "Settings", "load_settings"]

ENV_PREFIX = "POSTWISE_"
_RATE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(\d*)\s*(s|sec|m|min|h|hour)\s*$")
_UNIT_SECONDS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hour": 3600}


class RateLimit(BaseModel):
    """A token-bucket rate: ``rate`` tokens per ``per_seconds``, holding at most ``burst``."""

    model_config = ConfigDict(frozen=True)

    rate: float
    per_seconds: float
    burst: int

    @property
    def per_second(self) -> float:
        return self.rate / self.per_seconds

    @classmethod
    def parse(cls, text: str) -> RateLimit:
        """Parse ``"1000/m"``, ``"50/s"``, ``"100000/h"`` or ``"1000/m burst 200"``."""
        rate_part, _, burst_part = text.partition("burst")
        match = _RATE_RE.match(rate_part)
        if not match:
            raise ValueError(
                f"{text!r} is not a rate; write it as COUNT/UNIT with UNIT one of s, m, h "
                "(for example '1000/m'), optionally followed by 'burst N'"
            )
        count, multiplier, unit = match.groups()
        rate = float(count)
        per = _UNIT_SECONDS[unit] * (int(multiplier) if multiplier else 1)
        if rate <= 0:
            raise ValueError(f"{text!r}: the rate must be positive")
        burst = int(burst_part) if burst_part.strip() else max(1, int(min(rate, rate / per * 10)))
        return cls(rate=rate, per_seconds=per, burst=burst)

    def __str__(self) -> str:
        return f"{self.rate:g}/{self.per_seconds:g}s burst {self.burst}"


ProcessKind = Literal["server", "worker", "collector", "triggers", "journeys", "compliance", "crm"]
_REQUIRED_BY_DEFAULT: tuple[ProcessKind, ...] = ("worker", "collector", "triggers", "compliance")


class Settings(BaseModel):
    """All of postwise's settings. Build it with :func:`load_settings`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["production", "development"] = Field(
        default="production",
        description="production: the long-running processes (serve, worker, events collect, "
        "triggers run, reputation run, crm run, run) refuse to start until secret_key, an https "
        "base_url, sender and postal_address are set. development: they start with the demo "
        "values and say so; never for real mail.",
    )
    data_dir: Path = Field(default=Path("postwise-data"), description="Embedded state lives here.")
    database_url: str = Field(
        default="", description="SQLAlchemy URL; empty means a SQLite file in data_dir."
    )
    redis_url: str = Field(
        default="fakeredis://",
        description="redis://host:port/db, or fakeredis:// for the in-process stand-in.",
    )
    secret_key: SecretStr = Field(
        default=SecretStr(""),
        description="Signs tracking, unsubscribe and consent tokens. Empty: generated once and "
        "kept in data_dir/secret.key (fine for one machine, set it explicitly for several).",
    )
    previous_secret_keys: list[SecretStr] = Field(
        default_factory=list, description="Old keys still accepted when verifying tokens."
    )
    base_url: str = Field(
        default="http://127.0.0.1:8000",
        description="Public URL of the server; tracking and unsubscribe links point here.",
    )
    cdn_base_url: str = Field(default="", description="Asset URLs are rewritten to this base.")
    tracking_link_ttl_days: int = Field(default=90, ge=1, le=3650)
    api_rate_limit_per_minute: int = Field(
        default=120_000,
        ge=0,
        description="Requests per minute an API key may make unless it has its own limit "
        "(postwise apikeys create --rate-limit); 0: unlimited. Over it: 429 with Retry-After.",
    )
    api_max_body_bytes: int = Field(
        default=10 * 1024 * 1024,
        ge=1024,
        description="The largest request body the server accepts (413 beyond it).",
    )

    sender: str = Field(default="postwise demo <hello@example.com>")
    postal_address: str = Field(
        default="postwise demo, 1 Example Street, Springfield, 00000",
        description="CAN-SPAM postal address included in marketing mail.",
    )
    unsubscribe_mailto: str = Field(default="", description="mailto address for List-Unsubscribe.")

    required_processes: list[ProcessKind] = Field(
        default_factory=lambda: list(_REQUIRED_BY_DEFAULT),
        description="Process kinds /health needs alive (each beats into Redis) to answer 200.",
    )
    health_max_lag_seconds: float = Field(
        default=60.0,
        gt=0,
        description="/health answers 503 when a consumer group or a queue is further behind.",
    )

    ui_session_hours: float = Field(
        default=12.0, gt=0, le=24 * 30, description="How long a web interface sign-in lasts."
    )

    template_max_render_seconds: float = Field(
        default=2.0,
        gt=0,
        le=60,
        description="Longest a template may take to render one message (all parts); a template "
        "over any template_max_* limit is refused at save, and fails only its own message at "
        "send time.",
    )
    template_max_iterations: int = Field(
        default=100_000, ge=1, description="Loop iterations and macro calls per message render."
    )
    template_max_output_chars: int = Field(
        default=2_000_000, ge=1_000, description="Characters a message's parts may render to."
    )
    template_max_value_chars: int = Field(
        default=1_000_000,
        ge=1_000,
        description="Largest string or list a template may build ('*', '~', join, replace...).",
    )

    provider: str = Field(default="smtp", description="The ESP provider plugin to send with.")
    provider_options: dict[str, dict[str, Any]] = Field(default_factory=dict)
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(default=1025, ge=1, le=65535)
    smtp_username: str = ""
    smtp_password: SecretStr = SecretStr("")
    smtp_starttls: Literal["opportunistic", "required", "off"] = "opportunistic"
    smtp_implicit_tls: bool = False
    smtp_pool_size: int = Field(default=4, ge=1, le=256)
    smtp_timeout: float = Field(default=30.0, gt=0)
    smtp_ca_file: Path | None = Field(
        default=None,
        description="PEM file of the CA certificates to trust for the relay's TLS certificate "
        "(a private CA); unset: the system's trust store. Certificates are always verified. "
        "Read when the SMTP provider is built (only processes that send need the file).",
    )

    rate_limits: dict[str, RateLimit] = Field(
        default_factory=dict,
        description="Per-provider token buckets, "
        "e.g. POSTWISE_RATE_LIMITS='smtp=1000/m,sendgrid=600/s'.",
    )
    batch_size: int = Field(default=500, ge=1, le=10000, description="Messages per RQ job.")
    max_attempts: int = Field(default=8, ge=1, le=50)
    retry_base_seconds: float = Field(default=30.0, gt=0)
    retry_max_seconds: float = Field(default=3600.0, gt=0)
    delivery_lease_seconds: int = Field(
        default=600,
        ge=2,
        le=86400,
        description="How long one delivery attempt may hold its batch (also the RQ job timeout). "
        "A crashed worker's messages are recovered within seconds (its heartbeat lapses), or "
        "once this has passed when its heartbeat cannot be read.",
    )
    delivery_chunk_size: int = Field(
        default=10,
        ge=1,
        le=10000,
        description="Messages handed to the provider per call. Each is journaled as it leaves, "
        "so a worker killed mid-call leaves only the message being transmitted in doubt.",
    )
    delivery_concurrency: int = Field(
        default=2,
        ge=1,
        le=64,
        description="Provider calls one worker process makes at once, each on a connection of its "
        "own (keep it at most smtp_pool_size): over a slow link to the relay, round trips rather "
        "than CPU bound a worker. A crashed worker leaves up to this many messages in doubt "
        "(one per lane: the one being transmitted).",
    )
    delivery_max_defer_hours: float = Field(
        default=72.0,
        gt=0,
        le=8760,
        description="How long after its first deferral a message the provider keeps "
        "deferring (HTTP 429, SMTP rate limits, a relay the circuit breaker holds back) may "
        "still wait; after "
        "that it is dead-lettered, like an MTA's queue lifetime. Deferrals cost no attempt, so "
        "without this limit a provider that throttles forever keeps messages waiting forever. "
        "Waits for postwise's own rate_limits and reputation pauses do not end in a dead letter.",
    )

    dkim_domain: str = ""
    dkim_selector: str = "postwise"
    dkim_private_key_path: Path | None = None
    dkim_algorithm: Literal["rsa-sha256", "ed25519-sha256"] = "rsa-sha256"

    frequency_cap: str = Field(
        default="3/24h", description="At most N marketing emails per contact per window."
    )
    quiet_hours: str = Field(default="", description="e.g. '22-8' in the contact's time zone.")
    require_consent: bool = Field(
        default=False, description="Marketing sends need a granted 'marketing' consent."
    )
    consent_regions: list[str] = Field(
        default_factory=list,
        description="Country codes where consent is required even if require_consent is off.",
    )
    soft_bounce_limit: int = Field(
        default=3,
        ge=1,
        le=100,
        description="Soft bounces within soft_bounce_window_days after which an address is "
        "suppressed.",
    )
    soft_bounce_window_days: int = Field(default=7, ge=1, le=365)
    undetermined_bounce_limit: int = Field(
        default=3,
        ge=1,
        le=100,
        description="Permanent (5xx) failures of undetermined cause within "
        "undetermined_bounce_window_days after which an address is suppressed.",
    )
    undetermined_bounce_window_days: int = Field(default=30, ge=1, le=365)
    bounce_mailbox: str = Field(
        default="",
        description="Where DSNs and mailto unsubscribes arrive: a maildir path or an "
        "imap(s)://user@host/FOLDER URL; empty: none is read.",
    )
    reputation_window_hours: int = Field(
        default=24, ge=1, le=720, description="Rolling window of the reputation rates."
    )
    reputation_min_volume: int = Field(
        default=1000,
        ge=1,
        description="Messages sent in the window before a rate may warn or pause a stream.",
    )
    reputation_complaint_warn: float = Field(default=0.001, gt=0, lt=1)
    reputation_complaint_pause: float = Field(default=0.003, gt=0, lt=1)
    reputation_bounce_warn: float = Field(default=0.02, gt=0, lt=1)
    reputation_bounce_pause: float = Field(default=0.05, gt=0, lt=1)

    crm_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Per CRM connector (hubspot, salesforce, ...): its options, e.g. "
        "POSTWISE_CRM_OPTIONS__HUBSPOT__ACCESS_TOKEN=...; a CRM with an entry here is synced.",
    )
    crm_sync_interval_seconds: int = Field(
        default=300, ge=10, le=86400, description="How often `postwise crm run` polls each CRM."
    )

    analytics_sink: str = "sql"
    event_stream_maxlen: int = Field(default=1_000_000, ge=1000)
    attribution_window_days: int = Field(default=7, ge=1, le=365)
    event_dedupe_ttl_seconds: int = Field(
        default=86400,
        ge=60,
        description="How long ingestion remembers an event id to drop client retries "
        "(Redis memory: about 100 bytes per event in this window).",
    )
    engagement_half_life_days: float = Field(
        default=30.0, gt=0, description="Half-life of the per-contact engagement score."
    )

    experiment_alpha: float = Field(default=0.05, gt=0, lt=0.5)
    experiment_sequential_tuning: int = Field(
        default=5000, ge=100, description="N* of the sequential test's mixing variance."
    )

    recommender: str = Field(
        default="ease",
        description="The recommender that fills recommendation blocks: ease, hybrid, als, "
        "popularity, collaborative, content, or one a plugin registers.",
    )
    recommend_max_per_category: int | None = Field(
        default=None,
        ge=1,
        description="At most this many items of one category in a recommendation block.",
    )
    recommend_category_attribute: str = Field(
        default="category", description="The item attribute that names its category."
    )
    recommend_boosts: dict[str, float] = Field(
        default_factory=dict,
        description='Rank boosts of recommended items by attribute: {"brand=acme": 1.5}.',
    )
    recommend_stock_attribute: str = Field(
        default="in_stock",
        description="The item attribute that marks an item out of stock (false, 0, no).",
    )
    recommend_exclude_purchased: bool = Field(
        default=True, description="Never recommend an item the contact has bought."
    )

    disabled_plugins: list[str] = Field(default_factory=list)
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="json: one object per line with time, level, process and request id.",
    )
    metrics_port: int = Field(
        default=0,
        ge=0,
        le=65535,
        description="Long-running processes other than the server expose Prometheus metrics "
        "on this port (0: off; the server always has /metrics). `postwise run "
        "--metrics-port-base` numbers them.",
    )
    metrics_address: str = Field(
        default="127.0.0.1", description="Address the metrics port binds (0.0.0.0 for all)."
    )

    @field_validator("rate_limits", mode="before")
    @classmethod
    def _parse_rate_limits(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = dict(_split_pairs(value))
        if isinstance(value, Mapping):
            return {k: RateLimit.parse(v) if isinstance(v, str) else v for k, v in value.items()}
        return value

    @field_validator("smtp_ca_file", mode="before")
    @classmethod
    def _empty_ca_file(cls, value: Any) -> Any:
        return None if value in ("", None) else value

    @field_validator("disabled_plugins", "consent_regions", mode="before")
    @classmethod
    def _parse_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str) -> str:
        if value and not re.match(r"^(sqlite|postgresql)(\+\w+)?://", value):
            raise ValueError("must start with sqlite:// or postgresql://")
        return value

    @field_validator("redis_url")
    @classmethod
    def _check_redis_url(cls, value: str) -> str:
        if not re.match(r"^(redis|rediss|unix|fakeredis)://", value):
            raise ValueError("must start with redis://, rediss://, unix:// or fakeredis://")
        return value

    @field_validator("base_url", "cdn_base_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if value and not re.match(r"^https?://[^/\s]+", value):
            raise ValueError("must be an absolute http:// or https:// URL")
        return value.rstrip("/")

    @property
    def resolved_database_url(self) -> str:
        """The database URL, with the embedded SQLite default filled in."""
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'postwise.sqlite3').resolve()}"

    def signing_keys(self) -> list[bytes]:
        """Token signing keys, newest first; the embedded default is generated once."""
        current = self.secret_key.get_secret_value()
        if not current:
            current = _embedded_secret(self.data_dir)
        return [current.encode()] + [
            k.get_secret_value().encode() for k in self.previous_secret_keys
        ]

    def deployment_problems(self) -> list[str]:
        """What stops these settings from sending real mail, each with the fix; empty when none.

        Unsubscribe and tracking links are signed with ``secret_key`` and point at
        ``base_url``: a key generated per machine makes every link from another machine answer
        404 (a legal problem for unsubscribe links), and mailbox providers want https for
        one-click unsubscribe. The demo's sender and postal address are not yours.
        """
        problems: list[str] = []
        secret = self.secret_key.get_secret_value()
        if not secret:
            problems.append(
                "secret_key is not set: set POSTWISE_SECRET_KEY to the same long random value on "
                "every machine (python3 -c 'import secrets; print(secrets.token_urlsafe(32))'); "
                "keep old keys in POSTWISE_PREVIOUS_SECRET_KEYS when you rotate it"
            )
        elif len(secret) < 32:
            problems.append("secret_key is shorter than 32 characters: use a long random value")
        fields = type(self).model_fields
        if self.base_url == fields["base_url"].default or not self.base_url.startswith("https://"):
            problems.append(
                f"base_url is {self.base_url!r}: set POSTWISE_BASE_URL to the https:// address "
                "recipients reach this server at (tracking and unsubscribe links point there)"
            )
        if self.cdn_base_url and not self.cdn_base_url.startswith("https://"):
            problems.append("cdn_base_url must be an https:// URL")
        if self.sender == fields["sender"].default:
            problems.append("sender is the demo's: set POSTWISE_SENDER to 'Name <you@your-domain>'")
        if self.postal_address == fields["postal_address"].default:
            problems.append(
                "postal_address is the demo's: set POSTWISE_POSTAL_ADDRESS to your postal "
                "address (CAN-SPAM requires it in marketing mail)"
            )
        return problems

    def rate_limit_for(self, provider: str) -> RateLimit | None:
        return self.rate_limits.get(provider)

    def public_dict(self) -> dict[str, Any]:
        """The settings with secrets masked, for logs and ``postwise config``."""
        return json.loads(self.model_dump_json())  # SecretStr dumps as "**********"


def _split_pairs(text: str) -> list[tuple[str, str]]:
    pairs = []
    for chunk in text.split(","):
        if not chunk.strip():
            continue
        name, sep, value = chunk.partition("=")
        if not sep:
            raise ValueError(f"{chunk.strip()!r} is not NAME=VALUE")
        pairs.append((name.strip(), value.strip()))
    return pairs


def _embedded_secret(data_dir: Path) -> str:
    path = data_dir / "secret.key"
    if path.exists():
        return path.read_text().strip()
    data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(key)
    return key


def _env_values(environ: Mapping[str, str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX) or key == "POSTWISE_CONFIG":
            continue
        path = key[len(ENV_PREFIX) :].lower().split("__")
        if path[0].startswith("test_"):
            continue
        target = values
        for part in path[:-1]:
            target = target.setdefault(part, {})
        value: Any = raw
        if raw[:1] in "[{":
            try:
                value = json.loads(raw)
            except json.JSONDecodeError:
                value = raw
        target[path[-1]] = value
    return values


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_settings(
    environ: Mapping[str, str] | None = None,
    config_file: str | Path | None = None,
    **overrides: Any,
) -> Settings:
    """Build validated settings: defaults < config file < environment < ``overrides``.

    The config file is ``config_file``, else ``$POSTWISE_CONFIG``, else ``postwise.toml`` in the
    working directory when it exists.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    path = config_file or environ.get("POSTWISE_CONFIG")
    if path is None and Path("postwise.toml").exists():
        path = "postwise.toml"
    if path is not None:
        try:
            with open(path, "rb") as handle:
                data = tomllib.load(handle)
        except FileNotFoundError:
            raise ConfigurationError(f"config file {str(path)!r} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigurationError(
                f"config file {str(path)!r} is not valid TOML: {exc}"
            ) from None
        values = _merge(values, data.get("postwise", data))
    values = _merge(values, _env_values(environ))
    values = _merge(values, overrides)
    try:
        return Settings.model_validate(values)
    except PydanticValidationError as exc:
        raise ConfigurationError(_describe(exc)) from None


def _describe(exc: PydanticValidationError) -> str:
    lines = []
    for error in exc.errors():
        loc = [str(p) for p in error["loc"]]
        name = ENV_PREFIX + "__".join(loc).upper()
        value = error.get("input")
        message = error["msg"].removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            lines.append(f"{name}: unknown setting; see `postwise config --help` for the list")
        else:
            shown = "<hidden>" if "secret" in name.lower() or "password" in name.lower() else value
            lines.append(f"{name}={shown!r}: {message}")
    return "invalid settings: " + "; ".join(lines)
