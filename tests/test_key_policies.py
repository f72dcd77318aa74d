"""Key conflict policies under races (API.md section 6), on every StateStore.

Property tests: any number of concurrent enqueues of one key, each with its own
`onConflict`, leave exactly one holder; and when every job is started the way the
worker starts it (a job that replaced a running holder waits until that one is
terminal), no two jobs of one key ever run at the same time. For Redis the
enqueues race from several store instances on one prefix: several nodes.

"At the same time" is judged on the stores' own history: every write publishes its
`Change` in the same atomic step (Redis: PUBLISH inside the script, delivered to a
subscriber in execution order), so one node's hub sees every state of every job in
the order the store applied them, and the test replays that order.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack

import anyio
import anyio.lowlevel
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from asyncproc.backends.memory import MemoryStateStore
from asyncproc.backends.redis import RedisStateStore
from asyncproc.errors import KeyConflict, TransitionRefused
from asyncproc.interfaces import JobQuery, StateStore
from asyncproc.lifecycle import Start, Stopped, Succeed
from asyncproc.model import Job, JobState, OnConflict, Uniqueness
from tests.contract import RecordingHub, delete_prefix, new_job
from tests.support import wait_until

pytestmark = pytest.mark.anyio

KIND = "demo.count"
SETTINGS = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

rules = st.sampled_from([Uniqueness.ACTIVE, Uniqueness.ONCE])
policies = st.lists(st.sampled_from(list(OnConflict)), min_size=2, max_size=8)
# The key's holder before the race: none, or one in this state.
before = st.sampled_from([None, JobState.QUEUED, JobState.RUNNING, JobState.SUCCEEDED])


@pytest.fixture(params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def nodes(request: pytest.FixtureRequest) -> AsyncIterator[list[StateStore]]:
    """The store's nodes: one memory store, or three Redis stores sharing one prefix.

    The first node's hub is a `RecordingHub`: it sees every change of every node.
    """
    async with AsyncExitStack() as stack:
        if request.param == "memory":
            store = MemoryStateStore(RecordingHub())
            await stack.enter_async_context(store)
            yield [store]
            return
        url = request.getfixturevalue("redis_url")
        prefix = request.getfixturevalue("unique_prefix")
        stack.push_async_callback(delete_prefix, url, prefix)
        started: list[StateStore] = []
        for _ in range(3):
            node = RedisStateStore(url, prefix=prefix, hub=RecordingHub())
            await stack.enter_async_context(node)
            await node.start()
            started.append(node)
        yield started


async def holder_before(store: StateStore, key: str, rule: Uniqueness, state: JobState) -> Job:
    """A job holding `key` in `state` (succeeded holds only a `once` key)."""
    job, _ = await store.create(new_job(key=key), uniqueness=rule)
    if state is not JobState.QUEUED:
        job = await store.transition(job.id, Start())
    if state is JobState.SUCCEEDED:
        job = await store.transition(job.id, Succeed())
    return job


class Race:
    """Concurrent enqueues of one key; what each got, and the jobs it created."""

    def __init__(self, nodes: Sequence[StateStore], key: str, rule: Uniqueness) -> None:
        self.nodes = nodes
        self.key = key
        self.rule = rule
        self.created: list[Job] = []
        self.existing: list[str] = []
        self.conflicts: list[str] = []
        self.enqueued = anyio.Event()

    async def enqueue(self, n: int, policy: OnConflict, work: bool) -> None:
        """Insert one job from node `n`; with `work`, then run it like a worker."""
        node = self.nodes[n % len(self.nodes)]
        try:
            outcome = await node.insert(
                new_job(key=self.key), uniqueness=self.rule, on_conflict=policy
            )
        except KeyConflict as conflict:
            self.conflicts.append(str(conflict.extra["jobId"]))
            return
        if not outcome.created:
            self.existing.append(outcome.job.id)
            return
        self.created.append(outcome.job)
        if work:
            await run_like_the_worker(node, outcome.job.id)

    async def all(self, policies: list[OnConflict], *, work: bool = False) -> None:
        """Every enqueue at once, from alternating nodes."""
        async with anyio.create_task_group() as tg:
            for n, policy in enumerate(policies):
                tg.start_soon(self.enqueue, n, policy, work)
        self.enqueued.set()


async def start_after(node: StateStore, job: Job) -> Job | None:
    """Start a job that replaced its key's holder once that holder is terminal: what
    `Worker._start_after` does (listen, re-read, then `Start(after_ended=True)`)."""
    assert job.after is not None
    while True:
        with node.hub.listen(job.after) as changed:
            holder = await node.get(job.after)
            if holder is None or holder.state.terminal:
                break
            with anyio.move_on_after(1.0):
                await changed.wait()
    try:
        return await node.transition(job.id, Start(after_ended=True))
    except TransitionRefused:
        return None  # stopped while it waited


async def run_like_the_worker(node: StateStore, job_id: str) -> None:
    """Start the job as the worker does, let it run a moment, end it (stopped when asked)."""
    try:
        started: Job | None = await node.transition(job_id, Start())
    except TransitionRefused as refused:
        job = refused.job
        if job.state is not JobState.QUEUED or job.after is None:
            return  # stopped (replaced) before it could start
        started = await start_after(node, job)
    if started is None or started.state is not JobState.RUNNING:
        return
    await finish(node, job_id)


async def finish(node: StateStore, job_id: str) -> None:
    """Run a few turns of the event loop, then end the running job."""
    for _ in range(3):
        await anyio.lowlevel.checkpoint()
    current = await node.get(job_id)
    assert current is not None
    await node.transition(job_id, Stopped() if current.stop_requested else Succeed())


async def run_holder(node: StateStore, job: Job, race: Race) -> None:
    """The worker of the holder from before the race: a queued one is taken after the
    race; a running one ends when asked to stop, or after the race."""
    if job.state is JobState.QUEUED:
        await race.enqueued.wait()
        await run_like_the_worker(node, job.id)
        return
    while not race.enqueued.is_set():
        with node.hub.listen(job.id) as changed:
            current = await node.get(job.id)
            if current is not None and current.stop_requested:
                break
            with anyio.move_on_after(0.2):
                await changed.wait()
    await finish(node, job.id)


async def jobs_of(store: StateStore, key: str) -> list[Job]:
    """Every stored job of `key`, newest first."""
    page = await store.list_jobs(JobQuery(kind=KIND, key=key, limit=200))
    assert page.next is None
    return page.items


@given(rule=rules, policies=policies, state=before)
@SETTINGS
async def test_concurrent_enqueues_leave_exactly_one_holder(
    nodes: list[StateStore], rule: Uniqueness, policies: list[OnConflict], state: JobState | None
) -> None:
    key = uuid.uuid4().hex
    first = await holder_before(nodes[0], key, rule, state) if state is not None else None
    holds_before = first is not None and (
        first.state is not JobState.SUCCEEDED or rule is Uniqueness.ONCE
    )
    race = Race(nodes, key, rule)
    with anyio.fail_after(30):
        await race.all(policies)

    holder = await nodes[-1].key_holder(KIND, key)
    assert holder is not None
    candidates = [job.id for job in race.created] + ([first.id] if holds_before and first else [])
    assert holder.id in candidates
    jobs = await jobs_of(nodes[0], key)
    # Every job but the holder is done or on its way out (asked to stop).
    live = [
        job
        for job in jobs
        if job.state in (JobState.QUEUED, JobState.RUNNING) and not job.stop_requested
    ]
    assert [job.id for job in live] == ([holder.id] if not holder.state.terminal else [])
    replaces = policies.count(OnConflict.REPLACE)
    if replaces == 0:
        # Without `replace` the holder never changes: the first to come wins, and
        # every other enqueue is told who holds the key.
        assert len(race.created) == (0 if holds_before else 1)
        assert set(race.conflicts) | set(race.existing) <= {holder.id}
    else:
        # `replace` always gets its job in, and the last one in holds the key.
        assert len(race.created) >= replaces
        assert holder.id in [job.id for job in race.created]


@given(rule=rules, policies=policies, state=before)
@SETTINGS
async def test_jobs_of_one_key_never_run_at_the_same_time(
    nodes: list[StateStore],
    rule: Uniqueness,
    policies: list[OnConflict],
    state: JobState | None,
) -> None:
    key = uuid.uuid4().hex
    first = await holder_before(nodes[0], key, rule, state) if state is not None else None
    race = Race(nodes, key, rule)
    with anyio.fail_after(60):
        async with anyio.create_task_group() as tg:
            if first is not None and not first.state.terminal:
                tg.start_soon(run_holder, nodes[-1], first, race)
            await race.all(policies, work=True)
    jobs = {job.id: job for job in await jobs_of(nodes[0], key)}
    assert all(job.state.terminal for job in jobs.values()), "every job ran to its end"
    # Replay the store's history of these jobs: at most one running after every change.
    hub = nodes[0].hub
    assert isinstance(hub, RecordingHub)
    await wait_until(
        anyio.lowlevel.checkpoint,
        lambda _: all(hub.versions(job.id)[-1:] == [job.version] for job in jobs.values()),
    )
    running: set[str] = set()
    for change in hub.changes:
        if change.job_id not in jobs:
            continue
        if change.state is JobState.RUNNING:
            running.add(change.job_id)
        else:
            running.discard(change.job_id)
        assert len(running) <= 1, f"{sorted(running)} ran at the same time"
