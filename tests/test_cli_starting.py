"""The ways to start jobs from the command line, in subprocesses against a real server
(`python app.py` with a config declaring a schedule and an event trigger)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from tests.support import NodeProcess
from tests.test_cli import EXIT_OK, clean_env, cli, text, until_state

pytestmark = pytest.mark.anyio

CONFIG = """
[[schedules]]
name = "hourly-count"
kind = "demo.count"
content = { n = 1, delay = 0 }
every = "1h"

[[triggers]]
name = "count-requested"
kind = "demo.count"
event = "count.requested"
id_field = "eventId"
content_field = "payload"
"""


@pytest.fixture(scope="module")
def url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`python app.py --config FILE --port N` in a subprocess, once /health answers."""
    folder = tmp_path_factory.mktemp("starting")
    config = folder / "config.toml"
    config.write_text(CONFIG)
    server = NodeProcess(clean_env(), folder, "server", ["--config", str(config)])
    try:
        server.wait_healthy(30)
        yield server.url
    finally:
        server.stop()


async def test_submit_with_a_key_and_a_conflict_policy(url: str) -> None:
    first = await cli(url, "submit", "demo.keyed", "--content", '{"seconds": 30}', "--key", "cli-a")
    assert first.returncode == EXIT_OK, text(first.stderr)
    holder = text(first.stdout).strip()
    refused = await cli(url, "submit", "demo.keyed", "--content", "{}", "--key", "cli-a")
    assert refused.returncode == 2
    assert "key_conflict" in text(refused.stderr)
    existing = await cli(
        url,
        "submit",
        "demo.keyed",
        "--content",
        "{}",
        "--key",
        "cli-a",
        "--on-conflict",
        "existing",
    )
    assert text(existing.stdout).strip() == holder
    replaced = await cli(
        url, "submit", "demo.keyed", "--content", "{}", "--key", "cli-a", "--on-conflict", "replace"
    )
    new = text(replaced.stdout).strip()
    assert (await until_state(url, holder, "stopped"))["state"] == "stopped"
    assert (await until_state(url, new, "succeeded"))["state"] == "succeeded"


async def test_batch_by_keys(url: str) -> None:
    done = await cli(url, "batch", "demo.keyed", "--keys", "b1,b2,b3", "--content", "{}")
    assert done.returncode == EXIT_OK, text(done.stderr)
    lines = [line.split("\t") for line in text(done.stdout).splitlines()]
    assert [(line[0], line[1]) for line in lines] == [
        ("b1", "created"),
        ("b2", "created"),
        ("b3", "created"),
    ]
    assert "3 queued or found, 0 refused" in text(done.stderr)


async def test_batch_of_items_reports_refusals(url: str, tmp_path: Path) -> None:
    items = tmp_path / "items.json"
    items.write_text('[{"content": {"n": 0}}, {"content": {"n": "x"}}]')
    done = await cli(url, "batch", "demo.count", "--items", f"@{items}", "--json")
    assert done.returncode == EXIT_OK
    outcomes = msgspec.json.decode(done.stdout)
    assert [item["outcome"] for item in outcomes] == ["created", "refused"]
    plain = await cli(url, "batch", "demo.count", "--items", f"@{items}")
    assert plain.returncode == 2
    assert "invalid_content" in text(plain.stdout)
    neither = await cli(url, "batch", "demo.count")
    assert neither.returncode == 2


async def test_schedules_table_pause_resume_and_run(url: str) -> None:
    table = await cli(url, "schedules")
    assert table.returncode == EXIT_OK, text(table.stderr)
    assert "hourly-count" in text(table.stdout)
    assert "every 3600s" in text(table.stdout)
    paused = await cli(url, "schedule", "pause", "hourly-count")
    assert "paused" in text(paused.stderr)
    listed = msgspec.json.decode((await cli(url, "schedules", "--json")).stdout)
    assert listed[0]["paused"] is True
    resumed = await cli(url, "schedule", "resume", "hourly-count")
    assert "active" in text(resumed.stderr)
    run = await cli(url, "schedule", "run", "hourly-count")
    assert run.returncode == EXIT_OK, text(run.stderr)
    job = await until_state(url, text(run.stdout).strip(), "succeeded")
    assert job["trigger"] == {"type": "schedule", "name": "hourly-count"}
    unknown = await cli(url, "schedule", "run", "nope")
    assert unknown.returncode == 2


async def test_event_starts_the_listening_triggers_jobs(url: str) -> None:
    data = '{"eventId": "e-1", "payload": {"n": 0}}'
    first = await cli(url, "event", "count.requested", "--data", data)
    assert first.returncode == EXIT_OK, text(first.stderr)
    trigger, outcome, job_id = text(first.stdout).strip().split("\t")
    assert (trigger, outcome) == ("count-requested", "created")
    again = await cli(url, "event", "count.requested", "--data", data)
    assert text(again.stdout).strip().split("\t") == ["count-requested", "existing", job_id]
    job = await until_state(url, job_id, "succeeded")
    assert job["trigger"] == {"type": "event", "name": "count-requested"}
    nobody = await cli(url, "event", "nobody.listens")
    assert nobody.returncode == 2
