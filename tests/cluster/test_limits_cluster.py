"""Start limits across nodes (API.md section 13) with real node processes on Redis +
RabbitMQ: an api node and two worker nodes (16 slots each) run 8 `demo.limited` jobs
of 1 s, never more than 2 at once across both workers (from the records), and all
succeed on their first attempt."""

from __future__ import annotations

import os
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.cluster import forget_cluster
from tests.support import ROOT, NodeProcess, job_finished, post_json

pytestmark = [pytest.mark.anyio, pytest.mark.cluster, pytest.mark.redis, pytest.mark.rabbitmq]


def moment(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def most_at_once(jobs: list[dict[str, Any]]) -> int:
    """The most jobs running at one moment (an end at a start's moment does not overlap)."""
    edges = sorted(
        [(moment(job["startedAt"]), 1) for job in jobs]
        + [(moment(job["finishedAt"]), -1) for job in jobs]
    )
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


async def test_two_workers_run_at_most_two_limited_jobs_at_once(
    redis_url: str, amqp_url: str, unique_prefix: str, tmp_path: Path
) -> None:
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "ASYNCPROC_STATE": "redis",
        "ASYNCPROC_QUEUE": "rabbitmq",
        "ASYNCPROC_REDIS_URL": redis_url,
        "ASYNCPROC_AMQP_URL": amqp_url,
        "ASYNCPROC_KEY_PREFIX": unique_prefix,
        "ASYNCPROC_CONCURRENCY": "16",
        "ASYNCPROC_SHUTDOWN_GRACE": "1",
    }
    nodes = [
        NodeProcess({**env, "ASYNCPROC_ROLE": role}, tmp_path, role)
        for role in ("api", "worker", "worker")
    ]
    try:
        for node in nodes:
            node.wait_healthy()
        async with httpx.AsyncClient(base_url=nodes[0].url, timeout=30) as client:
            body = {"content": {"seconds": 1}}
            ids = [
                (await post_json(client, "/api/demo.limited/enqueue", body, 202))["id"]
                for _ in range(8)
            ]
            done = [await job_finished(client, job_id, timeout=90) for job_id in ids]
    finally:
        for node in nodes:
            node.stop()
        await forget_cluster(redis_url, amqp_url, unique_prefix)
    succeeded = sum(job["state"] == "succeeded" for job in done)
    duplicates = sum(job["attempt"] > 1 for job in done)
    print(
        f"accepted {len(ids)}, terminal {len(done)}, succeeded {succeeded}, "
        f"duplicates {duplicates}, lost {len(ids) - len(done)}, "
        f"most at once {most_at_once(done)}"
    )
    assert succeeded == 8
    assert duplicates == 0
    assert most_at_once(done) == 2
