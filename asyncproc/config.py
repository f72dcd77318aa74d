"""Settings: parsed once, from an optional TOML file and `ASYNCPROC_*` variables.

This is the only module that reads `os.environ`. Every problem raises
`ConfigError` naming the key (the CLI prints it on one line and exits 2).
"""

from __future__ import annotations

import enum
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec

from .errors import ConfigError

__all__ = ["Role", "Settings", "client_defaults", "load_settings", "parse_duration"]

ENV_PREFIX = "ASYNCPROC_"


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
    callback_exchange: str = ""
    plugins: tuple[str, ...] = ("asyncproc.plugins.demo",)
    # Beyond API.md: how long shutdown waits for running jobs before cancelling them,
    # how often the sweeper looks for overdue and expired jobs, and the queue depth
    # over which enqueue answers 503 (0: no limit).
    shutdown_grace: float = 10.0
    sweep_interval: float = 1.0
    max_queue_depth: int = 0
    max_deliveries: int = 5


DURATION_KEYS = frozenset({"processing_timeout", "retention", "shutdown_grace", "sweep_interval"})
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


LIST_KEYS = frozenset({"routings", "plugins"})


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
                raise ConfigError(key, f"unknown setting in {path}")
    for name in _FIELDS:
        raw = env.get(ENV_PREFIX + name.upper())
        if raw is not None:
            values[name] = raw
    values.update(overrides)
    for name in DURATION_KEYS & values.keys():
        try:
            values[name] = parse_duration(values[name])
        except ValueError as exc:
            raise ConfigError(name, str(exc)) from None
    for name in LIST_KEYS:
        if isinstance(values.get(name), str):
            values[name] = [p.strip() for p in values[name].split(",") if p.strip()]
    try:
        # Not strict: environment values are strings ("8", "true").
        settings = msgspec.convert(values, Settings, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(_key_of(str(exc)), str(exc)) from None
    _check(settings)
    return settings


def client_defaults(environ: Mapping[str, str] | None = None) -> tuple[str, str | None]:
    """The client's server URL and token: `ASYNCPROC_URL` (default
    `http://127.0.0.1:8000`) and `ASYNCPROC_TOKEN` (default none)."""
    env = os.environ if environ is None else environ
    url = env.get(ENV_PREFIX + "URL") or "http://127.0.0.1:8000"
    token = env.get(ENV_PREFIX + "TOKEN") or None
    return url, token


def _key_of(message: str) -> str:
    match = re.search(r"`\$\.(\w+)", message)
    return match.group(1) if match else "config"


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
    if settings.processing_timeout <= 0:
        raise ConfigError("processing_timeout", "must be more than 0")
    if settings.max_deliveries < 1:
        raise ConfigError("max_deliveries", "must be at least 1")
    mixed = (settings.state == "memory") != (settings.queue == "memory")
    if mixed or (settings.state == "memory" and settings.role is not Role.ALL):
        # Memory backends are per process: a split node or half-cluster would lose jobs.
        raise ConfigError(
            "state" if mixed else "role",
            "memory backends need state=memory, queue=memory and role=all",
        )
