"""The memory store at scale: its list index answers exactly what a scan of every job
would (hypothesis), and the cap on finished jobs drops the oldest finished first."""

from __future__ import annotations

from datetime import timedelta

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncproc.backends.memory import MemoryStateStore
from asyncproc.interfaces import JobQuery
from asyncproc.lifecycle import Fail, RequestStop, Start, Succeed
from asyncproc.model import ErrorInfo, Job, JobState, utcnow
from tests.contract import new_job

pytestmark = pytest.mark.anyio

KINDS = ["a", "b", "c"]
KEYS = [None, "k1", "k2"]
PARENTS = [None, "p1"]
FATES = ["queued", "running", "succeeded", "failed", "stopped", "dropped"]

job_plans = st.lists(
    st.tuples(
        st.integers(0, 20),  # createdAt offset (seconds): ties happen
        st.sampled_from(KINDS),
        st.sampled_from(KEYS),
        st.sampled_from(PARENTS),
        st.sampled_from(FATES),
    ),
    max_size=60,
)
queries = st.builds(
    JobQuery,
    kind=st.sampled_from([None, *KINDS, "none"]),
    state=st.sampled_from([None, *JobState]),
    key=st.sampled_from([None, "k1", "k2", "none"]),
    parent=st.sampled_from([None, "p1", "none"]),
    owner=st.sampled_from([None, "alice", "bob", "none"]),
    limit=st.integers(1, 7),
)


async def fill(
    store: MemoryStateStore, plans: list[tuple[int, str, str | None, str | None, str]]
) -> list[Job]:
    """Store one job per plan and move it to its fate; the jobs still held."""
    base = utcnow()
    held = []
    for n, (offset, kind, key, parent, fate) in enumerate(plans):
        job = new_job(f"j{n:03d}", kind=kind, key=key, created_at=base + timedelta(seconds=offset))
        owner = ("alice", "bob", None)[n % 3]
        job = msgspec.structs.replace(job, parent_id=parent, owner=owner)
        await store.create(job)
        if fate != "queued":
            await store.transition(job.id, Start())
        if fate == "succeeded":
            await store.transition(job.id, Succeed())
        elif fate == "failed":
            await store.transition(job.id, Fail(ErrorInfo(error_id="x")))
        elif fate == "stopped":
            await store.transition(job.id, RequestStop())
        if fate == "dropped":
            await store.forget(await store.get(job.id))  # type: ignore[arg-type]
            continue
        current = await store.get(job.id)
        assert current is not None
        held.append(current)
    return held


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(plans=job_plans, query=queries)
async def test_pages_are_what_a_full_scan_finds(
    plans: list[tuple[int, str, str | None, str | None, str]], query: JobQuery
) -> None:
    store = MemoryStateStore()
    held = await fill(store, plans)
    expected = [
        job.id
        for job in sorted(held, key=lambda j: (j.created_at, j.id), reverse=True)
        if query.matches(job)
    ]
    seen: list[str] = []
    page = await store.list_jobs(query)
    seen += [job.id for job in page.items]
    while page.next is not None:
        assert len(page.items) == query.limit
        page = await store.list_jobs(msgspec.structs.replace(query, cursor=page.next))
        seen += [job.id for job in page.items]
    assert seen == expected


async def test_the_cap_drops_the_oldest_finished_jobs_first() -> None:
    store = MemoryStateStore(max_finished=3)
    ids = [f"c{n}" for n in range(6)]
    for job_id in ids:
        await store.create(new_job(job_id))
    # They finish in another order than they were created.
    for job_id in ["c4", "c0", "c5", "c1", "c2"]:
        await store.transition(job_id, Start())
        await store.transition(job_id, Succeed())
    kept = {job.id for job in (await store.list_jobs(JobQuery(limit=50))).items}
    assert kept == {"c5", "c1", "c2", "c3"}  # c3 never finished: never dropped
    assert await store.get("c4") is None
    assert await store.get("c0") is None
    finished = await store.list_jobs(JobQuery(state=JobState.SUCCEEDED))
    assert [job.id for job in finished.items] == ["c5", "c2", "c1"]


async def test_an_id_used_again_with_the_same_time_is_listed_once() -> None:
    store = MemoryStateStore()
    first = new_job("again", retention=0.0)
    await store.create(first)
    await store.transition("again", Start())
    await store.transition("again", Succeed())
    await store.purge_expired(utcnow())
    assert await store.get("again") is None
    # The same id and createdAt again (a requestId sent again after its job expired).
    await store.create(first)
    listed = await store.list_jobs(JobQuery(limit=10))
    assert [job.id for job in listed.items] == ["again"]


async def test_no_cap_keeps_every_finished_job() -> None:
    store = MemoryStateStore(max_finished=0)
    for n in range(50):
        await store.create(new_job(f"n{n}"))
        await store.transition(f"n{n}", Start())
        await store.transition(f"n{n}", Succeed())
    assert len((await store.list_jobs(JobQuery(limit=200))).items) == 50
