"""The StateStore contract for `Revive` (API.md section 13, dead letters): a job that
failed with `dead_letter` and is requeued becomes an unfinished record again, in
every store: it is no longer purged after retention, the sweeper sees its new
deadline, and it can run and finish again like any queued job.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
import redis.asyncio as aioredis

from asyncproc.backends.redis import RedisStateStore
from asyncproc.errors import TransitionRefused
from asyncproc.interfaces import StateStore
from asyncproc.lifecycle import DEAD_LETTER, Fail, Revive, Start, Succeed
from asyncproc.model import ErrorInfo, JobState, utcnow
from tests.contract import delete_prefix, new_job

pytestmark = pytest.mark.anyio

DEAD = ErrorInfo(error_id=DEAD_LETTER, tech_msg="delivered 5 times without finishing")


async def dead_job(store: StateStore, *, retention: float = 1.0) -> str:
    """A job that ran once and failed with `dead_letter`; its id."""
    job, _ = await store.create(new_job(deadline_in=3600, retention=retention))
    await store.transition(job.id, Start())
    failed = await store.transition(job.id, Fail(DEAD))
    assert failed.state is JobState.FAILED
    return job.id


async def test_revive_queues_a_dead_letter_with_its_attempt_kept(store: StateStore) -> None:
    job_id = await dead_job(store)
    failed = await store.get(job_id)
    assert failed is not None
    before, after = await store.change(job_id, Revive())
    assert before == failed
    assert after.state is JobState.QUEUED
    assert after.attempt == 1
    assert after.finished_at is None
    assert after.version > failed.version
    assert after.deadline > failed.deadline or after.deadline >= utcnow()
    assert await store.get(job_id) == after


async def test_a_revived_job_is_unfinished_again(store: StateStore) -> None:
    """Past the failed record's retention it is still there (not purged), and the
    sweeper finds it once its new processing deadline passes."""
    job_id = await dead_job(store, retention=1.0)
    later = utcnow() + timedelta(hours=2)
    assert job_id not in await store.overdue(later)
    revived = await store.transition(job_id, Revive())

    await store.purge_expired(utcnow() + timedelta(seconds=30))
    assert await store.get(job_id) == revived
    assert job_id in await store.overdue(later)
    assert job_id not in await store.overdue(utcnow())


async def test_a_revived_job_runs_and_finishes_again(store: StateStore) -> None:
    job_id = await dead_job(store, retention=1.0)
    await store.transition(job_id, Revive())
    running = await store.transition(job_id, Start())
    assert running.attempt == 2
    done = await store.transition(job_id, Succeed(2, "text/plain"), result=b"ok")
    assert done.state is JobState.SUCCEEDED
    assert await store.get_result(job_id) == b"ok"
    assert job_id not in await store.overdue(utcnow() + timedelta(hours=2))
    # Finished again: it expires after its retention as any finished record does.
    assert done.finished_at is not None
    assert done.expires_at == done.finished_at + timedelta(seconds=1)


async def test_revive_takes_failed_jobs_only(store: StateStore) -> None:
    job, _ = await store.create(new_job())
    with pytest.raises(TransitionRefused):
        await store.transition(job.id, Revive())  # queued
    await store.transition(job.id, Start())
    with pytest.raises(TransitionRefused):
        await store.transition(job.id, Revive())  # running
    await store.transition(job.id, Succeed())
    with pytest.raises(TransitionRefused):
        await store.transition(job.id, Revive())  # succeeded
    assert (await store.get(job.id)).state is JobState.SUCCEEDED  # type: ignore[union-attr]
    # Any failure may be requeued by an operator (a dead letter: a compensation that
    # failed for good fails with its own errorId).
    other, _ = await store.create(new_job())
    await store.transition(other.id, Start())
    await store.transition(other.id, Fail(ErrorInfo(error_id="undo_failed")))
    revived = await store.transition(other.id, Revive())
    assert (revived.state, revived.attempt) == (JobState.QUEUED, 1)


@pytest.mark.redis
async def test_redis_revive_restores_the_ttl_and_indexes(
    redis_url: str, unique_prefix: str
) -> None:
    """The record's TTL is an unfinished record's again (deadline + margin), its id is
    back in `due` and out of `exp`."""
    store = RedisStateStore(redis_url, prefix=unique_prefix)
    client = aioredis.Redis.from_url(redis_url)
    try:
        async with store:
            job_id = await dead_job(store, retention=10.0)
            record = f"{unique_prefix}job:{job_id}"
            assert 0 < await client.pttl(record) <= 10_000
            assert await client.zcard(f"{unique_prefix}exp") == 1
            assert await client.zscore(f"{unique_prefix}due", job_id) is None

            revived = await store.transition(job_id, Revive())
            assert await client.pttl(record) > 3_600_000  # at least deadline + the margin
            assert await client.zcard(f"{unique_prefix}exp") == 0
            score = await client.zscore(f"{unique_prefix}due", job_id)
            assert score == pytest.approx(revived.deadline.timestamp())

            # Finishing again gives it a finished record's TTL and `exp` entry back.
            await store.transition(job_id, Start())
            await store.transition(job_id, Fail(DEAD))
            assert 0 < await client.pttl(record) <= 10_000
            assert await client.zcard(f"{unique_prefix}exp") == 1
            assert await client.zscore(f"{unique_prefix}due", job_id) is None
    finally:
        await client.aclose()
        await delete_prefix(redis_url, unique_prefix)
