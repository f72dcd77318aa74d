"""Graceful shutdown of a memory-mode node (API.md section 8, `shutdown_grace`).

The served tests run the app the way `asyncproc serve` does (`DrainingServer`):
once told to exit, the node takes no new job, answers status calls, refuses calls
that would start a job with `503 shutting_down`, lets running jobs finish within
the grace, and fails (errorId `shutdown`) the ones still running after it, since
the memory queue ends with the process. One test runs `python app.py` and sends
it a real SIGTERM.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from anyio.lowlevel import checkpoint

from asyncproc import BlockingJobContext, JobContext, Registry
from asyncproc.config import load_settings
from asyncproc.model import Job, JobState
from asyncproc.registry import load_plugins
from asyncproc.server import create_app
from asyncproc.serving import DrainingServer
from tests.support import (
    ROOT,
    NodeProcess,
    api_client,
    free_port,
    job_status,
    wait_until,
)

pytestmark = pytest.mark.anyio


def gated_kinds(gate: anyio.Event, ran_finally: list[str]) -> Registry:
    """Test kinds: `test.gated` runs until `gate` is set; `test.nap` sleeps; `test.poll`
    is a blocking handler that runs until asked to stop."""
    kinds = Registry()

    @kinds.job("test.gated")
    async def gated(ctx: JobContext, content: Any) -> str:
        """Waits for the test's gate."""
        try:
            await ctx.progress(percent=0.0, biz_step="waiting")
            await gate.wait()
            return "through"
        finally:
            ran_finally.append(ctx.id)

    @kinds.job("test.nap")
    async def nap(ctx: JobContext, content: Any) -> str:
        """Sleeps `content` seconds."""
        await anyio.sleep(float(content))
        return "rested"

    @kinds.job("test.poll")
    def poll(ctx: BlockingJobContext, content: Any) -> None:
        """A blocking handler that loops until it is asked to stop."""
        while not ctx.stop_requested:
            time.sleep(0.01)

    return kinds


def make_app(kinds: Registry, **overrides: Any) -> Any:
    registry = load_plugins(["asyncproc.plugins.demo"])
    registry.include(kinds)
    settings = load_settings(environ={}, sweep_interval=0.05, **overrides)
    return create_app(settings, registry=registry)


@asynccontextmanager
async def served(app: Any) -> AsyncIterator[tuple[httpx.AsyncClient, DrainingServer]]:
    """`app` served as `asyncproc serve` serves it; a client; the server (set its
    `should_exit` as SIGTERM does). Leaving waits until the server has stopped."""
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
    server = DrainingServer(config, app.state.drain)
    async with anyio.create_task_group() as tg:
        tg.start_soon(server.serve)
        with anyio.fail_after(10):
            while not server.started:  # noqa: ASYNC110 - uvicorn offers no event for this
                await anyio.sleep(0.01)
        try:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
                yield client, server
        finally:
            server.should_exit = True


async def enqueue(client: httpx.AsyncClient, kind: str, content: Any) -> str:
    response = await client.post(f"/api/{kind}/enqueue", json={"content": content})
    assert response.status_code == 202, response.text
    job_id: str = response.json()["id"]
    return job_id


async def running(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    return await wait_until(
        lambda: job_status(client, job_id), lambda s: s["state"] == "running", timeout=10
    )


def stored(app: Any, job_id: str) -> Callable[[], Any]:
    async def get() -> Job:
        job: Job = await app.state.service.get(job_id)
        return job

    return get


async def test_a_running_job_finishes_within_the_grace_while_the_api_answers() -> None:
    gate, ran_finally = anyio.Event(), []
    app = make_app(gated_kinds(gate, ran_finally), shutdown_grace=60)
    async with served(app) as (client, server):
        job_id = await enqueue(client, "test.gated", None)
        await running(client, job_id)
        server.should_exit = True  # what SIGTERM / Ctrl-C does
        await wait_until(lambda: checkpoint(), lambda _: app.state.drain.draining)

        # Draining: status calls are answered, the job still runs.
        assert (await job_status(client, job_id))["state"] == "running"
        progress = await client.post("/api/test.gated/progress", json={"id": job_id})
        assert progress.status_code == 200, progress.text
        assert (await client.get("/health")).status_code == 200
        # A new job could never run (the memory queue ends with the process): 503.
        refused = await client.post("/api/test.nap/enqueue", json={"content": 0})
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"]["code"] == "shutting_down"
        assert int(refused.headers["retry-after"]) >= 1
        batch = await client.post("/api/test.nap/enqueue-batch", json={"items": [{"content": 0}]})
        assert batch.status_code == 503
        listed = (await client.get("/api/jobs")).json()["items"]
        assert [job["id"] for job in listed] == [job_id]  # nothing was kept of the refusals

        gate.set()
    done = await stored(app, job_id)()
    assert done.state is JobState.SUCCEEDED
    assert done.attempt == 1


async def test_a_job_still_running_after_the_grace_fails_with_shutdown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gate, ran_finally = anyio.Event(), []
    app = make_app(gated_kinds(gate, ran_finally), shutdown_grace=0.2, concurrency=1)
    caplog.set_level(logging.INFO, logger="asyncproc")
    async with served(app) as (client, server):
        job_id = await enqueue(client, "test.gated", None)
        await running(client, job_id)
        waiting = [await enqueue(client, "test.nap", 0) for _ in range(2)]
        server.should_exit = True
    cut = await stored(app, job_id)()
    assert cut.state is JobState.FAILED  # not "queued": no one will ever run it
    assert cut.error is not None
    assert cut.error.error_id == "shutdown"
    assert ran_finally == [job_id]  # cancelled: its finally block ran
    for queued_id in waiting:
        assert (await stored(app, queued_id)()).state is JobState.QUEUED
    assert "shut down with 2 job(s) still queued: they are lost" in caplog.text


async def test_a_blocking_handler_is_asked_to_stop_after_the_grace() -> None:
    app = make_app(gated_kinds(anyio.Event(), []), shutdown_grace=0.2)
    async with served(app) as (client, server):
        job_id = await enqueue(client, "test.poll", None)
        await running(client, job_id)
        server.should_exit = True
    cut = await stored(app, job_id)()
    assert cut.state is JobState.FAILED
    assert cut.error is not None
    assert cut.error.error_id == "shutdown"


async def test_plain_uvicorn_lifespan_shutdown_waits_for_running_jobs() -> None:
    # `uvicorn app:app`: the drain runs in the lifespan's shutdown (HTTP is closed by then).
    app = make_app(gated_kinds(anyio.Event(), []), shutdown_grace=60)
    async with api_client(app) as client:
        job_id = await enqueue(client, "test.nap", 0.5)
        await running(client, job_id)
    done = await stored(app, job_id)()
    assert done.state is JobState.SUCCEEDED
    assert done.attempt == 1


async def test_sigterm_to_a_node_process(tmp_path: Path) -> None:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "ASYNCPROC_SHUTDOWN_GRACE": "30",
        "ASYNCPROC_CONCURRENCY": "1",
        "ASYNCPROC_PLUGINS": "asyncproc.plugins.demo",
    }
    node = NodeProcess(env, tmp_path, "memory")
    try:
        node.wait_healthy()
        async with httpx.AsyncClient(base_url=node.url, timeout=30) as client:
            job_id = await enqueue(client, "demo.count", {"n": 20, "delay": 0.1})
            queued_id = await enqueue(client, "demo.count", {"n": 1})
            await running(client, job_id)
            node.process.send_signal(signal.SIGTERM)
            log = node.log_path

            queued = [queued_id]

            async def enqueue_answer() -> httpx.Response:
                response = await client.post("/api/demo.count/enqueue", json={"content": {"n": 1}})
                if response.status_code == 202:  # sent before the signal was handled
                    queued.append(response.json()["id"])
                return response

            # Draining: a job that could never run is refused, status calls are answered.
            refused = await wait_until(enqueue_answer, lambda r: r.status_code != 202)
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "shutting_down"
            assert (await job_status(client, job_id))["state"] == "running"
            for queued_id in queued:
                assert (await job_status(client, queued_id))["state"] == "queued"
            # The event stream follows the job to its end (the node stops soon after).
            last: dict[str, Any] = {}
            async with client.stream("GET", f"/api/jobs/{job_id}/events") as events:
                async for line in events.aiter_lines():
                    if line.startswith("data: "):
                        last = json.loads(line[6:])
            assert last["state"] == "succeeded"
            assert last["attempt"] == 1
        await node.exited(30)
        text = log.read_text()
        assert f"shut down with {len(queued)} job(s) still queued: they are lost" in text
        assert "Traceback" not in text
    finally:
        if node.process.poll() is None:
            node.kill()
        node.stop()
    assert node.process.returncode in (0, -signal.SIGTERM)


async def test_a_second_sigterm_ends_the_grace_at_once(tmp_path: Path) -> None:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "ASYNCPROC_SHUTDOWN_GRACE": "600",  # far beyond the test's own timeout
        "ASYNCPROC_PLUGINS": "asyncproc.plugins.demo",
    }
    node = NodeProcess(env, tmp_path, "memory")
    try:
        node.wait_healthy()
        async with httpx.AsyncClient(base_url=node.url, timeout=30) as client:
            job_id = await enqueue(client, "demo.count", {"n": 6000, "delay": 0.1})
            await running(client, job_id)
            node.process.send_signal(signal.SIGTERM)

            async def enqueue_answer() -> httpx.Response:
                return await client.post("/api/demo.count/enqueue", json={"content": {"n": 0}})

            await wait_until(enqueue_answer, lambda r: r.status_code == 503)  # draining
            node.process.send_signal(signal.SIGTERM)
        await node.exited(30)
        assert "still running after the grace: failing them" in node.log_path.read_text()
    finally:
        if node.process.poll() is None:
            node.kill()
        node.stop()
