"""Settings from TOML and the environment (API.md section 8), and bad values."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from asyncproc.config import Role, load_settings, parse_duration
from asyncproc.errors import ConfigError


def test_defaults_match_the_contract() -> None:
    settings = load_settings(environ={})
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.role is Role.ALL
    assert (settings.state, settings.queue) == ("memory", "memory")
    assert settings.concurrency == 16
    assert settings.routings == ("default",)
    assert settings.processing_timeout == 3600
    assert settings.retention == 86400
    assert settings.max_body == 1_048_576
    assert settings.expose_tech_info is False
    assert settings.callback_exchange == ""
    assert settings.plugins == ("asyncproc.plugins.demo",)
    assert settings.key_prefix == "asyncproc:"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [(90, 90), ("90", 90), ("500ms", 0.5), ("90s", 90), ("15m", 900), ("1h", 3600), ("1d", 86400)],
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_file_then_environment(tmp_path: Path) -> None:
    config = tmp_path / "asyncproc.toml"
    config.write_text(
        'port = 9000\nretention = "2h"\nroutings = ["a", "b"]\nconcurrency = 4\n', encoding="utf-8"
    )
    env = {
        "ASYNCPROC_CONFIG": str(config),
        "ASYNCPROC_CONCURRENCY": "8",
        "ASYNCPROC_EXPOSE_TECH_INFO": "true",
        "ASYNCPROC_PLUGINS": "asyncproc.plugins.demo, my.plugin",
        "ASYNCPROC_PROCESSING_TIMEOUT": "15m",
    }
    settings = load_settings(environ=env)
    assert settings.port == 9000
    assert settings.retention == 7200
    assert settings.routings == ("a", "b")
    assert settings.concurrency == 8  # the environment wins over the file
    assert settings.expose_tech_info is True
    assert settings.plugins == ("asyncproc.plugins.demo", "my.plugin")
    assert settings.processing_timeout == 900


@pytest.mark.parametrize(
    ("env", "key"),
    [
        ({"ASYNCPROC_PORT": "eighty"}, "port"),
        ({"ASYNCPROC_PORT": "70000"}, "port"),
        ({"ASYNCPROC_RETENTION": "soon"}, "retention"),
        ({"ASYNCPROC_ROLE": "boss"}, "role"),
        ({"ASYNCPROC_STATE": "postgres"}, "state"),
        ({"ASYNCPROC_CONCURRENCY": "0"}, "concurrency"),
        ({"ASYNCPROC_EXPOSE_TECH_INFO": "maybe"}, "expose_tech_info"),
        ({"ASYNCPROC_ROLE": "api"}, "role"),  # memory backends cannot be split
        ({"ASYNCPROC_QUEUE": "rabbitmq"}, "state"),
        ({"ASYNCPROC_CONFIG": "/does/not/exist.toml"}, "config"),
    ],
)
def test_bad_values_name_the_key(env: dict[str, str], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ=env)
    assert caught.value.key == key


def test_unknown_key_in_file(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text("colour = 'blue'\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="colour"):
        load_settings(config, environ={})


def test_bad_setting_stops_start_up_with_one_line_and_exit_2(tmp_path: Path) -> None:
    env = {"ASYNCPROC_PORT": "eighty", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "app.py"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parent.parent,
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "port" in lines[0]
