"""A job kind for the cluster tests: records each run (job id, node pid) in Redis."""

from __future__ import annotations

import os

import anyio
import msgspec
import redis.asyncio as aioredis

from asyncproc import JobContext, Registry

registry = Registry()

# Test-only wiring: the cluster test passes these to every node it starts.
RUNS_KEY = os.environ.get("CLUSTER_TEST_RUNS_KEY", "asyncproc-test:runs")
REDIS_URL = os.environ.get("CLUSTER_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
_client: aioredis.Redis | None = None


class Work(msgspec.Struct):
    seconds: float = 0.1


def _redis() -> aioredis.Redis:
    global _client
    if _client is None:
        _client = aioredis.from_url(REDIS_URL)
    return _client


@registry.job("cluster.work", content=Work)
async def work(ctx: JobContext, content: Work) -> dict[str, int]:
    """Logs its start, sleeps, logs its end."""
    pid = os.getpid()
    await _redis().rpush(RUNS_KEY, f"{ctx.id}:{pid}:start")
    await ctx.progress(percent=0.0, biz_step="working")
    await anyio.sleep(content.seconds)
    await _redis().rpush(RUNS_KEY, f"{ctx.id}:{pid}:done")
    return {"pid": pid}
