"""A real cluster on loopback: one `api` node and two `worker` nodes, Redis + RabbitMQ.

The nodes are separate processes (`python app.py`); one worker is killed with
SIGKILL while it runs jobs.
"""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx
import pytest
import redis

from tests.cluster import forget_cluster
from tests.support import ROOT, NodeProcess, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]

TERMINAL = {"succeeded", "failed", "stopped"}


@asynccontextmanager
async def cluster(
    redis_url: str, amqp_url: str, prefix: str, tmp_path: Path, workers: int = 2
) -> AsyncIterator[tuple[NodeProcess, list[NodeProcess]]]:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "ASYNCPROC_STATE": "redis",
        "ASYNCPROC_QUEUE": "rabbitmq",
        "ASYNCPROC_REDIS_URL": redis_url,
        "ASYNCPROC_AMQP_URL": amqp_url,
        "ASYNCPROC_KEY_PREFIX": prefix,
        "ASYNCPROC_CONCURRENCY": "8",
        "ASYNCPROC_SHUTDOWN_GRACE": "2",
        "ASYNCPROC_PLUGINS": "asyncproc.plugins.demo,tests.cluster.nodeplugin",
        "CLUSTER_TEST_REDIS_URL": redis_url,
        "CLUSTER_TEST_RUNS_KEY": f"{prefix}test:runs",
    }
    api = NodeProcess({**env, "ASYNCPROC_ROLE": "api"}, tmp_path, "api")
    api.wait_healthy()  # the first node declares the queues
    nodes = [
        NodeProcess({**env, "ASYNCPROC_ROLE": "worker"}, tmp_path, "worker") for _ in range(workers)
    ]
    try:
        for node in nodes:
            node.wait_healthy()
        yield api, nodes
    finally:
        for node in [api, *nodes]:
            node.stop()
        await forget_cluster(redis_url, amqp_url, prefix)


def runs_by_job(redis_url: str, key: str) -> dict[str, list[tuple[int, str]]]:
    """job id -> [(pid, "start" | "done"), ...] in the order they happened."""
    client = redis.Redis.from_url(redis_url)
    entries = [e.decode() for e in client.lrange(key, 0, -1)]
    client.close()
    runs: dict[str, list[tuple[int, str]]] = defaultdict(list)
    for entry in entries:
        job_id, pid, what = entry.rsplit(":", 2)
        runs[job_id].append((int(pid), what))
    return runs


async def all_statuses(client: httpx.AsyncClient, ids: list[str]) -> list[dict[str, Any]]:
    statuses = []
    for job_id in ids:
        response = await client.get(f"/api/jobs/{job_id}")
        assert response.status_code == 200, response.text
        statuses.append(response.json())
    return statuses


async def test_killed_worker_loses_no_job(
    redis_url: str, amqp_url: str, unique_prefix: str, tmp_path: Path
) -> None:
    runs_key = f"{unique_prefix}test:runs"
    async with cluster(redis_url, amqp_url, unique_prefix, tmp_path) as (api, (victim, survivor)):
        async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
            ids: list[str] = []

            async def submit(batch: int) -> None:
                for _ in range(30):
                    response = await client.post(
                        "/api/cluster.work/enqueue", json={"content": {"seconds": 0.1}}
                    )
                    assert response.status_code == 202, response.text
                    ids.append(response.json()["id"])

            async with anyio.create_task_group() as tg:
                for batch in range(10):
                    tg.start_soon(submit, batch)
            assert len(ids) == 300

            def running_on_victim() -> set[str]:
                runs = runs_by_job(redis_url, runs_key)
                return {
                    job_id
                    for job_id, events in runs.items()
                    if (victim.pid, "start") in events and (victim.pid, "done") not in events
                }

            async def probe() -> set[str]:
                return running_on_victim()

            await wait_until(probe, lambda running: len(running) >= 2, timeout=60)
            victim.kill()
            in_flight = running_on_victim()

            statuses = await wait_until(
                lambda: all_statuses(client, ids),
                lambda statuses: all(s["state"] in TERMINAL for s in statuses),
                timeout=180,
            )
            runs = runs_by_job(redis_url, runs_key)

    states = Counter(s["state"] for s in statuses)
    assert states == {"succeeded": 300}, states
    assert in_flight, "the victim was running jobs when it was killed"
    assert set(runs) == set(ids)  # every job ran
    for job_id, events in runs.items():
        starts = [pid for pid, what in events if what == "start"]
        if job_id in in_flight:
            # Cut off mid-run: redelivered and run again on the survivor.
            assert starts[0] == victim.pid
            assert starts[-1] == survivor.pid
        # Only the killed node's runs are ever repeated.
        assert all(pid == victim.pid for pid in starts[:-1]), (job_id, events)
    twice = {job_id for job_id, events in runs.items() if len(events) > 2}
    started_on_victim = {j for j, ev in runs.items() if (victim.pid, "start") in ev}
    assert in_flight <= twice <= started_on_victim
    attempts = {s["id"]: s["attempt"] for s in statuses}
    assert all(attempts[job_id] >= 2 for job_id in in_flight)


async def test_stop_long_poll_and_events_through_the_api_node(
    redis_url: str, amqp_url: str, unique_prefix: str, tmp_path: Path
) -> None:
    async with cluster(redis_url, amqp_url, unique_prefix, tmp_path, workers=1) as (api, _):
        async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
            response = await client.post(
                "/api/demo.count/enqueue", json={"content": {"n": 200, "delay": 0.05}}
            )
            job_id = response.json()["id"]
            running = await wait_until(
                lambda: client.get(f"/api/jobs/{job_id}"),
                lambda r: r.json()["progress"]["bizStep"] == "counting",
                timeout=30,
            )
            version = running.json()["version"]
            polled = await client.get(f"/api/jobs/{job_id}", params={"wait": 20, "since": version})
            assert polled.json()["version"] > version

            seen: list[dict[str, Any]] = []
            async with client.stream("GET", f"/api/jobs/{job_id}/events") as events:
                async for line in events.aiter_lines():
                    if line.startswith("data: "):
                        seen.append(json.loads(line[6:]))
                    if len(seen) == 3:
                        break
            assert [s["version"] for s in seen] == sorted({s["version"] for s in seen})

            stop = await client.post(f"/api/jobs/{job_id}/stop")
            assert stop.status_code == 202
            done = await wait_until(
                lambda: client.get(f"/api/jobs/{job_id}"),
                lambda r: r.json()["state"] in TERMINAL,
                timeout=10,
            )
            assert done.json()["state"] == "stopped"
            assert done.json()["progress"]["percent"] < 100
