"""Settings from TOML and the environment (API.md section 8), and bad values."""

from __future__ import annotations

import logging
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


def test_a_misspelled_variable_is_reported_with_the_closest_setting(
    caplog: pytest.LogCaptureFixture,
) -> None:
    env = {
        "ASYNCPROC_CONCURENCY": "4",
        "ASYNCPROC_COLOUR": "blue",
        "ASYNCPROC_URL": "http://127.0.0.1:9",
        "ASYNCPROC_TEST_REDIS_URL": "redis://x",
    }
    with caplog.at_level(logging.WARNING, logger="asyncproc.config"):
        settings = load_settings(environ=env)
    assert settings.concurrency == 16
    assert caplog.messages == [
        "ASYNCPROC_COLOUR names no setting; it is ignored",
        "ASYNCPROC_CONCURENCY names no setting; it is ignored"
        " (did you mean ASYNCPROC_CONCURRENCY?)",
    ]


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("concurency = 4", 'concurency: unknown setting in {path}, did you mean "concurrency"?'),
        ("port = 'eighty'", 'port: expected an integer, got "eighty"'),
        (
            '[kinds."demo.count"]\nmax_concurency = 2',
            'kinds.demo.count.max_concurency: unknown setting, did you mean "max_concurrency"? '
            "(known: processing_timeout, retention, retries, retry_delay, retry_max_delay, "
            "max_concurrency, rate_limit, unique, on_conflict)",
        ),
        (
            '[kinds."demo.count"]\nretries = "two"',
            'kinds.demo.count.retries: expected an integer, got "two"',
        ),
        ('[kinds]\n"demo.count" = 5', "kinds.demo.count: expected a table of the kind's options"),
        (
            '[[triggers]]\nname = "t"\nkind = "demo.echo"\nevnt = "x"',
            'triggers[0].evnt: unknown setting, did you mean "event"? (known: name, kind, event, '
            "queue, exchange, binding_key, content_field, key_field, id_field)",
        ),
    ],
)
def test_an_unknown_or_bad_key_in_the_file_stops_start_up_naming_it(
    tmp_path: Path, toml: str, message: str
) -> None:
    config = tmp_path / "c.toml"
    config.write_text(toml + "\n", encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_settings(config, environ={})
    assert str(caught.value) == message.format(path=config)


def test_an_unknown_kind_in_the_file_says_which_kinds_there_are(tmp_path: Path) -> None:
    from asyncproc.server import create_app

    with pytest.raises(ConfigError) as caught:
        create_app(load_settings(environ={}, kinds={"demo.cout": {"retries": 1}}))
    assert caught.value.key == "kinds.demo.cout"
    assert caught.value.problem.startswith(
        'unknown kind "demo.cout" (did you mean "demo.count"?); known kinds: demo.bytes,'
    )
