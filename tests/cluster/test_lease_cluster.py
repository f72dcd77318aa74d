"""Leases and durable steps with real node processes (Redis + RabbitMQ): a worker that
freezes (SIGSTOP) loses its job to another worker within lease + sweep interval, and
its late outcome changes nothing; a worker killed (SIGKILL) in the middle of a saga
leaves its completed steps done: the next attempt does not run them again."""

from __future__ import annotations

import os
import signal
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cluster import forget_cluster
from tests.support import ROOT, NodeProcess, job_status, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.cluster, pytest.mark.redis, pytest.mark.rabbitmq]

LEASE = 2.0
SWEEP = 0.5
# Taking a job back may take lease + sweep interval; the margin covers a busy machine.
TAKE_BACK = LEASE + SWEEP + 20


class Cluster:
    """An api node and worker nodes started on demand, sharing one key prefix."""

    def __init__(self, env: dict[str, str], tmp_path: Path) -> None:
        self.env = env
        self.tmp_path = tmp_path
        self.nodes: list[NodeProcess] = []

    def start(self, role: str) -> NodeProcess:
        node = NodeProcess({**self.env, "ASYNCPROC_ROLE": role}, self.tmp_path, role)
        self.nodes.append(node)
        node.wait_healthy()
        return node


@asynccontextmanager
async def cluster(
    redis_url: str, amqp_url: str, prefix: str, tmp_path: Path
) -> AsyncIterator[tuple[Cluster, httpx.AsyncClient]]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "ASYNCPROC_STATE": "redis",
        "ASYNCPROC_QUEUE": "rabbitmq",
        "ASYNCPROC_REDIS_URL": redis_url,
        "ASYNCPROC_AMQP_URL": amqp_url,
        "ASYNCPROC_KEY_PREFIX": prefix,
        "ASYNCPROC_LEASE": str(LEASE),
        "ASYNCPROC_SWEEP_INTERVAL": str(SWEEP),
        "ASYNCPROC_SHUTDOWN_GRACE": "1",
    }
    nodes = Cluster(env, tmp_path)
    try:
        api = nodes.start("api")
        async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
            yield nodes, client
    finally:
        for node in nodes.nodes:
            if node.process.poll() is None:
                node.process.send_signal(signal.SIGCONT)
            node.stop()
        await forget_cluster(redis_url, amqp_url, prefix)


async def enqueue(client: httpx.AsyncClient, kind: str, content: Any) -> dict[str, Any]:
    response = await client.post(f"/api/{kind}/enqueue", json={"content": content})
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


async def test_a_frozen_worker_loses_its_job_and_its_late_outcome_is_refused(
    redis_url: str, amqp_url: str, unique_prefix: str, tmp_path: Path
) -> None:
    async with cluster(redis_url, amqp_url, unique_prefix, tmp_path) as (nodes, client):
        frozen = nodes.start("worker")
        job = await enqueue(client, "demo.count", {"n": 30, "delay": 0.1})
        await wait_until(lambda: job_status(client, job["id"]), lambda s: s["state"] == "running")
        nodes.start("worker")
        frozen.process.send_signal(signal.SIGSTOP)
        # Taken back (errorId lost) and run again on the other worker, to the end.
        done = await wait_until(
            lambda: job_status(client, job["id"]),
            lambda s: s["state"] == "succeeded",
            timeout=TAKE_BACK,
        )
        assert done["attempt"] == 2
        # The frozen worker wakes up, finds its job gone, and stops cleanly: nothing it
        # sends about its old attempt changes the record.
        frozen.process.send_signal(signal.SIGCONT)
        frozen.wait_healthy()
        frozen.stop()
        after = await job_status(client, job["id"])
        assert (after["state"], after["attempt"], after["version"]) == (
            "succeeded",
            2,
            done["version"],
        )
        result = (await client.get(f"/api/jobs/{job['id']}/result")).json()
        assert result == {"counted": 30}
        print(f"accepted 1, terminal 1, succeeded 1, attempts {after['attempt']}, lost 0")


async def test_a_killed_worker_leaves_its_completed_steps_done(
    redis_url: str, amqp_url: str, unique_prefix: str, tmp_path: Path
) -> None:
    async with cluster(redis_url, amqp_url, unique_prefix, tmp_path) as (nodes, client):
        victim = nodes.start("worker")
        job = await enqueue(client, "demo.saga", {"steps": 6, "delay": 0.4})
        await wait_until(
            lambda: job_status(client, job["id"]), lambda s: len(s["steps"]) >= 2, timeout=30
        )
        victim.kill()  # SIGKILL mid-saga: no cleanup at all
        # Started after the kill: however long a busy machine takes to start it, the
        # victim cannot finish the saga meanwhile.
        nodes.start("worker")
        done = await wait_until(
            lambda: job_status(client, job["id"]),
            lambda s: s["state"] == "succeeded",
            timeout=TAKE_BACK + 30,
        )
        assert done["attempt"] == 2
        result = (await client.get(f"/api/jobs/{job['id']}/result")).json()
        ran = result["ranOnAttempt"]
        assert result["done"] == [f"step-{i}" for i in range(1, 7)]
        # The steps done before the kill ran once, on attempt 1; none ran twice.
        first = [name for name, attempt in ran.items() if attempt == 1]
        assert len(first) >= 2
        assert all(attempt == 2 for name, attempt in ran.items() if name not in first)
        print(f"steps on attempt 1: {first}; duplicates 0; lost 0")
