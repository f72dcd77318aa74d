"""Mode (a): jobs through `JobService.enqueue` and a `WorkerPool` in this process.

No HTTP: this is the cost of the service layer, the lifecycle, the store, the
queue and the worker loop. Figures come from the job records themselves
(createdAt -> finishedAt), read back after every job finished.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import anyio
import msgspec

from asyncproc.config import Settings, load_settings
from asyncproc.registry import Registry
from asyncproc.server import open_queue, open_store
from asyncproc.service import EnqueueRequest, JobService
from asyncproc.worker import WorkerPool
from bench import noop_plugin
from bench.figures import Figures, Timing, timing_of

__all__ = ["Backends", "clean", "run_burst", "run_paced"]

REQUEST = EnqueueRequest(content=msgspec.Raw(b"{}"))


@dataclass(frozen=True)
class Backends:
    """Which StateStore and Queue to measure, and where the servers are."""

    state: str = "memory"
    queue: str = "memory"
    concurrency: int = 16
    # Over HTTP: an `api` node and a `worker` node as two processes (cluster backends only).
    split: bool = False

    def settings(self, prefix: str) -> Settings:
        """Settings for one run; cluster backends get a key prefix of their own."""
        return load_settings(
            state=self.state,
            queue=self.queue,
            key_prefix=prefix,
            concurrency=self.concurrency,
            plugins=[],
        )


@contextlib.asynccontextmanager
async def _service(backends: Backends) -> AsyncIterator[JobService]:
    prefix = f"asyncproc-bench-{uuid.uuid4().hex[:10]}:"
    settings = backends.settings(prefix)
    registry = Registry()
    registry.include(noop_plugin.registry)
    store, queue = open_store(settings), open_queue(settings)
    await store.start()
    try:
        await queue.start()
        try:
            service = JobService(
                registry=registry,
                store=store,
                queue=queue,
                processing_timeout=settings.processing_timeout,
                retention=settings.retention,
            )
            pool = WorkerPool(
                service,
                routings=settings.routings,
                concurrency=settings.concurrency,
                leases=settings.state != "memory",  # as create_app does
            )
            async with anyio.create_task_group() as tasks:
                await tasks.start(pool.run)
                try:
                    yield service
                finally:
                    pool.shutdown()
        finally:
            await queue.aclose()
    finally:
        await store.aclose()
        await clean(settings)


async def clean(settings: Settings) -> None:
    """Remove what a cluster run left on the servers (the memory backends leave nothing)."""
    if settings.state == "redis":
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(settings.redis_url)
        try:
            keys = [key async for key in client.scan_iter(match=settings.key_prefix + "*")]
            for start in range(0, len(keys), 1000):
                await client.delete(*keys[start : start + 1000])
        finally:
            await client.aclose()
    if settings.queue == "rabbitmq":
        import aiormq

        # The names of backends/rabbitmq.py's topology under the run's prefix.
        prefix = settings.key_prefix
        connection = await aiormq.connect(settings.amqp_url)
        try:
            channel = await connection.channel()
            for routing in settings.routings:
                await channel.queue_delete(f"{prefix}jobs.{routing}")
            await channel.queue_delete(f"{prefix}dead")
            await channel.exchange_delete(f"{prefix}jobs")
            await channel.exchange_delete(f"{prefix}dead")
        finally:
            await connection.close()


async def _wait_finished(service: JobService, ids: Sequence[str], timeout: float) -> None:
    """Return when every job is terminal; the newest first, so the rest cost one read each."""
    hub = service.store.hub
    with anyio.fail_after(timeout):
        for job_id in reversed(ids):
            while True:
                with hub.listen(job_id) as changed:
                    job = await service.store.get(job_id)
                    if job is None or job.state.terminal:
                        break
                    await changed.wait()


async def _timings(service: JobService, ids: Sequence[str]) -> list[Timing]:
    timings = []
    for job_id in ids:
        job = await service.store.get(job_id)
        if job is not None:
            timings.append(Timing(job.created_at, job.finished_at, job.state.value))
    return timings


async def run_burst(
    backends: Backends, jobs: int, *, producers: int = 32, timeout: float = 300.0
) -> Figures:
    """`producers` tasks enqueue `jobs` no-op jobs as fast as the service takes them
    (as many HTTP requests at once would); then wait for all to finish."""
    async with _service(backends) as service:
        ids: list[str] = []

        async def produce(count: int) -> None:
            for _ in range(count):
                job, _ = await service.enqueue(noop_plugin.KIND, REQUEST)
                ids.append(job.id)
                # The memory backends never suspend: let the worker run between
                # enqueues, as a server's event loop does between requests.
                await anyio.lowlevel.checkpoint()

        started = anyio.current_time()
        async with anyio.create_task_group() as tasks:
            for p in range(producers):
                tasks.start_soon(produce, jobs // producers + (p < jobs % producers))
        enqueued = anyio.current_time() - started
        await _wait_finished(service, ids, timeout)
        timings = await _timings(service, ids)
    figures = timing_of(f"(a) in-process burst {backends.state}/{backends.queue}", timings)
    figures.jobs = jobs
    figures.notes.append(f"enqueue alone {jobs / enqueued:,.0f}/s")
    return figures


async def run_paced(
    backends: Backends, rate: float, duration: float, *, timeout: float = 300.0
) -> Figures:
    """Offer `rate` jobs/s for `duration` seconds; latency is what this mode is for."""
    total = max(1, round(rate * duration))
    async with _service(backends) as service:
        ids: list[str] = []

        async def enqueue() -> None:
            job, _ = await service.enqueue(noop_plugin.KIND, REQUEST)
            ids.append(job.id)

        # Open loop: each enqueue is a task of its own, so a slow one (a cluster
        # round trip) does not hold back the schedule of the next.
        async with anyio.create_task_group() as tasks:
            started = anyio.current_time()
            for i in range(total):
                delay = started + i / rate - anyio.current_time()
                if delay > 0:
                    await anyio.sleep(delay)
                tasks.start_soon(enqueue)
            offered = total / max(anyio.current_time() - started, 1e-9)
        await _wait_finished(service, ids, timeout)
        timings = await _timings(service, ids)
    figures = timing_of(
        f"(a) in-process paced {backends.state}/{backends.queue}", timings, offered=total
    )
    figures.rate = offered
    figures.notes.append(f"offered {rate:,.0f}/s for {duration:g}s")
    return figures
