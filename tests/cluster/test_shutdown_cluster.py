"""SIGTERM to a worker node of a real cluster (one `api` node, two `worker` nodes,
Redis + RabbitMQ): running jobs finish on it within `shutdown_grace`; jobs longer
than the grace are given back and finish on the other worker; no job is lost and
none runs twice to its end.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cluster import forget_cluster
from tests.cluster.test_cluster import all_statuses, runs_by_job
from tests.support import ROOT, TERMINAL, NodeProcess, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.cluster, pytest.mark.redis, pytest.mark.rabbitmq]


@asynccontextmanager
async def cluster(
    redis_url: str, amqp_url: str, prefix: str, tmp_path: Path, grace: float
) -> AsyncIterator[tuple[NodeProcess, list[NodeProcess]]]:
    """An api node and two worker nodes with `shutdown_grace` = `grace` seconds."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "ASYNCPROC_STATE": "redis",
        "ASYNCPROC_QUEUE": "rabbitmq",
        "ASYNCPROC_REDIS_URL": redis_url,
        "ASYNCPROC_AMQP_URL": amqp_url,
        "ASYNCPROC_KEY_PREFIX": prefix,
        "ASYNCPROC_CONCURRENCY": "4",
        "ASYNCPROC_SHUTDOWN_GRACE": str(grace),
        "ASYNCPROC_PLUGINS": "asyncproc.plugins.demo,tests.cluster.nodeplugin",
        "CLUSTER_TEST_REDIS_URL": redis_url,
        "CLUSTER_TEST_RUNS_KEY": f"{prefix}test:runs",
    }
    api = NodeProcess({**env, "ASYNCPROC_ROLE": "api"}, tmp_path, "api")
    api.wait_healthy()  # the first node declares the queues
    workers = [NodeProcess({**env, "ASYNCPROC_ROLE": "worker"}, tmp_path, "worker") for _ in "ab"]
    try:
        for node in workers:
            node.wait_healthy()
        yield api, workers
    finally:
        for node in [api, *workers]:
            node.stop()
        await forget_cluster(redis_url, amqp_url, prefix)


async def submit(client: httpx.AsyncClient, count: int, seconds: float) -> list[str]:
    ids = []
    for _ in range(count):
        response = await client.post(
            "/api/cluster.work/enqueue", json={"content": {"seconds": seconds}}
        )
        assert response.status_code == 202, response.text
        ids.append(response.json()["id"])
    return ids


def running_on(redis_url: str, key: str, node: NodeProcess) -> set[str]:
    """Jobs `node` has started and not finished."""
    return {
        job_id
        for job_id, events in runs_by_job(redis_url, key).items()
        if (node.pid, "start") in events and (node.pid, "done") not in events
    }


def tally(ids: list[str], statuses: list[dict[str, Any]], runs: dict[str, Any]) -> Counter[str]:
    """accepted / terminal / succeeded / duplicates (ran to the end twice) / lost, printed."""
    counts: Counter[str] = Counter(
        accepted=len(ids),
        terminal=sum(s["state"] in TERMINAL for s in statuses),
        succeeded=sum(s["state"] == "succeeded" for s in statuses),
        duplicates=sum([what for _, what in events].count("done") > 1 for events in runs.values()),
        lost=sum(s["state"] not in TERMINAL for s in statuses),
    )
    print(dict(counts))
    return counts


async def test_sigterm_lets_running_jobs_finish_on_their_node(
    redis_url: str, amqp_url: str, unique_prefix: str, tmp_path: Path
) -> None:
    runs_key = f"{unique_prefix}test:runs"
    async with cluster(redis_url, amqp_url, unique_prefix, tmp_path, grace=5) as (api, nodes):
        victim, survivor = nodes
        async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
            ids = await submit(client, 16, seconds=2)

            async def victim_busy() -> set[str]:
                return running_on(redis_url, runs_key, victim)

            await wait_until(victim_busy, bool, timeout=30)
            victim.process.send_signal(signal.SIGTERM)
            in_flight = running_on(redis_url, runs_key, victim)

            # It finishes what it runs (2 s < the 5 s grace), then exits on its own.
            await victim.exited(5 + 10)
            statuses = await wait_until(
                lambda: all_statuses(client, ids),
                lambda statuses: all(s["state"] in TERMINAL for s in statuses),
                timeout=60,
            )
            runs = runs_by_job(redis_url, runs_key)

    counts = tally(ids, statuses, runs)
    assert counts == Counter(accepted=16, terminal=16, succeeded=16), counts
    assert in_flight
    for job_id in in_flight:
        assert runs[job_id] == [(victim.pid, "start"), (victim.pid, "done")], runs[job_id]
    # Nothing ran twice: every job that started on the victim finished there.
    assert all(s["attempt"] == 1 for s in statuses), [s["attempt"] for s in statuses]
    assert all(len(events) == 2 for events in runs.values()), runs
    assert set(runs) == set(ids)
    assert any(survivor.pid == pid for events in runs.values() for pid, _ in events)


async def test_sigterm_gives_back_jobs_longer_than_the_grace(
    redis_url: str, amqp_url: str, unique_prefix: str, tmp_path: Path
) -> None:
    runs_key = f"{unique_prefix}test:runs"
    async with cluster(redis_url, amqp_url, unique_prefix, tmp_path, grace=2) as (api, nodes):
        async with httpx.AsyncClient(base_url=api.url, timeout=30) as client:
            ids = await submit(client, 4, seconds=6)

            async def busy_node() -> list[NodeProcess]:
                return [node for node in nodes if running_on(redis_url, runs_key, node)]

            victim = (await wait_until(busy_node, bool, timeout=30))[0]
            survivor = next(node for node in nodes if node is not victim)
            victim.process.send_signal(signal.SIGTERM)
            in_flight = running_on(redis_url, runs_key, victim)

            # Past the grace its jobs go back to the queue and the node exits.
            await victim.exited(2 + 10)
            given_back = await all_statuses(client, sorted(in_flight))
            statuses = await wait_until(
                lambda: all_statuses(client, ids),
                lambda statuses: all(s["state"] in TERMINAL for s in statuses),
                timeout=60,
            )
            runs = runs_by_job(redis_url, runs_key)

    counts = tally(ids, statuses, runs)
    assert counts == Counter(accepted=4, terminal=4, succeeded=4), counts
    assert in_flight
    for status in given_back:  # queued again, or already running on the survivor
        assert status["state"] in ("queued", "running"), status
        assert status["error"]["errorId"] == "lost", status
        assert "shut down" in status["error"]["techMsg"], status
    attempts = {s["id"]: s["attempt"] for s in statuses}
    for job_id in in_flight:
        # Cut off on the victim, run again (to its end, once) on the survivor.
        assert runs[job_id] == [
            (victim.pid, "start"),
            (survivor.pid, "start"),
            (survivor.pid, "done"),
        ], runs[job_id]
        assert attempts[job_id] == 2
    assert set(runs) == set(ids)
