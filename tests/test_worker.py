"""The worker pool on its own: graceful shutdown, messages without records, prefetch."""

from __future__ import annotations

import anyio
import msgspec
import pytest

from asyncproc import JobContext, Registry
from asyncproc.backends.memory import MemoryQueue, MemoryStateStore
from asyncproc.lifecycle import Start
from asyncproc.model import JobState
from asyncproc.service import EnqueueRequest, JobService
from asyncproc.worker import WorkerPool
from tests.support import wait_until

pytestmark = pytest.mark.anyio

kinds = Registry()
finished_cleanly: list[str] = []


class Nap(msgspec.Struct):
    seconds: float


@kinds.job("nap", content=Nap)
async def nap(ctx: JobContext, content: Nap) -> str:
    """Sleeps `seconds`."""
    await anyio.sleep(content.seconds)
    finished_cleanly.append(ctx.id)
    return "rested"


def make_service() -> JobService:
    return JobService(
        registry=kinds,
        store=MemoryStateStore(),
        queue=MemoryQueue(),
        processing_timeout=60,
        retention=60,
    )


def request(seconds: float) -> EnqueueRequest:
    return EnqueueRequest(content=msgspec.Raw(msgspec.json.encode({"seconds": seconds})))


async def test_shutdown_lets_running_jobs_finish_within_grace() -> None:
    service = make_service()
    pool = WorkerPool(service, concurrency=2, shutdown_grace=10)
    async with anyio.create_task_group() as tg:
        await tg.start(pool.run)
        job, _ = await service.enqueue("nap", request(0.3))
        await wait_until(lambda: service.get(job.id), lambda j: j.state is JobState.RUNNING)
        pool.shutdown()
    assert (await service.get(job.id)).state is JobState.SUCCEEDED


async def test_shutdown_past_grace_cancels_and_requeues() -> None:
    service = make_service()
    pool = WorkerPool(service, concurrency=2, shutdown_grace=0.1)
    async with anyio.create_task_group() as tg:
        await tg.start(pool.run)
        job, _ = await service.enqueue("nap", request(30))
        await wait_until(lambda: service.get(job.id), lambda j: j.state is JobState.RUNNING)
        pool.shutdown()
    after = await service.get(job.id)
    assert after.state is JobState.QUEUED  # given back for another worker
    assert after.error is not None
    assert after.error.error_id == "lost"
    assert await service.queue.depth("default") == 1
    # A new pool picks it up again.
    again = WorkerPool(service, concurrency=1)
    async with anyio.create_task_group() as tg:
        await tg.start(again.run)
        await wait_until(lambda: service.get(job.id), lambda j: j.state is JobState.RUNNING)
        assert (await service.get(job.id)).attempt == 2
        tg.cancel_scope.cancel()


async def test_message_without_record_is_dropped() -> None:
    service = make_service()
    pool = WorkerPool(service, concurrency=1)
    async with anyio.create_task_group() as tg:
        await tg.start(pool.run)
        await service.queue.publish("no-such-job", "default")
        job, _ = await service.enqueue("nap", request(0))
        await wait_until(lambda: service.get(job.id), lambda j: j.state is JobState.SUCCEEDED)
        assert await service.queue.depth("default") == 0
        tg.cancel_scope.cancel()


async def test_duplicate_delivery_runs_a_job_once() -> None:
    service = make_service()
    pool = WorkerPool(service, concurrency=4)
    async with anyio.create_task_group() as tg:
        await tg.start(pool.run)
        job, _ = await service.enqueue("nap", request(0.2))
        await service.queue.publish(job.id, "default")  # a second message for the same job
        done = await wait_until(lambda: service.get(job.id), lambda j: j.state.terminal)
        assert done.state is JobState.SUCCEEDED
        assert done.attempt == 1
        assert finished_cleanly.count(job.id) == 1
        tg.cancel_scope.cancel()


async def test_routings_are_consumed_only_by_their_workers() -> None:
    service = make_service()
    pool = WorkerPool(service, routings=["reports"], concurrency=1)
    async with anyio.create_task_group() as tg:
        await tg.start(pool.run)
        other = await service.enqueue(
            "nap", msgspec.structs.replace(request(0), proc_routing="default")
        )
        mine = await service.enqueue(
            "nap", msgspec.structs.replace(request(0), proc_routing="reports")
        )
        await wait_until(lambda: service.get(mine[0].id), lambda j: j.state.terminal)
        assert (await service.get(other[0].id)).state is JobState.QUEUED
        tg.cancel_scope.cancel()


async def test_job_of_a_lost_worker_runs_again() -> None:
    service = make_service()
    job, _ = await service.enqueue("nap", request(0))
    # A worker took it and died: the record says running, the message comes back.
    await service.transition(job.id, Start())
    service.queue.put_back(job.id, "default")  # type: ignore[attr-defined]
    pool = WorkerPool(service, concurrency=1)
    async with anyio.create_task_group() as tg:
        await tg.start(pool.run)
        done = await wait_until(lambda: service.get(job.id), lambda j: j.state.terminal)
        tg.cancel_scope.cancel()
    assert done.state is JobState.SUCCEEDED
    assert done.attempt == 2


async def test_job_lost_too_often_is_dead_lettered() -> None:
    service = make_service()
    queue = service.queue
    assert isinstance(queue, MemoryQueue)
    job, _ = await service.enqueue("nap", request(0))
    await service.transition(job.id, Start())

    async def dead() -> list[tuple[str, str]]:
        return queue.dead_letters

    pool = WorkerPool(service, concurrency=1, max_deliveries=1)
    async with anyio.create_task_group() as tg:
        await tg.start(pool.run)
        queue.put_back(job.id, "default")
        await wait_until(dead, lambda letters: letters == [("default", job.id)])
        tg.cancel_scope.cancel()
    done = await service.get(job.id)
    assert done.state is JobState.FAILED
    assert done.error is not None
    assert done.error.error_id == "dead_letter"
