"""Log lines (API.md section 16): the start-up line, one line per finished job, and the
traceback of an unhandled error whatever `expose_tech_info` says; text and JSON."""

from __future__ import annotations

import io
import json
import logging
import os
import random
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio.to_thread
import httpx
import pytest

from asyncproc.config import load_settings
from asyncproc.logs import JsonFormatter, TextFormatter, configure_logging
from tests.support import (
    ROOT,
    NodeProcess,
    api_client,
    demo_app,
    job_finished,
    post_json,
    wait_until,
)

pytestmark = pytest.mark.anyio

FAIL = {"mode": "unhandled", "message": "the sky fell"}


def records_of(caplog: pytest.LogCaptureFixture, logger: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logger]


async def test_start_line_finished_jobs_and_unhandled_tracebacks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="asyncproc")
    async with api_client(demo_app(expose_tech_info=False)) as client:
        ok = await post_json(client, "/api/demo.count/enqueue", {"content": {"n": 0}}, 202)
        bad = await post_json(client, "/api/demo.fail/enqueue", {"content": FAIL}, 202)
        await job_finished(client, ok["id"])
        failed = await job_finished(client, bad["id"])
    assert failed["error"]["techInfo"] is None  # hidden from clients...

    errors = [r for r in records_of(caplog, "asyncproc") if r.levelno == logging.ERROR]
    assert len(errors) == 1  # ... but always in the log, with the job's id
    error: Any = errors[0]
    assert error.jobId == bad["id"]
    assert bad["id"] in error.getMessage()
    assert error.exc_info is not None
    assert "the sky fell" in caplog.text
    assert "Traceback (most recent call last)" in caplog.text

    starts: list[Any] = [r for r in records_of(caplog, "asyncproc") if "ready" in r.getMessage()]
    [start] = starts
    assert start.role == "all"
    assert (start.state, start.queue) == ("memory", "memory")
    assert "asyncproc.plugins.demo" in start.plugins
    assert "demo.count" in start.kinds
    assert "demo.count" in start.getMessage()
    assert "asyncproc.plugins.demo" in start.getMessage()

    finished: dict[str, Any] = {
        getattr(r, "jobId", None): r for r in records_of(caplog, "asyncproc.jobs")
    }
    line = finished[ok["id"]]
    assert (line.kind, line.state, line.attempt, line.errorId) == (
        "demo.count",
        "succeeded",
        1,
        None,
    )
    assert 0 <= line.duration < 5
    assert line.levelno == logging.INFO
    assert ok["id"] in line.getMessage()
    # A normal record for any handler: where it was made as well as its fields.
    assert (line.funcName, Path(line.pathname).name) == ("log_finished", "job_log.py")
    failure = finished[bad["id"]]
    assert (failure.state, failure.errorId, failure.levelno) == (
        "failed",
        "unhandled",
        logging.WARNING,
    )


def test_json_lines_carry_time_level_logger_message_and_extras() -> None:
    stream = io.StringIO()
    settings = load_settings(environ={}, log_format="json", log_level="info")
    handler = configure_logging(settings, stream)
    try:
        log = logging.getLogger("asyncproc.test")
        log.info("hello %s", "there", extra={"jobId": "j1", "attempt": 2})
        log.debug("not shown at info")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.error("it broke", exc_info=True)
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger("asyncproc").setLevel(logging.NOTSET)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 2
    first, second = lines
    assert first["level"] == "info"
    assert first["logger"] == "asyncproc.test"
    assert first["message"] == "hello there"
    assert (first["jobId"], first["attempt"]) == ("j1", 2)
    assert first["time"].endswith("Z")
    assert "RuntimeError: boom" in second["traceback"]


def _node_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCPROC_")}
    env.update({f"ASYNCPROC_{k.upper()}": v for k, v in values.items()})
    return env


async def test_a_node_logs_json_lines_on_stderr(tmp_path: Path) -> None:
    node = NodeProcess(_node_env(log_format="json"), tmp_path)
    try:
        node.wait_healthy()
        async with httpx.AsyncClient(base_url=node.url) as client:
            bad = await post_json(client, "/api/demo.fail/enqueue", {"content": FAIL}, 202)
            await job_finished(client, bad["id"])
            # uvicorn's access log is off by default.
            await client.get("/health")
    finally:
        node.stop()
    output = node.log_path.read_text().splitlines()
    # Every line is JSON but the banner `asyncproc serve` prints on stdout.
    lines = [json.loads(line) for line in output if not line.startswith("asyncproc all node on")]
    assert all({"time", "level", "logger", "message"} <= line.keys() for line in lines)
    [start] = [line for line in lines if "ready" in line["message"]]
    assert "demo.count" in start["kinds"]
    [finished] = [line for line in lines if line["logger"] == "asyncproc.jobs"]
    assert (finished["jobId"], finished["state"], finished["errorId"]) == (
        bad["id"],
        "failed",
        "unhandled",
    )
    assert finished["attempt"] == 1
    assert isinstance(finished["duration"], float)
    [error] = [line for line in lines if line["level"] == "error"]
    assert error["jobId"] == bad["id"]
    assert "RuntimeError: the sky fell" in error["traceback"]
    assert not any("GET /health" in line["message"] for line in lines)


async def test_debug_turns_the_access_log_on(tmp_path: Path) -> None:
    node = NodeProcess(_node_env(log_level="debug"), tmp_path)
    try:
        node.wait_healthy()
        async with httpx.AsyncClient(base_url=node.url) as client:
            await client.get("/api/kinds")
    finally:
        node.stop()
    assert "GET /api/kinds" in node.log_path.read_text()


class CountedWrites(io.StringIO):
    """A stream that counts the calls to `write`."""

    def __init__(self) -> None:
        super().__init__()
        self.writes = 0

    def write(self, text: str) -> int:
        self.writes += 1
        return super().write(text)

    def messages(self) -> list[str]:
        return [line.split(": ", 1)[1] for line in self.getvalue().splitlines()]


@pytest.fixture
def text_stream() -> Iterator[CountedWrites]:
    stream = CountedWrites()
    handler = configure_logging(load_settings(environ={}, log_format="text"), stream)
    try:
        yield stream
    finally:
        logging.getLogger().removeHandler(handler)
        logging.getLogger("asyncproc").setLevel(logging.NOTSET)


async def test_lines_of_one_loop_turn_come_out_together_in_order_after_it(
    text_stream: CountedWrites,
) -> None:
    log = logging.getLogger("asyncproc.test")
    for n in range(5):
        log.info("line %d", n)
    assert text_stream.getvalue() == ""  # not before the turn ends

    async def messages() -> list[str]:
        return text_stream.messages()

    lines = await wait_until(messages, lambda lines: len(lines) >= 5, timeout=5)
    assert lines == [f"line {n}" for n in range(5)]
    assert text_stream.writes == 1


async def test_a_line_from_another_thread_comes_out_at_once_after_the_waiting_ones(
    text_stream: CountedWrites,
) -> None:
    log = logging.getLogger("asyncproc.test")
    log.info("from the loop")
    assert text_stream.getvalue() == ""
    # Joined without letting the loop turn: the thread's line cannot wait for it.
    thread = threading.Thread(target=log.info, args=("from a thread",))
    thread.start()
    thread.join(5)
    assert text_stream.messages() == ["from the loop", "from a thread"]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
# Python 3.12+ warns about forking with threads alive; the child only logs and ends.
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning")
async def test_a_forked_child_leaves_the_waiting_lines_to_its_parent(tmp_path: Path) -> None:
    path = tmp_path / "lines.log"
    with path.open("w", buffering=1) as stream:
        handler = configure_logging(load_settings(environ={}, log_format="text"), stream)
        try:
            log = logging.getLogger("asyncproc.test")
            log.info("from the parent")
            pid = os.fork()
            if pid == 0:  # the child logs off the loop (none runs in it), and ends
                try:
                    log.info("from the child")
                finally:
                    os._exit(0)
            await anyio.to_thread.run_sync(os.waitpid, pid, 0)

            async def messages() -> list[str]:
                return [line.split(": ", 1)[1] for line in path.read_text().splitlines()]

            lines = await wait_until(messages, lambda lines: "from the parent" in lines, timeout=5)
        finally:
            logging.getLogger().removeHandler(handler)
            logging.getLogger("asyncproc").setLevel(logging.NOTSET)
    assert sorted(lines) == ["from the child", "from the parent"]


EXITING = """
import asyncio, logging, sys
from asyncproc.config import load_settings
from asyncproc.logs import configure_logging

configure_logging(load_settings(environ={}, log_format="json"))
log = logging.getLogger("asyncproc.test")
loop = asyncio.new_event_loop()

def last_turn():
    for n in range(3):
        log.info("line %d", n)
    loop.stop()  # no turn after this one: the lines are still waiting

loop.call_soon(last_turn)
loop.run_forever()
if sys.argv[1] == "crash":
    raise RuntimeError("the sky fell")
"""


@pytest.mark.parametrize("how", ["exit", "crash"])
def test_lines_still_waiting_when_the_process_exits_come_out(how: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ASYNCPROC_")}
    done = subprocess.run(
        [sys.executable, "-c", EXITING, how],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = [json.loads(line) for line in done.stderr.splitlines() if line.startswith("{")]
    assert [line["message"] for line in lines] == ["line 0", "line 1", "line 2"]
    if how == "crash":
        assert done.returncode == 1
        assert "RuntimeError: the sky fell" in done.stderr
    else:
        assert done.returncode == 0, done.stderr


def test_times_are_written_as_datetime_writes_them() -> None:
    """The time of a line (made once a second, then its milliseconds) is exactly
    `datetime`'s ISO text, rounding included."""
    picked = random.Random(11)
    times = [0.0, 1.0, 59.9995, 1764515267.0004999, 1764515267.9995, 1764515267.9999996]
    times += [picked.uniform(0, 4e9) for _ in range(2000)]
    # Neighbours in one second, as lines come, so the same second is reused.
    times += [1764515267 + picked.random() for _ in range(2000)]
    for created in times:
        record = logging.makeLogRecord({"msg": "m", "created": created})
        expected = datetime.fromtimestamp(created, UTC).isoformat(timespec="milliseconds")
        expected = expected.replace("+00:00", "Z")
        assert TextFormatter().format(record).split(" ")[0] == expected, created
        assert json.loads(JsonFormatter().format(record))["time"] == expected, created
