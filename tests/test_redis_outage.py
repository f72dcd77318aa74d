"""Redis going away and coming back: 503s (never 500s), then service as before.

The app talks to Redis through a small TCP relay the test switches on and off, so
"Redis is down" is real (connections refused, open ones cut) without touching the
server other tests share.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import urlsplit

import anyio
import anyio.lowlevel
import httpx
import pytest
import redis.asyncio as aioredis
from anyio.abc import SocketStream, TaskStatus

from asyncproc.backends.memory import MemoryQueue
from asyncproc.backends.redis import RedisStateStore
from asyncproc.config import Settings
from asyncproc.lifecycle import Report, Start
from asyncproc.server import create_app
from tests.contract import RecordingHub, delete_prefix, new_job
from tests.support import api_client, free_port, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


class Relay:
    """A TCP relay from a local port to the Redis server; off until `running`."""

    def __init__(self, target: str) -> None:
        parts = urlsplit(target)
        self.target = (parts.hostname or "127.0.0.1", parts.port or 6379)
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}{parts.path or '/0'}"

    @asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Relay while inside; leaving closes the port and cuts every open connection."""
        async with anyio.create_task_group() as tg:
            await tg.start(self._serve)
            try:
                yield
            finally:
                tg.cancel_scope.cancel()

    async def _serve(self, *, task_status: TaskStatus[None]) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=self.port)
        async with listener:
            task_status.started()
            await listener.serve(self._relay)

    async def _relay(self, client: SocketStream) -> None:
        async with client, await anyio.connect_tcp(*self.target) as server:

            async def pump(source: SocketStream, sink: SocketStream) -> None:
                try:
                    async for chunk in source:
                        await sink.send(chunk)
                except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                    pass
                finally:
                    tg.cancel_scope.cancel()

            async with anyio.create_task_group() as tg:
                tg.start_soon(pump, client, server)
                tg.start_soon(pump, server, client)


@pytest.fixture
async def relayed_app(redis_url: str, unique_prefix: str) -> AsyncIterator[tuple[Any, Relay]]:
    """An app whose Redis store goes through a relay that is off at start."""
    relay = Relay(redis_url)
    store = RedisStateStore(relay.url, prefix=unique_prefix, timeout=2.0)
    app = create_app(Settings(), store=store, queue=MemoryQueue())
    try:
        yield app, relay
    finally:
        await delete_prefix(redis_url, unique_prefix)


async def health(client: httpx.AsyncClient) -> httpx.Response:
    return await client.get("/health")


async def assert_unavailable(client: httpx.AsyncClient, job_id: str | None = None) -> None:
    """Every call that needs the store answers 503 naming redis."""
    response = await client.get("/health")
    assert response.status_code == 503
    state = response.json()["backends"]["state"]
    assert state["name"] == "redis"
    assert state["ok"] is False
    assert "redis" in state["error"]
    calls = [
        client.post("/api/demo.count/enqueue", json={"content": {"n": 1}}),
        client.get("/api/jobs"),
    ]
    if job_id is not None:
        calls += [
            client.get(f"/api/jobs/{job_id}"),
            client.post("/api/demo.count/stop", json={"id": job_id}),
        ]
    for call in calls:
        response = await call
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"]
        error = response.json()["error"]
        assert (error["code"], error["backend"]) == ("backend_unavailable", "redis")


async def run_one_job(client: httpx.AsyncClient) -> str:
    """Enqueue a short job and follow it by long poll to its result."""
    response = await client.post(
        "/api/demo.count/enqueue", json={"content": {"n": 3, "delay": 0.01}}
    )
    assert response.status_code == 202, response.text
    job = response.json()
    while job["state"] not in ("succeeded", "failed", "stopped"):
        response = await client.post(
            "/api/demo.count/progress", json={"id": job["id"], "wait": 10, "since": job["version"]}
        )
        assert response.status_code == 200, response.text
        job = response.json()
    assert job["state"] == "succeeded"
    response = await client.post("/api/demo.count/result", json={"id": job["id"]})
    assert response.json() == {"counted": 3}
    job_id: str = job["id"]
    return job_id


async def test_an_unreachable_redis_answers_503_then_recovers(
    relayed_app: tuple[Any, Relay],
) -> None:
    app, relay = relayed_app
    async with api_client(app) as client:
        # Redis was never reachable: the node still starts, and says why it cannot serve.
        await assert_unavailable(client)
        async with relay.running():
            await wait_until(lambda: health(client), lambda r: r.status_code == 200)
            job_id = await run_one_job(client)
        # Redis goes away under a running node...
        await assert_unavailable(client, job_id)
        async with relay.running():
            # ... and comes back: pooled connections and the change listener reconnect.
            await wait_until(lambda: health(client), lambda r: r.status_code == 200)
            assert (await client.get(f"/api/jobs/{job_id}")).json()["state"] == "succeeded"
            await run_one_job(client)


@pytest.fixture
async def two_nodes(
    redis_url: str, unique_prefix: str
) -> AsyncIterator[tuple[RedisStateStore, RedisStateStore]]:
    """Two started stores on the real server, sharing a prefix; the first records changes."""
    try:
        async with (
            RedisStateStore(redis_url, prefix=unique_prefix, hub=RecordingHub()) as first,
            RedisStateStore(redis_url, prefix=unique_prefix) as second,
        ):
            await first.start()
            await second.start()
            yield first, second
    finally:
        await delete_prefix(redis_url, unique_prefix)


async def kill_connections(url: str, client_name: str) -> int:
    """CLIENT KILL every connection of one store (found by its client name)."""
    admin = aioredis.Redis.from_url(url)
    try:
        clients = await admin.client_list()
        ids = [c["id"] for c in clients if c.get("name") == client_name]
        for client_id in ids:
            await admin.client_kill_filter(_id=client_id)
        return len(ids)
    finally:
        await admin.aclose()


async def test_killed_connections_reconnect_and_changes_resume(
    redis_url: str, two_nodes: tuple[RedisStateStore, RedisStateStore]
) -> None:
    node, other = two_nodes
    hub = node.hub
    assert isinstance(hub, RecordingHub)
    job, _ = await node.create(new_job())
    with hub.listen(job.id):  # this node watches the job, as a long poll would
        await node.get(job.id)  # (listen, then read: Redis knows it is watched)
        await node.transition(job.id, Start())
        await wait_until(anyio.lowlevel.checkpoint, lambda _: hub.versions(job.id) == [2])
        # Both the command pool and the pub/sub connection are cut.
        assert await kill_connections(redis_url, node.client_name) >= 2
        # A change made by another node while this one's listener is cut off still
        # reaches this node (delivered, or re-read when the listener resubscribes).
        await other.transition(job.id, Report(percent=10))
        await wait_until(anyio.lowlevel.checkpoint, lambda _: 3 in hub.versions(job.id))
    # The next call on the broken pool simply works.
    stored = await node.get(job.id)
    assert stored is not None
    assert stored.progress.percent == 10
    await wait_until(anyio.lowlevel.checkpoint, lambda _: node.listening)
    await other.transition(job.id, Report(percent=20))
    await wait_until(anyio.lowlevel.checkpoint, lambda _: 4 in hub.versions(job.id))
    assert (await node.transition(job.id, Report(percent=30))).version == 5


async def test_a_change_missed_during_an_outage_is_re_read(
    redis_url: str, unique_prefix: str
) -> None:
    relay = Relay(redis_url)
    hub = RecordingHub()
    try:
        async with (
            RedisStateStore(relay.url, prefix=unique_prefix, hub=hub) as node,
            RedisStateStore(redis_url, prefix=unique_prefix) as other,
        ):
            await other.start()
            job, _ = await other.create(new_job())
            with hub.listen(job.id):  # this node watches the job, as a long poll would
                async with relay.running():
                    await node.start()
                    await wait_until(anyio.lowlevel.checkpoint, lambda _: node.listening)
                await wait_until(anyio.lowlevel.checkpoint, lambda _: not node.listening)
                # Published while this node is cut off: its listener cannot hear it...
                await other.transition(job.id, Start())
                async with relay.running():
                    # ... so once back it re-reads every job it watches.
                    await wait_until(anyio.lowlevel.checkpoint, lambda _: 2 in hub.versions(job.id))
    finally:
        await delete_prefix(redis_url, unique_prefix)
