"""External processors as real processes (API.md section 14): a processor written with
httpx only (tests/external/httpx_processor.py) drives jobs with progress and stop
against a memory-mode server and against a cluster of two api nodes on Redis +
RabbitMQ; killed (SIGKILL) in the middle of a job, its job runs again on another
processor after the lease."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cluster import forget_cluster
from tests.support import ROOT, NodeProcess, job_status, wait_until

pytestmark = pytest.mark.anyio

KIND = "ext.work"
LEASE = 1.0
# Taking a job back may take lease + sweep interval; the margin covers a busy machine.
TAKE_BACK = LEASE + 30


class ProcessorProcess:
    """`tests/external/httpx_processor.py` against one server, its output in a file."""

    def __init__(self, url: str, name: str, log_dir: Path) -> None:
        self.name = name
        self.log_path = log_dir / f"processor-{name}.log"
        self.log = self.log_path.open("wb")
        self.process = subprocess.Popen(
            [sys.executable, str(ROOT / "tests/external/httpx_processor.py"), url, KIND, name],
            cwd=ROOT,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},  # no asyncproc on the path
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def lines(self) -> list[str]:
        """What it printed so far."""
        return self.log_path.read_text(errors="replace").splitlines()

    def stop(self) -> None:
        """SIGKILL (it keeps no state worth a graceful end)."""
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        self.log.close()


@contextmanager
def processors(log_dir: Path) -> Iterator[list[ProcessorProcess]]:
    """Processor processes started by the test, all killed at the end."""
    started: list[ProcessorProcess] = []
    try:
        yield started
    finally:
        for processor in started:
            processor.stop()


def node_env(**settings: str) -> dict[str, str]:
    """The environment of a node with the external kind and a short lease."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "ASYNCPROC_EXTERNAL_KINDS": KIND,
        "ASYNCPROC_LEASE": str(LEASE),
        "ASYNCPROC_SWEEP_INTERVAL": "0.2",
        "ASYNCPROC_SHUTDOWN_GRACE": "1",
        **{f"ASYNCPROC_{name.upper()}": value for name, value in settings.items()},
    }


async def enqueue(client: httpx.AsyncClient, steps: int, delay: float) -> str:
    body = {"content": {"steps": steps, "delay": delay}}
    response = await client.post(f"/api/{KIND}/enqueue", json=body)
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


async def finished(client: httpx.AsyncClient, job_id: str, timeout: float = 60) -> dict[str, Any]:
    return await wait_until(
        lambda: job_status(client, job_id),
        lambda s: s["state"] in {"succeeded", "failed", "stopped"},
        timeout=timeout,
    )


async def drive_jobs_with_progress_and_stop(
    client: httpx.AsyncClient, processor: ProcessorProcess
) -> None:
    """Jobs run by `processor` report progress and end with its result; a stop
    request reaches it and it confirms the stop."""
    ids = [await enqueue(client, steps=3, delay=0.05) for _ in range(4)]
    for job_id in ids:
        done = await finished(client, job_id)
        assert done["state"] == "succeeded", done
        assert done["progress"]["bizStep"] == "step 3"
        assert done["progress"]["percent"] == 100.0
        result = await client.get(f"/api/jobs/{job_id}/result")
        assert result.json() == {"by": processor.name, "attempt": 1, "steps": 3}
    long = await enqueue(client, steps=600, delay=0.05)
    await wait_until(
        lambda: job_status(client, long), lambda s: (s["progress"]["percent"] or 0) > 0
    )
    assert (await client.post(f"/api/jobs/{long}/stop")).status_code == 202
    stopped = await finished(client, long)
    assert stopped["state"] == "stopped"
    assert stopped["progress"]["percent"] < 100
    await wait_until(lambda: _async(processor.lines()), lambda lines: f"stopped {long}" in lines)


async def _async(value: Any) -> Any:
    return value


async def test_an_httpx_processor_drives_jobs_on_a_memory_server(tmp_path: Path) -> None:
    server = NodeProcess(node_env(), tmp_path, "memory")
    try:
        server.wait_healthy()
        with processors(tmp_path) as started:
            processor = ProcessorProcess(server.url, "solo", tmp_path)
            started.append(processor)
            async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
                await drive_jobs_with_progress_and_stop(client, processor)
    finally:
        server.stop()


@pytest.mark.cluster
@pytest.mark.redis
@pytest.mark.rabbitmq
async def test_processors_on_two_api_nodes_and_one_killed_mid_job(
    redis_url: str, amqp_url: str, unique_prefix: str, tmp_path: Path
) -> None:
    env = node_env(
        state="redis",
        queue="rabbitmq",
        redis_url=redis_url,
        amqp_url=amqp_url,
        key_prefix=unique_prefix,
        role="api",
    )
    nodes = [NodeProcess(env, tmp_path, name) for name in ("api-a", "api-b")]
    try:
        for node in nodes:
            node.wait_healthy()
        with processors(tmp_path) as started:
            first = ProcessorProcess(nodes[0].url, "first", tmp_path)
            started.append(first)
            async with httpx.AsyncClient(base_url=nodes[1].url, timeout=30) as client:
                # Enqueued on node b, taken through node a: the job flows through the queue.
                await drive_jobs_with_progress_and_stop(client, first)

                long = await enqueue(client, steps=40, delay=0.1)
                await wait_until(
                    lambda: job_status(client, long),
                    lambda s: (s["progress"]["percent"] or 0) > 0,
                    timeout=30,
                )
                first.stop()  # SIGKILL mid-job: no report, no goodbye
                second = ProcessorProcess(nodes[1].url, "second", tmp_path)
                started.append(second)
                done = await finished(client, long, timeout=TAKE_BACK + 30)
                assert done["state"] == "succeeded", done
                assert done["attempt"] == 2
                result = (await client.get(f"/api/jobs/{long}/result")).json()
                assert result == {"by": "second", "attempt": 2, "steps": 40}
                assert f"took {long} 1" in first.lines()
    finally:
        for node in nodes:
            node.stop()
        await forget_cluster(redis_url, amqp_url, unique_prefix, ("default", f"ext.{KIND}"))
