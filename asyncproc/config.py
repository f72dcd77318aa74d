"""Settings: parsed once, from an optional TOML file and `ASYNCPROC_*` variables.

This is the only module that reads `os.environ`. Every problem raises
`ConfigError` naming the key (the CLI prints it on one line and exits 2).
"""

from __future__ import annotations

import enum
import logging
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from .errors import ConfigError
from .messages import invalid_setting, suggest
from .origins import normalize_origin

__all__ = [
    "KindSettings",
    "Role",
    "ScheduleSettings",
    "Settings",
    "TokenSettings",
    "TriggerSettings",
    "client_defaults",
    "load_settings",
    "parse_duration",
]

ENV_PREFIX = "ASYNCPROC_"
# Variables of ours that are no setting: the config path, the client's, the tests'.
_OTHER_VARIABLES = frozenset({"CONFIG", "URL", "TOKEN"})

log = logging.getLogger("asyncproc.config")

RATE_LIMIT = re.compile(r"[1-9]\d*/[smh]")


class Role(enum.StrEnum):
    """What a node does: serve the API, run jobs, or both."""

    API = "api"
    WORKER = "worker"
    ALL = "all"

    @property
    def serves_api(self) -> bool:
        """True when this node answers the job API."""
        return self is not Role.WORKER

    @property
    def runs_jobs(self) -> bool:
        """True when this node consumes the queue."""
        return self is not Role.API


class LogLevel(enum.StrEnum):
    """How much a node logs (`log_level`); `debug` also turns uvicorn's access log on."""

    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


class LogFormat(enum.StrEnum):
    """How a log line looks (`log_format`): readable text, or one JSON object."""

    TEXT = "text"
    JSON = "json"


class KindSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`[kinds."<kind>"]`: an operator's overrides of a kind's options (durations in s)."""

    processing_timeout: float | None = None
    retention: float | None = None
    retries: int | None = None
    retry_delay: float | None = None
    retry_max_delay: float | None = None
    max_concurrency: int | None = None
    rate_limit: str | None = None
    unique: str | None = None
    on_conflict: str | None = None


class ScheduleSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`[[schedules]]`: a schedule declared in the config (API.md section 12)."""

    name: str
    kind: str
    content: Any = None
    key: str | None = None
    cron: str | None = None
    every: float | None = None
    timezone: str = "UTC"
    overlap: str = "skip"
    catchup: str = "one"
    catchup_window: float = 3600.0
    paused: bool = False


class TriggerSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`[[triggers]]`: an event or message that starts jobs (API.md section 12)."""

    name: str
    kind: str
    event: str | None = None
    queue: str | None = None
    exchange: str | None = None
    binding_key: str | None = None
    content_field: str | None = None
    key_field: str | None = None
    id_field: str | None = None


class TokenSettings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """`[[tokens]]`: an API token (API.md section 15): its name, the SHA-256 of the token
    (`sha256:<hex>`; the token itself is never stored) and its scopes."""

    name: str
    hash: str
    scopes: tuple[str, ...]


SCOPES = ("submit", "read", "stop", "admin")
_TOKEN_HASH = re.compile(r"sha256:[0-9a-f]{64}")
_TOKEN_NAME = re.compile(r"[A-Za-z0-9._@-]{1,64}")


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Every setting of API.md section 8 (durations in seconds)."""

    host: str = "127.0.0.1"
    port: int = 8000
    role: Role = Role.ALL
    state: str = "memory"
    queue: str = "memory"
    redis_url: str = "redis://127.0.0.1:6379/0"
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/"
    key_prefix: str = "asyncproc:"
    concurrency: int = 16
    routings: tuple[str, ...] = ("default",)
    processing_timeout: float = 3600.0
    retention: float = 86400.0
    max_body: int = 1_048_576
    expose_tech_info: bool = False
    # Request headers never kept for a handler, besides Authorization, Cookie and
    # Proxy-Authorization (lower case).
    hidden_headers: tuple[str, ...] = ("x-api-key", "x-auth-token", "x-amz-security-token")
    # Origins whose pages may call the API from a browser (`scheme://host[:port]`).
    cors_origins: tuple[str, ...] = ()
    callback_exchange: str = ""
    plugins: tuple[str, ...] = ("asyncproc.plugins.demo",)
    # Beyond API.md: how long shutdown waits for running jobs before cancelling them,
    # how often the sweeper looks for overdue and expired jobs, and the queue depth
    # over which enqueue answers 503 (0: no limit).
    shutdown_grace: float = 10.0
    sweep_interval: float = 1.0
    max_queue_depth: int = 0
    max_deliveries: int = 5
    scheduler: bool = True
    lease: float = 10.0
    # Memory mode: finished jobs kept at most (0: no cap); the oldest finished go first.
    max_finished: int = 50_000
    # MyLab.AsyncProcessor API v2 (API.md section 14): served when `mylab`; its
    # `POST /requests` creates jobs of `mylab_kind`, each also published to
    # `mylab_queue` (RabbitMQ; empty: not published).
    mylab: bool = False
    mylab_kind: str = ""
    mylab_queue: str = ""
    # Kinds run by processors outside (API.md section 14): no Python handler.
    external_kinds: tuple[str, ...] = ()
    # OTLP/HTTP base URL that receives traces (`<it>/v1/traces`); empty: tracing off.
    otel_endpoint: str = ""
    # Operations (API.md section 16): log lines on stderr, and GET /metrics.
    log_level: LogLevel = LogLevel.INFO
    log_format: LogFormat = LogFormat.TEXT
    metrics: bool = True
    # TOML tables only.
    kinds: dict[str, KindSettings] = {}
    schedules: tuple[ScheduleSettings, ...] = ()
    triggers: tuple[TriggerSettings, ...] = ()
    tokens: tuple[TokenSettings, ...] = ()


DURATION_KEYS = frozenset(
    {"processing_timeout", "retention", "shutdown_grace", "sweep_interval", "lease"}
)
_KIND_DURATIONS = ("processing_timeout", "retention", "retry_delay", "retry_max_delay")
_SCHEDULE_DURATIONS = ("every", "catchup_window")
TABLE_KEYS = frozenset({"kinds", "schedules", "triggers", "tokens"})
_FIELDS = frozenset(f.name for f in msgspec.structs.fields(Settings))
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*")
_UNITS = {None: 1.0, "ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(value: object) -> float:
    """Seconds from `90`, `"90"`, `"500ms"`, `"90s"`, `"15m"`, `"1h"` or `"1d"`."""
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 90, 500ms, 15m, 1h")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("must not be negative")
        return float(value)
    match = _DURATION.fullmatch(str(value))
    if match is None:
        raise ValueError(f"{value!r} is not a duration such as 90, 500ms, 15m, 1h")
    return float(match.group(1)) * _UNITS[match.group(2)]


LIST_KEYS = frozenset({"routings", "plugins", "hidden_headers", "external_kinds", "cors_origins"})


def load_settings(
    path: str | Path | None = None,
    environ: Mapping[str, str] | None = None,
    **overrides: Any,
) -> Settings:
    """Settings from the TOML file (`path` or `ASYNCPROC_CONFIG`), then the environment,
    then `overrides`; raises `ConfigError` naming the first bad key."""
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    path = path or env.get(ENV_PREFIX + "CONFIG")
    if path:
        try:
            values.update(tomllib.loads(Path(path).read_text(encoding="utf-8")))
        except OSError as exc:
            raise ConfigError("config", f"cannot read {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError("config", f"{path} is not valid TOML: {exc}") from None
        for key in values:
            if key not in _FIELDS:
                close = suggest(key, _FIELDS)
                hint = f', did you mean "{close}"?' if close else ""
                raise ConfigError(key, f"unknown setting in {path}{hint}")
    for name in _FIELDS - TABLE_KEYS:
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None:
            values[name] = raw
    _warn_unknown_variables(env)
    values.update(overrides)
    _parse_tables(values)
    for name in DURATION_KEYS & values.keys():
        try:
            values[name] = parse_duration(values[name])
        except ValueError as exc:
            raise ConfigError(name, str(exc)) from None
    for name in LIST_KEYS:
        if isinstance(values.get(name), str):
            values[name] = [p.strip() for p in values[name].split(",") if p.strip()]
    if isinstance(values.get("hidden_headers"), list):
        # Header names are case-insensitive; ASGI hands them over in lower case.
        values["hidden_headers"] = [
            n.strip().lower() if isinstance(n, str) else n for n in values["hidden_headers"]
        ]
    try:
        # Not strict: environment values are strings ("8", "true").
        settings = msgspec.convert(values, Settings, strict=False)
    except msgspec.ValidationError as exc:
        key, problem = invalid_setting(exc, Settings, values)
        raise ConfigError(key or "config", problem) from None
    _check(settings)
    return settings


def _warn_unknown_variables(env: Mapping[str, str]) -> None:
    """Warn about each `ASYNCPROC_<X>` that names no setting (a typo is otherwise
    silently ignored), suggesting the closest one."""
    known = [n.upper() for n in sorted(_FIELDS - TABLE_KEYS)] + sorted(_OTHER_VARIABLES)
    for variable in sorted(env):
        name = variable[len(ENV_PREFIX) :]
        if variable.startswith(ENV_PREFIX) and name not in known and not name.startswith("TEST_"):
            close = suggest(name.upper(), known)
            hint = f" (did you mean {ENV_PREFIX}{close}?)" if close else ""
            log.warning("%s names no setting; it is ignored%s", variable, hint)


def _parse_tables(values: dict[str, Any]) -> None:
    """Durations inside the `[kinds.*]` and `[[schedules]]` tables, in place; a
    `[kinds."<kind>"]` table is checked here, where its kind can still be named."""
    kinds = values.get("kinds")
    if isinstance(kinds, dict):
        for kind, table in kinds.items():
            if not isinstance(table, dict):
                raise ConfigError(f"kinds.{kind}", "expected a table of the kind's options")
            for field in _KIND_DURATIONS:
                if field in table:
                    table[field] = _duration(f"kinds.{kind}.{field}", table[field])
            try:
                msgspec.convert(table, KindSettings, strict=False)
            except msgspec.ValidationError as exc:
                key, problem = invalid_setting(exc, KindSettings, table)
                raise ConfigError(".".join(filter(None, ("kinds", kind, key))), problem) from None
    schedules = values.get("schedules")
    if isinstance(schedules, list):
        for index, table in enumerate(schedules):
            if isinstance(table, dict):
                for field in _SCHEDULE_DURATIONS:
                    if field in table:
                        table[field] = _duration(f"schedules[{index}].{field}", table[field])


def _duration(key: str, value: object) -> float:
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise ConfigError(key, str(exc)) from None


def client_defaults(environ: Mapping[str, str] | None = None) -> tuple[str, str | None]:
    """The client's server URL and token: `ASYNCPROC_URL` (default
    `http://127.0.0.1:8000`) and `ASYNCPROC_TOKEN` (default none)."""
    env = os.environ if environ is None else environ
    url = env.get(ENV_PREFIX + "URL") or "http://127.0.0.1:8000"
    token = env.get(ENV_PREFIX + "TOKEN") or None
    return url, token


def _check(settings: Settings) -> None:
    if not 0 < settings.port < 65536:
        raise ConfigError("port", "must be between 1 and 65535")
    if settings.state not in {"memory", "redis"}:
        raise ConfigError("state", f"{settings.state!r}: expected memory or redis")
    if settings.queue not in {"memory", "rabbitmq"}:
        raise ConfigError("queue", f"{settings.queue!r}: expected memory or rabbitmq")
    if settings.concurrency < 1:
        raise ConfigError("concurrency", "must be at least 1")
    if not settings.routings:
        raise ConfigError("routings", "name at least one routing")
    if settings.max_body < 1:
        raise ConfigError("max_body", "must be at least 1 byte")
    if settings.max_finished < 0:
        raise ConfigError("max_finished", "must be 0 (no cap) or more")
    if settings.processing_timeout <= 0:
        raise ConfigError("processing_timeout", "must be more than 0")
    if settings.lease < 0.5:
        raise ConfigError("lease", "must be at least 500ms")
    if settings.max_deliveries < 1:
        raise ConfigError("max_deliveries", "must be at least 1")
    for origin in settings.cors_origins:
        if origin.strip() == "*":
            raise ConfigError("cors_origins", "'*' is not allowed: list the origins one by one")
        try:
            normalize_origin(origin)
        except ValueError as exc:
            raise ConfigError("cors_origins", str(exc)) from None
    if settings.otel_endpoint and not re.match(r"https?://[^/\s]", settings.otel_endpoint):
        raise ConfigError(
            "otel_endpoint",
            f"{settings.otel_endpoint!r}: expected an http(s) URL such as http://127.0.0.1:4318",
        )
    if settings.mylab and not settings.mylab_kind:
        raise ConfigError("mylab_kind", "required when mylab is true")
    for kind, options in settings.kinds.items():
        _check_kind(kind, options)
    names: set[str] = set()
    for index, trigger in enumerate(settings.triggers):
        where = f"triggers[{index}]"
        if trigger.name in names:
            raise ConfigError(f"{where}.name", f"{trigger.name!r} is declared twice")
        names.add(trigger.name)
        ways = [w for w in (trigger.event, trigger.queue, trigger.exchange) if w is not None]
        if len(ways) != 1:
            raise ConfigError(where, "set exactly one of event, queue, exchange")
        if trigger.exchange is not None and trigger.binding_key is None:
            raise ConfigError(f"{where}.binding_key", "an exchange trigger needs binding_key")
    _check_tokens(settings.tokens)
    mixed = (settings.state == "memory") != (settings.queue == "memory")
    if mixed or (settings.state == "memory" and settings.role is not Role.ALL):
        # Memory backends are per process: a split node or half-cluster would lose jobs.
        raise ConfigError(
            "state" if mixed else "role",
            "memory backends need state=memory, queue=memory and role=all",
        )


def _check_tokens(tokens: tuple[TokenSettings, ...]) -> None:
    names: set[str] = set()
    hashes: set[str] = set()
    for index, token in enumerate(tokens):
        where = f"tokens[{index}]"
        if not _TOKEN_NAME.fullmatch(token.name):
            raise ConfigError(f"{where}.name", f"{token.name!r}: 1 to 64 of A-Z a-z 0-9 . _ @ -")
        if token.name in names:
            raise ConfigError(f"{where}.name", f"{token.name!r} is declared twice")
        names.add(token.name)
        if not _TOKEN_HASH.fullmatch(token.hash):
            raise ConfigError(
                f"{where}.hash", "expected sha256:<64 lower-case hex digits> (the token's SHA-256)"
            )
        if token.hash in hashes:
            raise ConfigError(f"{where}.hash", "the same hash as another token")
        hashes.add(token.hash)
        if not token.scopes:
            raise ConfigError(f"{where}.scopes", f"name at least one of {', '.join(SCOPES)}")
        for scope in token.scopes:
            if scope not in SCOPES:
                raise ConfigError(f"{where}.scopes", f"{scope!r} is not one of {', '.join(SCOPES)}")


def _check_kind(kind: str, options: KindSettings) -> None:
    where = f"kinds.{kind}"
    if options.retries is not None and options.retries < 0:
        raise ConfigError(f"{where}.retries", "must be >= 0")
    if options.max_concurrency is not None and options.max_concurrency < 1:
        raise ConfigError(f"{where}.max_concurrency", "must be at least 1")
    if options.rate_limit is not None and not RATE_LIMIT.fullmatch(options.rate_limit):
        raise ConfigError(
            f"{where}.rate_limit", f"{options.rate_limit!r}: expected n/s, n/m or n/h"
        )
    if options.unique is not None and options.unique not in {"none", "active", "once"}:
        raise ConfigError(f"{where}.unique", f"{options.unique!r}: expected none, active or once")
    if options.on_conflict is not None and options.on_conflict not in {
        "reject",
        "existing",
        "replace",
    }:
        raise ConfigError(
            f"{where}.on_conflict", f"{options.on_conflict!r}: expected reject, existing or replace"
        )
