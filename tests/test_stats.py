"""`GET /api/stats` (API.md section 16): jobs per kind and state, and the last hour minute
by minute, over the whole cluster; on the memory store and on Redis."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from asyncproc.backends.memory import MemoryStateStore
from asyncproc.backends.redis import RedisStateStore
from asyncproc.config import load_settings
from asyncproc.interfaces import StateStore
from asyncproc.registry import load_plugins
from asyncproc.server import create_app
from tests.contract import delete_prefix
from tests.support import api_client, job_finished, post_json

pytestmark = pytest.mark.anyio

MakeApp = Callable[[], Any]


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def make_app(request: pytest.FixtureRequest) -> AsyncIterator[MakeApp]:
    """Builds demo nodes sharing one store: the memory store, or one Redis prefix."""
    shared: StateStore | None = MemoryStateStore() if request.param == "memory" else None
    url = prefix = ""
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        prefix = request.getfixturevalue("unique_prefix")

    def make() -> Any:
        store = shared if shared is not None else RedisStateStore(url, prefix=prefix)
        settings = load_settings(environ={}, sweep_interval=0.05, shutdown_grace=0.2)
        return create_app(settings, registry=load_plugins(["asyncproc.plugins.demo"]), store=store)

    try:
        yield make
    finally:
        if prefix:
            await delete_prefix(url, prefix)


def _minute(moment: datetime) -> datetime:
    return moment.replace(second=0, microsecond=0)


async def _run(client: Any, kind: str, content: Any) -> str:
    job = await post_json(client, f"/api/{kind}/enqueue", {"content": content}, 202)
    await job_finished(client, job["id"])
    return str(job["id"])


async def test_stats_count_jobs_per_kind_state_and_minute(make_app: MakeApp) -> None:
    async with api_client(make_app()) as client:
        before = datetime.now(UTC)
        await _run(client, "demo.count", {"n": 0})
        await _run(client, "demo.count", {"n": 0})
        await _run(client, "demo.fail", {"mode": "unhandled", "message": "boom"})
        await post_json(client, "/api/demo.count/enqueue", {"content": {"n": 0}, "delay": 60}, 202)
        response = await client.get("/api/stats")
        after = datetime.now(UTC)
        kinds_listed = {k["kind"] for k in (await client.get("/api/kinds")).json()}
    assert response.status_code == 200
    stats = response.json()
    states = {"queued", "running", "succeeded", "failed", "stopped"}
    # Every kind, every state, zero-filled.
    assert set(stats["kinds"]) == kinds_listed
    assert all(set(counts) == states for counts in stats["kinds"].values())
    assert stats["kinds"]["demo.count"] == {
        "queued": 1,
        "running": 0,
        "succeeded": 2,
        "failed": 0,
        "stopped": 0,
    }
    assert stats["kinds"]["demo.fail"]["failed"] == 1
    assert stats["kinds"]["demo.report"] == dict.fromkeys(states, 0)

    minutes = stats["perMinute"]
    assert len(minutes) == 60
    times = [datetime.fromisoformat(m["at"]) for m in minutes]
    assert all(b - a == timedelta(minutes=1) for a, b in itertools.pairwise(times))
    assert _minute(before) <= times[-1] <= _minute(after)
    assert all(set(m) == {"at", "enqueued", "succeeded", "failed"} for m in minutes)
    # This node's counts show before it flushed them.
    totals = {name: sum(m[name] for m in minutes) for name in ("enqueued", "succeeded", "failed")}
    assert totals == {"enqueued": 4, "succeeded": 2, "failed": 1}


async def test_stats_cover_every_node(make_app: MakeApp) -> None:
    first = make_app()
    async with api_client(first) as client:
        await _run(client, "demo.count", {"n": 0})
        # Another node: its counts reach the store at its next flush (here: when it stops).
        async with api_client(make_app()) as other:
            await _run(other, "demo.count", {"n": 0})
            await _run(other, "demo.fail", {"mode": "reported", "message": "no"})
        stats = (await client.get("/api/stats")).json()
    assert stats["kinds"]["demo.count"]["succeeded"] == 2
    assert stats["kinds"]["demo.fail"]["failed"] == 1
    minutes = stats["perMinute"]
    assert sum(m["enqueued"] for m in minutes) == 3
    assert sum(m["succeeded"] for m in minutes) == 2
    assert sum(m["failed"] for m in minutes) == 1
