"""Leases (API.md section 13): a running job's node renews its lease; when it stops
renewing, any node's sweep takes the job back, and the old attempt's late outcome
changes nothing. In one process, with the memory backends (the cluster test with a
frozen node process is tests/cluster/test_lease_cluster.py)."""

from __future__ import annotations

from datetime import timedelta

import anyio
import msgspec
import pytest

from asyncproc import JobContext, Registry
from asyncproc.backends.memory import MemoryQueue, MemoryStateStore
from asyncproc.model import JobState, utcnow
from asyncproc.service import EnqueueRequest, JobService
from asyncproc.worker import WorkerPool
from tests.support import wait_until

pytestmark = pytest.mark.anyio

kinds = Registry()


class Run(msgspec.Struct):
    seconds: float


@kinds.job("slow", content=Run)
async def slow(ctx: JobContext, content: Run) -> dict[str, int]:
    """Sleeps `seconds`, reporting progress; answers its attempt."""
    await ctx.progress(percent=0, biz_step="sleeping")
    await anyio.sleep(content.seconds)
    await ctx.progress(percent=100, message=f"attempt {ctx.attempt}")
    return {"attempt": ctx.attempt}


def make_service(max_deliveries: int = 5) -> JobService:
    return JobService(
        registry=kinds,
        store=MemoryStateStore(),
        queue=MemoryQueue(),
        processing_timeout=60,
        retention=60,
        max_deliveries=max_deliveries,
    )


async def test_a_running_job_holds_a_lease_and_gives_it_up_when_done() -> None:
    service = make_service()
    pool = WorkerPool(service, lease=10)
    async with anyio.create_task_group() as tg:
        await tg.start(pool.run)
        job, _ = await service.enqueue("slow", request(0.3))
        await wait_until(lambda: service.get(job.id), lambda j: j.state is JobState.RUNNING)
        until = await wait_until(lambda: service.store.lease_of(job.id), lambda u: u is not None)
        assert until is not None
        assert until > utcnow()
        await wait_until(lambda: service.get(job.id), lambda j: j.state.terminal)
        assert await service.store.lease_of(job.id) is None
        pool.shutdown()


async def test_leases_are_renewed_while_the_job_runs() -> None:
    service = make_service()
    pool = WorkerPool(service, lease=0.6)
    async with anyio.create_task_group() as tg:
        await tg.start(pool.run)
        job, _ = await service.enqueue("slow", request(2))
        first = await wait_until(lambda: service.store.lease_of(job.id), lambda u: u is not None)
        assert first is not None
        await wait_until(
            lambda: service.store.lease_of(job.id), lambda u: u is not None and u > first
        )
        # Renewed, never lapsed: the sweep leaves it alone.
        await service.sweep()
        done = await wait_until(lambda: service.get(job.id), lambda j: j.state.terminal)
        assert (done.state, done.attempt) == (JobState.SUCCEEDED, 1)
        pool.shutdown()


async def test_a_lapsed_lease_is_taken_back_and_the_late_outcome_refused() -> None:
    service = make_service()
    # A long lease: this pool renews nothing during the test; the lapse is made by hand.
    pool = WorkerPool(service, lease=60)
    async with anyio.create_task_group() as tg:
        await tg.start(pool.run)
        job, _ = await service.enqueue("slow", request(0.5))
        running = await wait_until(
            lambda: service.get(job.id), lambda j: j.state is JobState.RUNNING
        )
        # The node "froze": its lease lapsed a second ago.
        await service.store.hold_lease([job.id], utcnow() - timedelta(seconds=1))
        await service.sweep()
        taken = await service.get(job.id)
        assert taken.error is not None
        assert taken.error.error_id == "lost"
        assert taken.attempt == running.attempt  # the next start counts the new attempt
        done = await wait_until(lambda: service.get(job.id), lambda j: j.state.terminal)
        # The first copy was cancelled when its job left `running`; the second ran.
        assert (done.state, done.attempt) == (JobState.SUCCEEDED, 2)
        result = await service.store.get_result(job.id)
        assert msgspec.json.decode(result or b"") == {"attempt": 2}
        pool.shutdown()


async def test_a_job_lost_too_often_is_a_dead_letter() -> None:
    service = make_service(max_deliveries=1)
    pool = WorkerPool(service, lease=60)
    async with anyio.create_task_group() as tg:
        await tg.start(pool.run)
        job, _ = await service.enqueue("slow", request(5))
        await wait_until(lambda: service.get(job.id), lambda j: j.state is JobState.RUNNING)
        await service.store.hold_lease([job.id], utcnow() - timedelta(seconds=1))
        await service.sweep()
        done = await service.get(job.id)
        assert done.state is JobState.FAILED
        assert done.error is not None
        assert done.error.error_id == "dead_letter"
        assert await service.store.lapsed(utcnow()) == []
        pool.shutdown()


async def test_a_lease_left_behind_is_dropped_by_the_sweep() -> None:
    service = make_service()
    job, _ = await service.enqueue("slow", request(0))
    await service.store.hold_lease([job.id], utcnow() - timedelta(seconds=1))
    await service.sweep()  # queued, not running: nothing to take back
    assert (await service.get(job.id)).state is JobState.QUEUED
    assert await service.store.lease_of(job.id) is None


def request(seconds: float) -> EnqueueRequest:
    return EnqueueRequest(content=msgspec.Raw(msgspec.json.encode({"seconds": seconds})))
