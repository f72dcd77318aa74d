"""Three real nodes (Redis + RabbitMQ) fire one `every = "1s"` schedule: one job per tick.

Every node runs the scheduler; one is killed with SIGKILL half-way. What is
asserted comes from the jobs listed through the API: their requestIds name their
ticks, and every tick between the first and the last has exactly one job.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from asyncproc.schedule_times import tick_request_id
from tests.cluster import forget_cluster
from tests.support import ROOT, NodeProcess, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.cluster, pytest.mark.redis, pytest.mark.rabbitmq]

KIND = "demo.count"
CONFIG = f"""
concurrency = 4
shutdown_grace = "2s"

[[schedules]]
name = "every-second"
kind = "{KIND}"
content = {{ n = 0 }}
every = "1s"
overlap = "allow"
"""


@asynccontextmanager
async def three_nodes(
    redis_url: str, amqp_url: str, prefix: str, tmp_path: Path
) -> AsyncIterator[list[NodeProcess]]:
    config = tmp_path / "cluster.toml"
    config.write_text(CONFIG)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "ASYNCPROC_CONFIG": str(config),
        "ASYNCPROC_STATE": "redis",
        "ASYNCPROC_QUEUE": "rabbitmq",
        "ASYNCPROC_REDIS_URL": redis_url,
        "ASYNCPROC_AMQP_URL": amqp_url,
        "ASYNCPROC_KEY_PREFIX": prefix,
        "ASYNCPROC_ROLE": "all",
    }
    nodes = [NodeProcess(env, tmp_path)]
    try:
        nodes[0].wait_healthy()  # the first node declares the queues
        nodes += [NodeProcess(env, tmp_path) for _ in range(2)]
        for node in nodes[1:]:
            node.wait_healthy()
        yield nodes
    finally:
        for node in nodes:
            node.stop()
        await forget_cluster(redis_url, amqp_url, prefix)


async def scheduled_jobs(client: httpx.AsyncClient) -> list[dict[str, Any]]:
    """Every job of the schedule's kind, through the API (all pages)."""
    jobs: list[dict[str, Any]] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"kind": KIND, "limit": 200}
        if cursor:
            params["cursor"] = cursor
        response = await client.get("/api/jobs", params=params)
        assert response.status_code == 200, response.text
        page = response.json()
        jobs += page["items"]
        cursor = page["next"]
        if cursor is None:
            return jobs


def tick_of(job_id: str) -> datetime:
    stamp = job_id.rsplit(":", 1)[1].rstrip("Z")
    return datetime.strptime(stamp, "%Y%m%dT%H%M%S").replace(tzinfo=UTC)


async def test_three_schedulers_start_one_job_per_tick_even_when_one_is_killed(
    redis_url: str, amqp_url: str, unique_prefix: str, tmp_path: Path
) -> None:
    async with three_nodes(redis_url, amqp_url, unique_prefix, tmp_path) as nodes:
        victim, survivor = nodes[1], nodes[2]
        async with httpx.AsyncClient(base_url=survivor.url, timeout=30) as client:
            before = await wait_until(
                lambda: scheduled_jobs(client), lambda jobs: len(jobs) >= 10, timeout=60
            )
            victim.kill()  # SIGKILL, mid-run: no cleanup at all
            jobs = await wait_until(
                lambda: scheduled_jobs(client),
                lambda jobs: len(jobs) >= len(before) + 12,
                timeout=60,
            )
            paused = await client.post("/api/schedules/every-second/pause")
            assert paused.status_code == 200
            jobs = await scheduled_jobs(client)
            schedule = (await client.get("/api/schedules/every-second")).json()

    assert all(job["trigger"] == {"type": "schedule", "name": "every-second"} for job in jobs)
    ticks = sorted(tick_of(job["id"]) for job in jobs)
    for job in jobs:
        assert job["id"] == tick_request_id("every-second", tick_of(job["id"]))
    # No tick twice, and none missed between the first and the last, across the kill.
    assert len(set(ticks)) == len(ticks) == len(jobs)
    assert ticks == [ticks[0] + timedelta(seconds=i) for i in range(len(ticks))]
    assert schedule["source"] == "config"
    recent = schedule["recent"]
    assert len({run["at"] for run in recent}) == len(recent)
    assert all(run["outcome"] == "created" for run in recent)
