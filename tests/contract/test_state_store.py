"""The StateStore contract: every promise of the `StateStore` docstrings, per backend.

A new backend is one more entry in `BACKENDS` (and a branch in `_open`).
"""

from __future__ import annotations

import base64
import os
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from datetime import timedelta
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
import pytest
import redis.asyncio as aioredis

from asyncproc.backends.memory import MemoryStateStore
from asyncproc.backends.redis import RedisStateStore
from asyncproc.backends.redis_scripts import index_member
from asyncproc.errors import BadRequest, JobNotFound, KeyConflict, TransitionRefused
from asyncproc.interfaces import Created, Doc, JobQuery, StateStore
from asyncproc.lifecycle import (
    Fail,
    Report,
    RequestStop,
    Retry,
    Start,
    Stopped,
    Succeed,
    TimeOut,
)
from asyncproc.model import ErrorInfo, JobState, OnConflict, Uniqueness, utcnow
from tests.contract import RecordingHub, delete_prefix, new_job
from tests.support import wait_until

pytestmark = pytest.mark.anyio

BACKENDS = ["memory", pytest.param("redis", marks=pytest.mark.redis)]
BOOM = ErrorInfo(error_id="boom", biz_msg="it broke")


class Nodes:
    """The store under test and its peer: another node sharing the same data.

    For the in-process memory store the peer is the store itself.
    """

    def __init__(self, store: StateStore, peer: StateStore) -> None:
        self.store = store
        self.peer = peer


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> tuple[str, str, str]:
    """(name, server url, key prefix) of the backend under test."""
    if request.param == "redis":
        url = request.getfixturevalue("redis_url")
        return "redis", url, request.getfixturevalue("unique_prefix")
    return request.param, "", ""


@pytest.fixture
async def nodes(backend: tuple[str, str, str]) -> AsyncIterator[Nodes]:
    """Two started nodes of the backend; everything they stored is deleted afterwards."""
    name, url, prefix = backend
    async with AsyncExitStack() as stack:
        if name == "memory":
            store: StateStore = MemoryStateStore(RecordingHub())
            await stack.enter_async_context(store)
            yield Nodes(store, store)
            return
        stack.push_async_callback(delete_prefix, url, prefix)
        started = []
        for _ in range(2):
            node = RedisStateStore(url, prefix=prefix, hub=RecordingHub())
            await stack.enter_async_context(node)
            await node.start()
            started.append(node)
        yield Nodes(started[0], started[1])


@pytest.fixture
def store(nodes: Nodes) -> StateStore:
    """The store under test."""
    return nodes.store


async def tick() -> None:
    """A probe for `wait_until` when the condition is checked on local state."""
    await anyio.lowlevel.checkpoint()


def changes_of(store: StateStore) -> RecordingHub:
    """The recording hub the fixture gave `store`."""
    assert isinstance(store.hub, RecordingHub)
    return store.hub


async def test_ping_answers(store: StateStore) -> None:
    await store.ping()


async def test_create_then_get_round_trips_the_record(store: StateStore) -> None:
    job = new_job(key="k1", content=b'{"n": 3, "text": "h\\u00e9"}')
    stored, created = await store.create(job)
    assert created
    assert stored == job
    fetched = await store.get(job.id)
    assert fetched == job
    assert fetched is not None
    assert bytes(fetched.content) == bytes(job.content)
    assert fetched.headers == {"x-test": "yes"}


async def test_create_is_idempotent_by_id_whatever_the_kind(store: StateStore) -> None:
    job = new_job()
    await store.create(job)
    await store.transition(job.id, Start())
    again, created = await store.create(new_job(job.id, kind="demo.echo"))
    assert not created
    assert again.kind == "demo.count"
    assert again.state is JobState.RUNNING
    assert (await store.get(job.id)) == again


async def test_unknown_ids(store: StateStore) -> None:
    assert await store.get("nope") is None
    assert await store.get_result("nope") is None
    with pytest.raises(JobNotFound):
        await store.transition("nope", Start())


async def test_active_key_is_held_by_queued_and_running_jobs(store: StateStore) -> None:
    first, _ = await store.create(new_job(key="k"), uniqueness=Uniqueness.ACTIVE)
    with pytest.raises(KeyConflict) as conflict:
        await store.create(new_job(key="k"), uniqueness=Uniqueness.ACTIVE)
    assert conflict.value.extra["jobId"] == first.id
    await store.transition(first.id, Start())
    with pytest.raises(KeyConflict):
        await store.create(new_job(key="k"), uniqueness=Uniqueness.ACTIVE)
    # Another kind, or a kind without a rule, is not bound by it.
    await store.create(new_job(key="k", kind="demo.echo"), uniqueness=Uniqueness.ACTIVE)
    await store.create(new_job(key="k"))
    await store.transition(first.id, Succeed())
    second, created = await store.create(new_job(key="k"), uniqueness=Uniqueness.ACTIVE)
    assert created
    with pytest.raises(KeyConflict) as conflict:
        await store.create(new_job(key="k"), uniqueness=Uniqueness.ACTIVE)
    assert conflict.value.extra["jobId"] == second.id
    # An active key is never "released": it frees itself when the job ends.
    assert not await store.release_key("demo.count", "k")


async def test_a_refused_create_stores_nothing(store: StateStore) -> None:
    await store.create(new_job(key="k"), uniqueness=Uniqueness.ACTIVE)
    loser = new_job(key="k")
    with pytest.raises(KeyConflict):
        await store.create(loser, uniqueness=Uniqueness.ACTIVE)
    assert await store.get(loser.id) is None
    page = await store.list_jobs(JobQuery(key="k"))
    assert loser.id not in [job.id for job in page.items]


async def test_once_key_is_held_by_a_succeeded_job_until_released(store: StateStore) -> None:
    once = Uniqueness.ONCE
    failed, _ = await store.create(new_job(key="k"), uniqueness=once)
    await store.transition(failed.id, Fail(BOOM))  # failed jobs do not hold it
    stopped, _ = await store.create(new_job(key="k"), uniqueness=once)
    await store.transition(stopped.id, RequestStop())  # nor stopped ones
    job, created = await store.create(new_job(key="k"), uniqueness=once)
    assert created
    assert not await store.release_key("demo.count", "k")  # still running: not released
    await store.transition(job.id, Start())
    await store.transition(job.id, Succeed())
    with pytest.raises(KeyConflict) as conflict:
        await store.create(new_job(key="k"), uniqueness=once)
    assert conflict.value.extra["jobId"] == job.id
    assert await store.release_key("demo.count", "k")
    assert not await store.release_key("demo.count", "k")
    _, created = await store.create(new_job(key="k"), uniqueness=once)
    assert created
    assert not await store.release_key("demo.count", "never-used")


async def test_a_once_key_outlives_its_job_and_a_reused_id(store: StateStore) -> None:
    job, _ = await store.create(new_job("reused", key="k", retention=0), uniqueness=Uniqueness.ONCE)
    await store.transition(job.id, Start())
    await store.transition(job.id, Succeed())  # zero retention: gone at once
    assert await store.get(job.id) is None
    with pytest.raises(KeyConflict):
        await store.create(new_job(key="k"), uniqueness=Uniqueness.ONCE)
    # The id is used again, by another kind; the key still belongs to the old job.
    await store.create(new_job("reused", kind="demo.echo"))
    assert await store.release_key("demo.count", "k")
    _, created = await store.create(new_job(key="k"), uniqueness=Uniqueness.ONCE)
    assert created


async def test_refused_transitions_change_nothing(nodes: Nodes) -> None:
    store = nodes.store
    job, _ = await store.create(new_job())
    for event in (Succeed(), Stopped(), Report(percent=5), Retry()):
        with pytest.raises(TransitionRefused) as refused:
            await store.transition(job.id, event)
        assert refused.value.job == job
    await store.transition(job.id, Start())
    done = await store.transition(job.id, Succeed(2, "application/json"), result=b"{}")
    for event in (Start(), Fail(BOOM), RequestStop(), TimeOut(), Report(percent=1)):
        with pytest.raises(TransitionRefused) as refused:
            await nodes.peer.transition(job.id, event)
        assert refused.value.job == done
    assert await store.get(job.id) == done
    assert await store.get_result(job.id) == b"{}"


async def test_version_strictly_increases_and_every_write_is_published(store: StateStore) -> None:
    job, _ = await store.create(new_job())
    versions = [job.version]
    # Watched (listen, then read: the discipline of `ChangeHub.listen`): every write is told.
    with store.hub.listen(job.id):
        await store.get(job.id)
        for event in (
            Start(),
            Report(percent=10, biz_step="load"),
            Report(message="row 1"),
            Retry(BOOM),
            Start(),
            RequestStop(),
            Stopped(),
        ):
            job = await store.transition(job.id, event)
            assert job.version > versions[-1]
            versions.append(job.version)
    assert job.state is JobState.STOPPED
    hub = changes_of(store)
    await wait_until(tick, lambda _: hub.versions(job.id)[-1:] == [versions[-1]])
    assert [v for v in hub.versions(job.id) if v > versions[0]] == versions[1:]


async def test_a_change_that_changes_nothing_writes_nothing(store: StateStore) -> None:
    job, _ = await store.create(new_job())
    with store.hub.listen(job.id):
        await store.get(job.id)  # watched: every write is told
        await _writes_that_change_nothing(store, job.id)


async def _writes_that_change_nothing(store: StateStore, job_id: str) -> None:
    job = await store.transition(job_id, Start())
    job = await store.transition(job.id, Report(percent=50, biz_step="x"))
    same = await store.transition(job.id, Report(percent=50, biz_step="x"))
    assert same.version == job.version
    flagged = await store.transition(job.id, RequestStop())
    assert (await store.transition(job.id, RequestStop())).version == flagged.version
    stopped = await store.transition(job.id, Stopped())
    assert (await store.transition(job.id, RequestStop())) == stopped
    assert await store.get(job.id) == stopped
    hub = changes_of(store)
    await wait_until(tick, lambda _: stopped.version in hub.versions(job.id))
    # The writes after the creation (told only when watched, on Redis), once each.
    assert [v for v in hub.versions(job.id) if v > 1] == [2, 3, 4, 5]


@pytest.mark.parametrize("data", [b"", b"a,b\n1,2\n", bytes(range(256)) * 3])
async def test_results_round_trip(store: StateStore, data: bytes) -> None:
    job, _ = await store.create(new_job())
    await store.transition(job.id, Start())
    assert await store.get_result(job.id) is None
    done = await store.transition(job.id, Succeed(len(data), "text/csv"), result=data)
    assert (done.result_size, done.result_mime) == (len(data), "text/csv")
    assert await store.get_result(job.id) == data


async def test_a_64_mib_result_round_trips_byte_for_byte(store: StateStore) -> None:
    data = os.urandom(64 * 1024 * 1024)
    job, _ = await store.create(new_job())
    await store.transition(job.id, Start())
    await store.transition(job.id, Succeed(len(data), "application/octet-stream"), result=data)
    assert await store.get_result(job.id) == data


async def test_results_exist_only_for_succeeded_jobs(store: StateStore) -> None:
    empty, _ = await store.create(new_job())
    await store.transition(empty.id, Start())
    done = await store.transition(empty.id, Succeed())
    assert (done.result_size, done.result_mime) == (None, None)
    assert await store.get_result(empty.id) is None
    failed, _ = await store.create(new_job())
    await store.transition(failed.id, Start())
    # A result handed with any other event is not stored.
    with pytest.raises(TransitionRefused):
        await store.transition(failed.id, Stopped(), result=b"no")
    await store.transition(failed.id, Fail(BOOM), result=b"no")
    assert await store.get_result(failed.id) is None


async def test_finished_at_and_expires_at(store: StateStore) -> None:
    job, _ = await store.create(new_job(retention=60))
    assert job.finished_at is None
    assert job.expires_at == job.deadline
    running = await store.transition(job.id, Start())
    assert running.finished_at is None
    done = await store.transition(job.id, Fail(BOOM))
    assert done.finished_at is not None
    assert done.expires_at == done.finished_at + timedelta(seconds=60)


async def test_terminal_jobs_expire_after_retention(store: StateStore) -> None:
    keep, _ = await store.create(new_job(retention=3600))
    gone, _ = await store.create(new_job(retention=1))
    await store.transition(keep.id, Start())
    await store.transition(keep.id, Succeed(1, "text/plain"), result=b"k")
    await store.transition(gone.id, Start())
    # Finished two seconds ago with one second of retention: already purged.
    await store.transition(
        gone.id, Succeed(1, "text/plain"), result=b"g", now=utcnow() - timedelta(seconds=2)
    )
    assert await store.get(gone.id) is None
    assert await store.get_result(gone.id) is None
    with pytest.raises(JobNotFound):
        await store.transition(gone.id, RequestStop())
    await store.purge_expired(utcnow())
    assert [job.id for job in (await store.list_jobs(JobQuery())).items] == [keep.id]
    assert await store.get_result(keep.id) == b"k"
    # The id is free again once its record expired.
    _, created = await store.create(new_job(gone.id))
    assert created


async def test_expiry_happens_with_time(store: StateStore) -> None:
    job, _ = await store.create(new_job(retention=0.3))
    await store.transition(job.id, Start())
    await store.transition(job.id, Succeed(1, "text/plain"), result=b"x")
    await wait_until(lambda: store.get(job.id), lambda found: found is None)
    assert await store.get_result(job.id) is None
    assert (await store.list_jobs(JobQuery())).items == []


async def test_unfinished_jobs_outlive_their_deadline(store: StateStore) -> None:
    late, _ = await store.create(new_job(deadline_in=-5, retention=0))
    assert await store.get(late.id) == late
    assert await store.overdue(utcnow()) == [late.id]
    failed = await store.transition(late.id, TimeOut())
    assert failed.error is not None
    assert failed.error.error_id == "timeout"


async def test_list_is_newest_first_each_job_once(store: StateStore) -> None:
    base = utcnow()
    jobs = []
    # Three share a createdAt: ties go by id, descending.
    for n, (offset, job_id) in enumerate(
        [(0, "j-a"), (1, "j-c"), (1, "j-b"), (1, "j-d"), (2, "j-e"), (3, "j-f"), (4, "j-g")]
    ):
        job = new_job(
            job_id,
            kind="demo.count" if n % 2 else "demo.echo",
            key="even" if n % 2 == 0 else None,
            created_at=base + timedelta(seconds=offset),
        )
        jobs.append((await store.create(job))[0])
    expected = [j.id for j in sorted(jobs, key=lambda j: (j.created_at, j.id), reverse=True)]
    assert expected[:5] == ["j-g", "j-f", "j-e", "j-d", "j-c"]
    for limit in (1, 2, 3, 7, 50):
        seen: list[str] = []
        cursor = None
        for _ in range(10):
            page = await store.list_jobs(JobQuery(limit=limit, cursor=cursor))
            assert len(page.items) <= limit
            seen += [job.id for job in page.items]
            cursor = page.next
            if cursor is None:
                break
        assert seen == expected, limit


@pytest.fixture(params=["few", "many"])
def in_state(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Redis lists by state from the state's sets while they are small ("few"), else by
    walking an index ("many"): both ways are checked (the memory store has one way)."""
    if request.param == "many":
        monkeypatch.setattr("asyncproc.backends.redis._FEW_IN_STATE", 0)
    return str(request.param)


async def test_list_filters(store: StateStore, in_state: str) -> None:
    base = utcnow()
    a, _ = await store.create(new_job("f-a", kind="demo.echo", key="k1", created_at=base))
    b, _ = await store.create(new_job("f-b", key="k1", created_at=base + timedelta(seconds=1)))
    c, _ = await store.create(new_job("f-c", key="k2", created_at=base + timedelta(seconds=2)))
    await store.transition(b.id, Start())

    async def ids(**filters: Any) -> list[str]:
        page = await store.list_jobs(JobQuery(limit=1, **filters))
        found = [job.id for job in page.items]
        while page.next is not None:
            page = await store.list_jobs(JobQuery(limit=1, cursor=page.next, **filters))
            found += [job.id for job in page.items]
        return found

    assert await ids() == ["f-c", "f-b", "f-a"]
    assert await ids(kind="demo.count") == ["f-c", "f-b"]
    assert await ids(kind="demo.echo") == ["f-a"]
    assert await ids(state=JobState.RUNNING) == ["f-b"]
    assert await ids(state=JobState.QUEUED) == ["f-c", "f-a"]
    assert await ids(key="k1") == ["f-b", "f-a"]
    assert await ids(key="k1", kind="demo.count", state=JobState.RUNNING) == ["f-b"]
    assert await ids(key="k1", state=JobState.SUCCEEDED) == []
    assert await ids(kind="demo.nothing") == []
    assert c.id == "f-c"
    assert a.id == "f-a"


@pytest.mark.parametrize(
    "cursor",
    [
        "not base64!",
        base64.urlsafe_b64encode(b"yesterday|x").decode(),
        # A time without a zone cannot be compared with the stored ones.
        base64.urlsafe_b64encode(b"2026-01-01T00:00:00|x").decode(),
    ],
)
async def test_a_bad_cursor_is_a_bad_request(store: StateStore, cursor: str) -> None:
    await store.create(new_job())
    with pytest.raises(BadRequest):
        await store.list_jobs(JobQuery(cursor=cursor))


async def test_overdue_lists_unfinished_jobs_past_their_deadline(store: StateStore) -> None:
    now = utcnow()
    queued, _ = await store.create(new_job(deadline_in=-10))
    running, _ = await store.create(new_job(deadline_in=-5))
    # It started in time, and is still running past its deadline.
    await store.transition(running.id, Start(), now=running.deadline - timedelta(seconds=1))
    finished, _ = await store.create(new_job(deadline_in=-5))
    await store.transition(finished.id, Fail(BOOM))
    await store.create(new_job(deadline_in=600))
    assert sorted(await store.overdue(now)) == sorted([queued.id, running.id])
    assert await store.overdue(now - timedelta(seconds=7)) == [queued.id]
    assert len(await store.overdue(now, limit=1)) == 1
    await store.transition(queued.id, TimeOut())
    assert await store.overdue(now) == [running.id]


async def test_changes_reach_the_hub(store: StateStore) -> None:
    job, _ = await store.create(new_job())
    with store.hub.listen(job.id) as changed:
        await store.transition(job.id, Start())
        with anyio.fail_after(10):
            await changed.wait()
    stops: list[JobState] = []
    with store.hub.on_stop(job.id, lambda change: stops.append(change.state)):
        await store.transition(job.id, RequestStop())
        await wait_until(tick, lambda _: stops == [JobState.RUNNING])


async def test_changes_reach_every_node(nodes: Nodes) -> None:
    job, _ = await nodes.store.create(new_job())
    with nodes.peer.hub.listen(job.id) as changed:
        await nodes.peer.get(job.id)  # listen, then read: the peer is known to watch it
        running = await nodes.store.transition(job.id, Start())
        with anyio.fail_after(10):
            await changed.wait()
    assert await nodes.peer.get(job.id) == running
    stops: list[bool] = []
    with nodes.peer.hub.on_stop(job.id, lambda change: stops.append(change.stop_requested)):
        await nodes.store.transition(job.id, RequestStop())
        await wait_until(tick, lambda _: stops == [True])


async def test_racing_starts_have_one_winner(nodes: Nodes) -> None:
    outcomes: list[str] = []

    async def start(node: StateStore, job_id: str) -> None:
        try:
            await node.transition(job_id, Start())
            outcomes.append("won")
        except TransitionRefused as refused:
            outcomes.append(f"refused {refused.job.state}")

    for _ in range(5):
        job, _ = await nodes.store.create(new_job())
        outcomes.clear()
        async with anyio.create_task_group() as tg:
            for node in (nodes.store, nodes.peer, nodes.store, nodes.peer):
                tg.start_soon(start, node, job.id)
        assert sorted(outcomes) == ["refused running"] * 3 + ["won"]
        stored = await nodes.store.get(job.id)
        assert stored is not None
        assert (stored.attempt, stored.version) == (1, 2)


async def test_concurrent_writes_are_never_lost(nodes: Nodes) -> None:
    job, _ = await nodes.store.create(new_job())
    await nodes.store.transition(job.id, Start())
    async with anyio.create_task_group() as tg:
        for n in range(20):
            node = nodes.store if n % 2 else nodes.peer
            tg.start_soon(node.transition, job.id, Report(message=f"step {n}"))
    stored = await nodes.peer.get(job.id)
    assert stored is not None
    assert stored.version == 2 + 20


# -- Redis only ------------------------------------------------------------------


@pytest.fixture
async def redis_store(redis_url: str, unique_prefix: str) -> AsyncIterator[RedisStateStore]:
    """One started Redis node under its own prefix, deleted afterwards."""
    async with RedisStateStore(redis_url, prefix=unique_prefix) as store:
        await store.start()
        try:
            yield store
        finally:
            await delete_prefix(redis_url, unique_prefix)


@pytest.mark.redis
async def test_redis_keys_live_under_the_prefix_and_expire_by_ttl(
    redis_store: RedisStateStore,
) -> None:
    store = redis_store
    client = aioredis.Redis.from_url(store.url)
    try:
        job, _ = await store.create(new_job(key="k", retention=0.5), uniqueness=Uniqueness.ONCE)
        await store.transition(job.id, Start())
        await store.transition(job.id, Succeed(1, "text/plain"), result=b"x")
        keys = {key.decode() async for key in client.scan_iter(match="*" + job.id + "*")}
        assert keys
        assert all(key.startswith(store.prefix) for key in keys)
        ttl = await client.pttl(f"{store.prefix}job:{job.id}")
        assert 0 < ttl <= 500
        # Redis drops the record by itself: no node has to stay alive for it.
        await wait_until(lambda: client.exists(f"{store.prefix}job:{job.id}"), lambda n: n == 0)
        assert await store.purge_expired(utcnow()) == 1
        all_keys = {key.decode() async for key in client.scan_iter(match=store.prefix + "*")}
        # What is left: the succeeded `once` job's hold on its key, until released, and
        # the names of the kinds jobs were created of (one entry per kind, not per job).
        assert all_keys == {f"{store.prefix}hold:demo.count:k", f"{store.prefix}kinds"}
        assert await client.smembers(f"{store.prefix}kinds") == {b"demo.count"}
        assert await store.release_key("demo.count", "k")
    finally:
        await client.aclose()


@pytest.mark.redis
async def test_redis_unfinished_records_keep_a_ttl(
    redis_store: RedisStateStore,
) -> None:
    store = redis_store
    client = aioredis.Redis.from_url(store.url)
    try:
        job, _ = await store.create(new_job(deadline_in=60, retention=10))
        await store.transition(job.id, Start())
        ttl = await client.pttl(f"{store.prefix}job:{job.id}")
        # At least deadline + retention, so the sweeper can still time it out.
        assert ttl > 70_000
    finally:
        await client.aclose()


# -- key conflicts (API.md section 6) ----------------------------------------------

RULED = [Uniqueness.ACTIVE, Uniqueness.ONCE]


@pytest.mark.parametrize("rule", RULED)
async def test_reject_names_the_holder_and_stores_nothing(
    store: StateStore, rule: Uniqueness
) -> None:
    holder, _ = await store.create(new_job(key="k"), uniqueness=rule)
    loser = new_job(key="k")
    with pytest.raises(KeyConflict) as conflict:
        await store.insert(loser, uniqueness=rule, on_conflict=OnConflict.REJECT)
    assert conflict.value.extra["jobId"] == holder.id
    assert await store.get(loser.id) is None
    assert await store.key_holder("demo.count", "k") == holder


@pytest.mark.parametrize("rule", RULED)
async def test_existing_answers_the_holder(store: StateStore, rule: Uniqueness) -> None:
    holder, _ = await store.create(new_job(key="k"), uniqueness=rule)
    running = await store.transition(holder.id, Start())
    other = new_job(key="k")
    outcome = await store.insert(other, uniqueness=rule, on_conflict=OnConflict.EXISTING)
    assert outcome == Created(running, False)
    assert await store.get(other.id) is None
    page = await store.list_jobs(JobQuery(key="k"))
    assert [job.id for job in page.items] == [holder.id]


async def test_existing_answers_a_succeeded_once_holder(store: StateStore) -> None:
    holder, _ = await store.create(new_job(key="k"), uniqueness=Uniqueness.ONCE)
    await store.transition(holder.id, Start())
    done = await store.transition(holder.id, Succeed())
    outcome = await store.insert(
        new_job(key="k"), uniqueness=Uniqueness.ONCE, on_conflict=OnConflict.EXISTING
    )
    assert outcome == Created(done, False)


async def test_existing_on_a_free_key_creates(store: StateStore) -> None:
    job = new_job(key="k")
    outcome = await store.insert(job, uniqueness=Uniqueness.ACTIVE, on_conflict=OnConflict.EXISTING)
    assert outcome == Created(job, True)


@pytest.mark.parametrize("rule", RULED)
async def test_replace_stops_a_queued_holder_at_once(nodes: Nodes, rule: Uniqueness) -> None:
    store = nodes.store
    holder, _ = await store.create(new_job(key="k"), uniqueness=rule)
    job = new_job(key="k")
    outcome = await store.insert(job, uniqueness=rule, on_conflict=OnConflict.REPLACE)
    assert outcome.created
    assert outcome.job == job  # the holder is already terminal: nothing to wait for
    assert outcome.job.after is None
    assert outcome.replaced is not None
    before, after = outcome.replaced
    assert before == holder
    assert after.state is JobState.STOPPED
    assert after.stop_requested
    assert after.version > holder.version
    assert await nodes.peer.get(holder.id) == after
    assert await nodes.peer.get(job.id) == job
    assert await nodes.peer.key_holder("demo.count", "k") == job
    # The holder's stop is told (every node must hear it: `rules.must_tell`).
    hub = changes_of(store)
    await wait_until(tick, lambda _: hub.versions(holder.id)[-1:] == [after.version])
    # The new job starts like any other.
    assert (await store.transition(job.id, Start())).state is JobState.RUNNING


@pytest.mark.parametrize("rule", RULED)
async def test_replace_asks_a_running_holder_to_stop(nodes: Nodes, rule: Uniqueness) -> None:
    holder, _ = await nodes.peer.create(new_job(key="k"), uniqueness=rule)
    running = await nodes.peer.transition(holder.id, Start())
    stops: list[bool] = []
    # The node running the holder hears the stop request through its hub.
    with nodes.peer.hub.on_stop(holder.id, lambda change: stops.append(change.stop_requested)):
        job = new_job(key="k")
        outcome = await nodes.store.insert(job, uniqueness=rule, on_conflict=OnConflict.REPLACE)
        await wait_until(tick, lambda _: stops == [True])
    assert outcome.created
    assert outcome.job.after == holder.id
    assert outcome.replaced is not None
    before, after = outcome.replaced
    assert before == running
    assert (after.state, after.stop_requested) == (JobState.RUNNING, True)
    assert await nodes.peer.get(job.id) == outcome.job
    assert await nodes.peer.key_holder("demo.count", "k") == outcome.job
    # The new job does not start while the holder runs, nor before the worker vouches
    # that the holder ended.
    with pytest.raises(TransitionRefused):
        await nodes.store.transition(job.id, Start())
    await nodes.peer.transition(holder.id, Stopped())
    # The old holder's end leaves the key to the new job.
    assert await nodes.store.key_holder("demo.count", "k") == outcome.job
    started = await nodes.store.transition(job.id, Start(after_ended=True))
    assert started.state is JobState.RUNNING


async def test_replace_of_a_holder_already_asked_to_stop_writes_nothing(store: StateStore) -> None:
    holder, _ = await store.create(new_job(key="k"), uniqueness=Uniqueness.ACTIVE)
    await store.transition(holder.id, Start())
    flagged = await store.transition(holder.id, RequestStop())
    outcome = await store.insert(
        new_job(key="k"), uniqueness=Uniqueness.ACTIVE, on_conflict=OnConflict.REPLACE
    )
    assert outcome.replaced == (flagged, flagged)
    assert outcome.job.after == holder.id
    assert await store.get(holder.id) == flagged


async def test_replace_of_a_waiting_holder_waits_for_what_it_waited_for(
    store: StateStore,
) -> None:
    first, _ = await store.create(new_job(key="k"), uniqueness=Uniqueness.ACTIVE)
    await store.transition(first.id, Start())
    replace = OnConflict.REPLACE
    second = await store.insert(new_job(key="k"), uniqueness=Uniqueness.ACTIVE, on_conflict=replace)
    assert second.job.after == first.id
    # The second is still queued: a third stops it at once, but the first still runs,
    # so the third waits for the first (else two jobs of the key would run).
    third = await store.insert(new_job(key="k"), uniqueness=Uniqueness.ACTIVE, on_conflict=replace)
    assert third.replaced is not None
    assert third.replaced[1].state is JobState.STOPPED
    assert third.job.after == first.id
    assert await store.key_holder("demo.count", "k") == third.job


async def test_replace_under_once_releases_a_succeeded_holder(store: StateStore) -> None:
    holder, _ = await store.create(new_job(key="k"), uniqueness=Uniqueness.ONCE)
    await store.transition(holder.id, Start())
    done = await store.transition(holder.id, Succeed(1, "text/plain"), result=b"x")
    job = new_job(key="k")
    outcome = await store.insert(job, uniqueness=Uniqueness.ONCE, on_conflict=OnConflict.REPLACE)
    assert outcome == Created(job, True)  # nothing to stop: the holder is only released
    assert outcome.job.after is None
    assert await store.get(holder.id) == done
    assert await store.get_result(holder.id) == b"x"
    assert await store.key_holder("demo.count", "k") == job
    # The new job holds the key now: it is not the old one's to release.
    assert not await store.release_key("demo.count", "k")


async def test_a_purged_once_holder_still_holds_until_replaced(store: StateStore) -> None:
    once = Uniqueness.ONCE
    holder, _ = await store.create(new_job(key="k", retention=0), uniqueness=once)
    await store.transition(holder.id, Start())
    await store.transition(holder.id, Succeed())  # zero retention: gone at once
    assert await store.key_holder("demo.count", "k") is None
    with pytest.raises(KeyConflict) as conflict:
        await store.insert(new_job(key="k"), uniqueness=once, on_conflict=OnConflict.EXISTING)
    assert conflict.value.extra["jobId"] == holder.id
    job = new_job(key="k")
    outcome = await store.insert(job, uniqueness=once, on_conflict=OnConflict.REPLACE)
    assert outcome == Created(job, True)
    assert await store.key_holder("demo.count", "k") == job


@pytest.mark.parametrize("policy", list(OnConflict))
async def test_a_known_id_answers_before_any_key_rule(
    store: StateStore, policy: OnConflict
) -> None:
    job, _ = await store.create(new_job(key="k"), uniqueness=Uniqueness.ACTIVE)
    outcome = await store.insert(
        new_job(job.id, key="k"), uniqueness=Uniqueness.ACTIVE, on_conflict=policy
    )
    assert outcome == Created(job, False)
    assert await store.get(job.id) == job


async def test_key_holder(store: StateStore) -> None:
    assert await store.key_holder("demo.count", "never-used") is None
    active, _ = await store.create(new_job(key="a"), uniqueness=Uniqueness.ACTIVE)
    assert await store.key_holder("demo.count", "a") == active
    assert await store.key_holder("demo.echo", "a") is None  # keys are per kind
    running = await store.transition(active.id, Start())
    assert await store.key_holder("demo.count", "a") == running
    await store.transition(running.id, Fail(BOOM))
    assert await store.key_holder("demo.count", "a") is None
    # A job without a rule holds nothing.
    await store.create(new_job(key="free"))
    assert await store.key_holder("demo.count", "free") is None
    once, _ = await store.create(new_job(key="o"), uniqueness=Uniqueness.ONCE)
    await store.transition(once.id, Start())
    done = await store.transition(once.id, Succeed())
    assert await store.key_holder("demo.count", "o") == done
    assert await store.release_key("demo.count", "o")
    assert await store.key_holder("demo.count", "o") is None
    stopped, _ = await store.create(new_job(key="s"), uniqueness=Uniqueness.ONCE)
    await store.transition(stopped.id, RequestStop())
    assert await store.key_holder("demo.count", "s") is None


# -- listing by parent ------------------------------------------------------------


async def test_list_by_parent(store: StateStore) -> None:
    base = utcnow()
    parent, _ = await store.create(new_job("p-parent", created_at=base))
    children = []
    for n in range(4):
        child = msgspec.structs.replace(
            new_job(f"p-child-{n}", key=f"c{n}", created_at=base + timedelta(seconds=n)),
            parent_id=parent.id,
        )
        children.append((await store.create(child))[0])
    other = msgspec.structs.replace(new_job("p-other", created_at=base), parent_id="someone-else")
    await store.create(other)
    await store.transition(children[1].id, Start())

    async def ids(**filters: Any) -> list[str]:
        found: list[str] = []
        cursor = None
        while True:
            page = await store.list_jobs(JobQuery(limit=2, cursor=cursor, **filters))
            found += [job.id for job in page.items]
            cursor = page.next
            if cursor is None:
                return found

    assert await ids(parent=parent.id) == [f"p-child-{n}" for n in (3, 2, 1, 0)]
    assert await ids(parent=parent.id, state=JobState.RUNNING) == ["p-child-1"]
    assert await ids(parent=parent.id, key="c2") == ["p-child-2"]
    assert await ids(parent=parent.id, kind="demo.echo") == []
    assert await ids(parent="someone-else") == ["p-other"]
    assert await ids(parent="nobody") == []


# -- listing by owner ---------------------------------------------------------------


async def test_list_by_owner(store: StateStore) -> None:
    base = utcnow()
    for n, owner in enumerate(["alice", "bob", "alice", None, "alice"]):
        job = new_job(f"o-{n}", key=f"k{n % 2}", created_at=base + timedelta(seconds=n))
        await store.create(msgspec.structs.replace(job, owner=owner))
    await store.transition("o-2", Start())

    async def ids(**filters: Any) -> list[str]:
        found: list[str] = []
        cursor = None
        while True:
            page = await store.list_jobs(JobQuery(limit=2, cursor=cursor, **filters))
            found += [job.id for job in page.items]
            cursor = page.next
            if cursor is None:
                return found

    assert await ids(owner="alice") == ["o-4", "o-2", "o-0"]
    assert await ids(owner="alice", state=JobState.RUNNING) == ["o-2"]
    assert await ids(owner="alice", key="k1") == []
    assert await ids(owner="bob", key="k1") == ["o-1"]
    assert await ids(owner="bob", kind="demo.echo") == []
    assert await ids(owner="nobody") == []
    assert await ids() == [f"o-{n}" for n in (4, 3, 2, 1, 0)]


@pytest.mark.redis
async def test_redis_owner_index_is_used_and_trimmed(redis_store: RedisStateStore) -> None:
    store = redis_store
    client = aioredis.Redis.from_url(store.url)
    try:
        job = msgspec.structs.replace(new_job(retention=0.3), owner="alice")
        await store.create(job)
        forgotten = msgspec.structs.replace(new_job(), owner="alice")
        await store.create(forgotten)
        assert await client.zcard(f"{store.prefix}idx:owner:alice") == 2
        # The listing reads the owner's index, not every job's.
        await client.zrem(f"{store.prefix}idx:owner:alice", index_member(job.created_at, job.id))
        page = await store.list_jobs(JobQuery(owner="alice"))
        assert [found.id for found in page.items] == [forgotten.id]
        await client.zadd(
            f"{store.prefix}idx:owner:alice", {index_member(job.created_at, job.id): 0}
        )
        assert await store.forget(forgotten)
        assert await client.zcard(f"{store.prefix}idx:owner:alice") == 1
        await store.transition(job.id, Start())
        await store.transition(job.id, Succeed())
        await wait_until(lambda: client.exists(f"{store.prefix}job:{job.id}"), lambda n: n == 0)
        assert await store.purge_expired(utcnow()) == 1
        assert not await client.exists(f"{store.prefix}idx:owner:alice")
    finally:
        await client.aclose()


async def test_an_expired_child_leaves_the_parent_listing(store: StateStore) -> None:
    child = msgspec.structs.replace(new_job(retention=0), parent_id="p")
    kept = msgspec.structs.replace(new_job(), parent_id="p")
    await store.create(child)
    await store.create(kept)
    await store.transition(child.id, Start())
    await store.transition(child.id, Succeed())  # zero retention: gone at once
    await store.purge_expired(utcnow())
    page = await store.list_jobs(JobQuery(parent="p"))
    assert [job.id for job in page.items] == [kept.id]


# -- documents --------------------------------------------------------------------


async def test_documents_compare_and_set(nodes: Nodes) -> None:
    store, peer = nodes.store, nodes.peer
    assert await store.get_doc("sched", "a") is None
    assert await store.put_doc("sched", "a", b"one", expected=0) == 1
    assert await peer.put_doc("sched", "a", b"two", expected=0) is None  # exists now
    assert await peer.get_doc("sched", "a") == Doc(b"one", 1)
    assert await peer.put_doc("sched", "a", b"two", expected=1) == 2
    assert await store.put_doc("sched", "a", b"stale", expected=1) is None
    assert await store.put_doc("sched", "a", b"ahead", expected=7) is None
    assert await store.get_doc("sched", "a") == Doc(b"two", 2)
    assert await store.put_doc("sched", "a", b"three") == 3  # no expectation: overwrite
    assert await store.put_doc("sched", "new", b"x") == 1
    assert await store.put_doc("sched", "never", b"x", expected=3) is None
    assert await store.get_doc("sched", "never") is None


async def test_documents_keep_any_bytes(store: StateStore) -> None:
    data = b'{"a": "x|y"}|\x00\xff' + bytes(range(256))
    await store.put_doc("bin", "odd name|with bar", data)
    assert await store.get_doc("bin", "odd name|with bar") == Doc(data, 1)
    await store.put_doc("bin", "empty", b"")
    assert await store.get_doc("bin", "empty") == Doc(b"", 1)


async def test_documents_list_in_name_order_per_space(store: StateStore) -> None:
    assert await store.list_docs("s") == {}
    for name in ["m", "b", "z", "a"]:
        await store.put_doc("s", name, name.encode())
    await store.put_doc("s", "b", b"b2")
    await store.put_doc("other", "c", b"c")
    listed = await store.list_docs("s")
    assert list(listed) == ["a", "b", "m", "z"]
    assert listed["b"] == Doc(b"b2", 2)
    assert listed["a"] == Doc(b"a", 1)
    assert await store.list_docs("other") == {"c": Doc(b"c", 1)}


async def test_documents_delete(store: StateStore) -> None:
    await store.put_doc("s", "a", b"a")
    await store.put_doc("s", "b", b"b")
    assert await store.delete_doc("s", "a")
    assert not await store.delete_doc("s", "a")
    assert not await store.delete_doc("nowhere", "a")
    assert await store.get_doc("s", "a") is None
    assert list(await store.list_docs("s")) == ["b"]
    # A deleted document starts again at version 1.
    assert await store.put_doc("s", "a", b"again", expected=0) == 1


# -- change() answers before and after --------------------------------------------


async def test_change_answers_the_record_before_and_after(nodes: Nodes) -> None:
    store, peer = nodes.store, nodes.peer
    job, _ = await store.create(new_job())
    before, after = await store.change(job.id, Start())
    assert before == job
    assert after.state is JobState.RUNNING
    assert await peer.get(job.id) == after
    # Another node writes: the before of the next change is what it wrote.
    _, reported = await peer.change(job.id, Report(percent=10))
    before, after = await store.change(job.id, Report(percent=20))
    assert before == reported
    assert after.progress.percent == 20
    # A change that changes nothing answers the same record twice.
    same_before, same_after = await store.change(job.id, Report(percent=20))
    assert same_before == same_after == after
    before, requeued = await peer.change(job.id, Retry(BOOM))
    assert (before, requeued.state) == (after, JobState.QUEUED)
    # A refusal carries the record it was checked against.
    with pytest.raises(TransitionRefused) as refused:
        await store.change(job.id, Stopped())
    assert refused.value.job == requeued


@pytest.mark.redis
async def test_redis_parent_index_is_trimmed_and_documents_live_under_the_prefix(
    redis_store: RedisStateStore,
) -> None:
    store = redis_store
    client = aioredis.Redis.from_url(store.url)
    try:
        child = msgspec.structs.replace(new_job(retention=0.3), parent_id="p")
        await store.create(child)
        assert await client.zcard(f"{store.prefix}idx:parent:p") == 1
        await store.transition(child.id, Start())
        await store.transition(child.id, Succeed())
        await wait_until(lambda: client.exists(f"{store.prefix}job:{child.id}"), lambda n: n == 0)
        assert await store.purge_expired(utcnow()) == 1
        assert not await client.exists(f"{store.prefix}idx:parent:p")
        await store.put_doc("schedules", "nightly", b"{}")
        assert await client.hgetall(f"{store.prefix}doc:schedules") == {b"nightly": b"1|{}"}
    finally:
        await client.aclose()


async def test_forget_deletes_a_queued_record_and_frees_its_key(store: StateStore) -> None:
    job, _ = await store.create(new_job(key="k"), uniqueness=Uniqueness.ACTIVE)
    assert await store.forget(job)
    assert await store.get(job.id) is None
    assert await store.key_holder(job.kind, "k") is None
    assert (await store.list_jobs(JobQuery(key="k"))).items == []
    # The same id can be stored again, and holds the key again.
    again, created = await store.create(new_job(job.id, key="k"), uniqueness=Uniqueness.ACTIVE)
    assert created
    assert (await store.key_holder(job.kind, "k")) == again
    # A record that moved on is not forgotten.
    await store.transition(again.id, Start())
    assert not await store.forget(again)
    assert (await store.get(again.id)) is not None


async def test_changes_are_told_to_watchers_and_when_every_node_must_hear(nodes: Nodes) -> None:
    """The memory store tells every change; Redis tells a change to the other nodes when
    some node watches the job, or when it is one a node running the job must act on (a
    stop request, the job leaving `running`): `rules.must_tell`."""
    everything = nodes.store.name == "memory"
    peer = changes_of(nodes.peer)
    quiet, _ = await nodes.store.create(new_job())
    started = await nodes.store.transition(quiet.id, Start())
    reported = await nodes.store.transition(quiet.id, Report(percent=5))
    stopping = await nodes.store.transition(quiet.id, RequestStop())
    await wait_until(tick, lambda _: stopping.version in peer.versions(quiet.id))
    told = peer.versions(quiet.id)
    assert told == ([1, started.version, reported.version] if everything else []) + [
        stopping.version
    ]
    watched, _ = await nodes.store.create(new_job())
    with nodes.peer.hub.listen(watched.id):
        await nodes.peer.get(watched.id)
        started = await nodes.store.transition(watched.id, Start())
        reported = await nodes.store.transition(watched.id, Report(percent=5))
        await wait_until(tick, lambda _: reported.version in peer.versions(watched.id))
    assert [v for v in peer.versions(watched.id) if v > 1] == [started.version, reported.version]
    finishing, _ = await nodes.store.create(new_job())
    await nodes.store.transition(finishing.id, Start())
    done = await nodes.store.transition(finishing.id, Succeed())
    await wait_until(tick, lambda _: done.version in peer.versions(finishing.id))
    # The end of an attempt written by the node running it (`by_runner`): only the
    # nodes watching the job hear it; nobody else runs it.
    unwatched, _ = await nodes.store.create(new_job())
    await nodes.store.change(unwatched.id, Start())
    _, unwatched_end = await nodes.store.change(unwatched.id, Succeed(), by_runner=True)
    watched_end, _ = await nodes.store.create(new_job())
    await nodes.store.change(watched_end.id, Start())
    with nodes.peer.hub.listen(watched_end.id):
        await nodes.peer.get(watched_end.id)
        _, end = await nodes.store.change(watched_end.id, Succeed(), by_runner=True)
        await wait_until(tick, lambda _: end.version in peer.versions(watched_end.id))
    # Changes reach a node in the order written: once a later one told to every node
    # arrived, the unwatched end would have too, had it been told.
    marker, _ = await nodes.store.create(new_job())
    stopped = await nodes.store.transition(marker.id, RequestStop())
    await wait_until(tick, lambda _: stopped.version in peer.versions(marker.id))
    assert (unwatched_end.version in peer.versions(unwatched.id)) is everything


async def test_a_hint_saves_the_peer_its_read_and_a_stale_one_changes_nothing(
    nodes: Nodes,
) -> None:
    # What the queue message carries (`StateStore.hint`): the peer's first guess of the
    # job. A fresh one is right; a stale one (the job changed after the message went
    # out) must never win over the stored record.
    fresh, _ = await nodes.store.create(new_job())
    stale, _ = await nodes.store.create(new_job())
    fresh_hint = nodes.store.hint(fresh)
    stale_hint = nodes.store.hint(stale)
    if isinstance(nodes.store, RedisStateStore):
        assert fresh_hint  # the node that wrote a record can tell it
        assert stale_hint
    await nodes.store.change(stale.id, RequestStop())  # queued -> stopped
    nodes.peer.take_hint(fresh.id, fresh_hint)
    nodes.peer.take_hint(stale.id, stale_hint)
    _, started = await nodes.peer.change(fresh.id, Start())
    assert started.state is JobState.RUNNING
    with pytest.raises(TransitionRefused):
        await nodes.peer.change(stale.id, Start())
    stored = await nodes.store.get(stale.id)
    assert stored is not None
    assert stored.state is JobState.STOPPED
    # A hint that is not one (a foreign or garbled message) is ignored.
    other, _ = await nodes.store.create(new_job())
    nodes.peer.take_hint(other.id, b"x\nnot json")
    nodes.peer.take_hint(other.id, stale_hint)  # another job's record
    _, started = await nodes.peer.change(other.id, Start())
    assert started.state is JobState.RUNNING
    assert started.id == other.id


async def test_a_start_takes_its_lease_and_leaving_running_drops_it(nodes: Nodes) -> None:
    # The lease goes with the writes themselves (`lifecycle.lease_after`): held the
    # moment the job is running, gone the moment it is not, whichever node writes.
    store, peer = nodes.store, nodes.peer
    until = utcnow() + timedelta(seconds=30)
    done, _ = await store.create(new_job())
    await store.change(done.id, Start(lease_until=until))
    held = await peer.lease_of(done.id)
    assert held is not None
    assert abs((held - until).total_seconds()) < 0.001
    await store.change(done.id, Report(percent=5))  # still running: still held
    assert await peer.lease_of(done.id) == held
    await peer.change(done.id, Succeed())
    assert await store.lease_of(done.id) is None
    assert done.id not in await store.lapsed(until + timedelta(seconds=1))

    stopping, _ = await store.create(new_job())
    await store.change(stopping.id, Start(lease_until=until))
    await peer.change(stopping.id, RequestStop())  # asked, still running
    assert await store.lease_of(stopping.id) == held
    await store.change(stopping.id, Retry())  # given back: queued, no lease
    assert await peer.lease_of(stopping.id) is None

    plain, _ = await store.create(new_job())
    await store.change(plain.id, Start())  # no lease asked: none taken
    assert await peer.lease_of(plain.id) is None
