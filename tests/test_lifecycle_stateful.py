"""Random operation sequences against the pure lifecycle and against every StateStore.

A hypothesis `RuleBasedStateMachine` keeps a model built only from
`lifecycle.apply` (plus the key rules of API.md section 6) and drives the same
operations into a store, checking after every step that the store agrees with the
model and that the lifecycle invariants hold. The "pure" run checks the
invariants on the model alone.

Keys: each kind has a rule (`none`, `active`, `once`) and each insert a conflict
policy (`reject`, `existing`, `replace`); the model's holder of a key follows
`rules.holds_key` / `rules.key_after` / `rules.replace_event`. A job that replaced a
running holder starts only by `Start(after_ended=True)` once that holder is terminal
(as the worker starts it), and then no two jobs of one key ever run at once.

Expiry: a job gets a retention of either an hour or zero; a zero-retention job is
gone the moment it finishes (record, result, listing), exactly like a long one an
hour later. Timeouts: a job's processing window is either an hour or none (its
deadline already past), so `overdue`, `TimeOut` and a too-late `Start` all happen.

Transactions (API.md section 13): a job may be enqueued with a `notBefore` an hour
away, and a retry may put one back (`Retry(not_before=...)`, an hour ahead or already
due); a `Start` before it is refused. Durable steps (`StepDone`) are stored while the
job runs and kept by later attempts. The events a running attempt sends carry its
`attempt` (current, stale or ahead of it): only the attempt running now changes the
job, so after a lease lapse (`Retry` "lost", attempt kept; started again or not) the
lost attempt's late outcome changes nothing. `Revive` puts a failed job back in the queue with its attempt
and a fresh processing window. Times never move during an example (every instant is
an hour away or already past), so a replay sees the same outcomes.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timedelta
from typing import Any, ClassVar, TypeVar

import msgspec
import pytest
from anyio.from_thread import BlockingPortal, start_blocking_portal
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from asyncproc.backends.memory import MemoryStateStore
from asyncproc.backends.redis import RedisStateStore
from asyncproc.errors import JobNotFound, KeyConflict, TransitionRefused
from asyncproc.interfaces import Created, JobQuery, StateStore
from asyncproc.lifecycle import (
    Event,
    Fail,
    Report,
    RequestStop,
    Retry,
    Revive,
    Start,
    StepDone,
    Stopped,
    Succeed,
    TimeOut,
    apply,
    startable,
)
from asyncproc.model import ErrorInfo, Job, JobState, OnConflict, Uniqueness, utcnow
from asyncproc.rules import KeyAfter, holds_key, key_after, replace_event
from tests.contract import delete_prefix

T = TypeVar("T")

IDS = ["j0", "j1", "j2", "j3"]
KINDS = {"k.active": Uniqueness.ACTIVE, "k.once": Uniqueness.ONCE, "k.free": Uniqueness.NONE}
KEYS = [None, "x", "y"]
ERROR = ErrorInfo(error_id="e", biz_msg="failed")
LOST = ErrorInfo(error_id="lost", tech_msg="lease lapsed")
ACTIVE = (JobState.QUEUED, JobState.RUNNING)

# The pure machine costs little, so it explores most; the stores follow its lead.
EXAMPLES = {"pure": 200, "memory": 60, "redis": 40}


def machine_settings(backend: str) -> settings:
    """The hypothesis settings of one backend's run."""
    return settings(
        max_examples=EXAMPLES[backend],
        stateful_step_count=25,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )


reports = st.builds(
    Report,
    percent=st.none() | st.floats(min_value=-10, max_value=110, allow_nan=False),
    biz_step=st.sampled_from([None, "load", "render"]),
    message=st.sampled_from([None, "a", "b"]),
)
step_names = st.sampled_from(["check", "book"])
# What a step returned, as stored: compact JSON (a store keeps it byte for byte).
step_results = st.sampled_from([b"1", b"null", b'"ok"', b'{"id":[1,2]}']).map(msgspec.Raw)
compensations = st.none() | st.just("undo-1")
events: st.SearchStrategy[Event] = st.one_of(
    st.just(Start()),
    reports,
    st.builds(Fail, error=st.just(ERROR), compensation_id=compensations),
    st.builds(Retry, error=st.none() | st.just(ERROR)),
    st.builds(StepDone, name=step_names, result=step_results),
    st.just(RequestStop()),
    st.just(Stopped()),
    st.just(TimeOut()),
)
results = st.none() | st.binary(max_size=16)
# The events a running attempt sends, each carrying that attempt (see `attempted`).
ATTEMPT_EVENTS = ["report", "step", "succeed", "fail", "retry", "stopped", "timeout"]
# An attempt relative to the job's current one: its own, a lost earlier one, a bogus later one.
FENCES = {"current": 0, "stale": -1, "ahead": 1}
# When a retry may run again: now, already due, or an hour from now (never in between,
# so no outcome depends on how long a step takes).
RETRY_DELAYS = [None, "due", "later"]


class Spec(msgspec.Struct, frozen=True):
    """A job to create: its id, kind (and so its key rule), key, and timing."""

    job_id: str
    kind: str
    key: str | None
    offset: int  # seconds after the machine's base time: a few jobs share a createdAt
    late: bool  # deadline already past
    keep: bool  # an hour of retention, else none
    delayed: bool = False  # enqueued with a notBefore an hour away


specs = st.builds(
    Spec,
    job_id=st.sampled_from(IDS),
    kind=st.sampled_from(sorted(KINDS)),
    key=st.sampled_from(KEYS),
    offset=st.sampled_from([0, 1]),
    late=st.booleans(),
    keep=st.booleans(),
    delayed=st.booleans(),
)


def expired(job: Job, now: datetime) -> bool:
    """True when a terminal record is past its retention (the stores' rule)."""
    return job.finished_at is not None and job.expires_at <= now


class LifecycleMachine(RuleBasedStateMachine):
    """The model is a dict of records made by `apply`; `store` (if any) must agree."""

    portal: ClassVar[BlockingPortal]
    open_store: ClassVar[Callable[[], Awaitable[StateStore]] | None]
    close_store: ClassVar[Callable[[StateStore], Awaitable[None]]]

    def __init__(self) -> None:
        super().__init__()
        self.base = utcnow() - timedelta(seconds=10)
        self.jobs: dict[str, Job] = {}
        self.results: dict[str, bytes] = {}
        # (kind, key) -> (holder id, rule): the uniqueness rules of API.md section 6.
        self.holders: dict[tuple[str, str], tuple[str, Uniqueness]] = {}
        # (kind, key) -> the job a free key's next holder must wait for (KeyAfter.WAIT).
        self.waits: dict[tuple[str, str], str | None] = {}
        self.stopped_while_queued: set[str] = set()
        self.finals: dict[str, Job] = {}
        self.store = self.call(self.open_store) if self.open_store is not None else None

    def call(self, func: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Run an async store call on the portal's event loop."""
        return self.portal.call(lambda: func(*args, **kwargs))

    def teardown(self) -> None:
        if self.store is not None:
            self.call(self.close_store, self.store)

    def live(self, job_id: str, now: datetime) -> Job | None:
        job = self.jobs.get(job_id)
        return None if job is None or expired(job, now) else job

    # -- rules ---------------------------------------------------------------------

    @initialize(specs=st.lists(specs, min_size=1, max_size=3))
    def seed(self, specs: list[Spec]) -> None:
        for spec in specs:
            self.create(spec)

    @rule(spec=specs, policy=st.sampled_from(list(OnConflict)))
    def create(self, spec: Spec, policy: OnConflict = OnConflict.REJECT) -> None:
        job_id, kind, key = spec.job_id, spec.kind, spec.key
        created = self.base + timedelta(seconds=spec.offset)
        # As the service does: the processing window counts from notBefore.
        not_before = created + timedelta(seconds=3600) if spec.delayed else None
        job = Job(
            id=job_id,
            kind=kind,
            state=JobState.QUEUED,
            created_at=created,
            # No window: the deadline is already past (base is ten seconds ago), and
            # a revived copy's fresh deadline is too (so `Revive` never races a clock).
            deadline=(not_before or created) + timedelta(seconds=0 if spec.late else 3600),
            retention=3600.0 if spec.keep else 0.0,
            key=key,
            content=msgspec.Raw(b'{"n": 1}'),
            not_before=not_before,
        )
        rule_ = KINDS[kind]
        now = utcnow()
        existing = self.live(job_id, now)
        holding = self.holding(kind, key, rule_, now)
        holder = holding[1] if holding is not None else None
        event = replace_event(holder) if holder is not None else None
        got: Created | str | None = None
        if self.store is not None:
            try:
                got = self.call(self.store.insert, job, uniqueness=rule_, on_conflict=policy)
            except KeyConflict as conflict:
                got = f"conflict {conflict.extra['jobId']}"
        expected: Created | str
        wait = self.waits.get((kind, key)) if key is not None else None
        if holding is None and wait is not None and rule_ is not Uniqueness.NONE:
            # The key is free, but its last holder waited for a replaced job that may
            # still be stopping: the new holder waits for it too.
            job = msgspec.structs.replace(job, after=wait)
        if existing is not None:
            expected = Created(existing, False)
        elif holding is None:
            expected = Created(job, True)
        elif policy is OnConflict.EXISTING and holder is not None:
            expected = Created(holder, False)
        elif policy is not OnConflict.REPLACE:
            expected = f"conflict {holding[0]}"
        elif holder is None or event is None:
            expected = Created(job, True)  # a succeeded (or purged) `once` holder: released
        else:
            # The store stamps a holder it stops with its own clock.
            stamped = (
                got.replaced[1].finished_at if isinstance(got, Created) and got.replaced else None
            )
            stopped = apply(holder, event, stamped or now)
            # A job replacing a queued holder that itself waited for a running job
            # waits for that job too (`after` passes on).
            after = holder.id if not stopped.state.terminal else holder.after
            if after is not None:
                job = msgspec.structs.replace(job, after=after)
            expected = Created(job, True, (holder, stopped))
        if self.store is not None:
            assert got == expected
        if not isinstance(expected, Created) or not expected.created:
            return
        if expected.replaced is not None:
            self.record(*expected.replaced)
        self.jobs[job_id] = job
        self.results.pop(job_id, None)
        self.finals.pop(job_id, None)
        self.stopped_while_queued.discard(job_id)
        if key is not None and rule_ is not Uniqueness.NONE:
            self.holders[(kind, key)] = (job_id, rule_)
            self.waits.pop((kind, key), None)

    @rule(data=st.data(), policy=st.sampled_from(list(OnConflict)), keep=st.booleans())
    def contend(self, data: st.DataObject, policy: OnConflict, keep: bool) -> None:
        """Enqueue a new job for the kind and key of a live keyed job: a conflict on purpose."""
        now = utcnow()
        keyed = sorted(
            j.id for j in self.jobs.values() if j.key is not None and self.live(j.id, now)
        )
        self.enqueue_against(data, keyed, policy, keep)

    @rule(data=st.data(), keep=st.booleans(), start_first=st.booleans())
    def supersede(self, data: st.DataObject, keep: bool, start_first: bool) -> None:
        """Replace the holder of a key, started first or not: chains of replaced jobs
        that wait for each other."""
        holders = sorted({job_id for job_id, _ in self.holders.values() if job_id in self.jobs})
        if start_first and holders:
            holder = data.draw(st.sampled_from(holders), label="holder")
            if self.jobs[holder].state is JobState.QUEUED:
                self.apply(holder, Start(), None)
            holders = [holder]
        self.enqueue_against(data, holders, OnConflict.REPLACE, keep)

    def enqueue_against(
        self, data: st.DataObject, rivals: list[str], policy: OnConflict, keep: bool
    ) -> None:
        """Enqueue a job under a free id for the kind and key of one of `rivals`."""
        now = utcnow()
        free = sorted(set(IDS) - {j.id for j in self.jobs.values() if self.live(j.id, now)})
        if not rivals or not free:
            return
        rival = self.jobs[data.draw(st.sampled_from(rivals), label="rival")]
        job_id = data.draw(st.sampled_from(free), label="job_id")
        spec = Spec(job_id=job_id, kind=rival.kind, key=rival.key, offset=1, late=False, keep=keep)
        self.create(spec, policy)

    @rule(data=st.data())
    def start(self, data: st.DataObject) -> None:
        """Start a queued job (the `transition` rule rarely picks a Start for one)."""
        queued = sorted(j.id for j in self.jobs.values() if j.state is JobState.QUEUED)
        if queued:
            self.apply(data.draw(st.sampled_from(queued), label="queued"), Start(), None)

    def holding(
        self, kind: str, key: str | None, rule_: Uniqueness, now: datetime
    ) -> tuple[str, Job | None] | None:
        """Who holds `key` of `kind`: (holder id, the live holder or None when a
        purged succeeded `once` job still holds it), or None when it is free."""
        if key is None or rule_ is Uniqueness.NONE:
            return None
        held = self.holders.get((kind, key))
        if held is None:
            return None
        holder = self.live(held[0], now)
        if holder is not None and (holder.kind, holder.key) == (kind, key):
            return (held[0], holder) if holds_key(held[1], holder.state) else None
        # Gone, or its id used again since: a `once` key stays held until released.
        return (held[0], None) if held[1] is Uniqueness.ONCE else None

    @rule(job_id=st.sampled_from(IDS), event=events | st.just(Revive()))
    def transition(self, job_id: str, event: Event) -> None:
        self.apply(job_id, event, None)

    @rule(job_id=st.sampled_from(IDS), result=results, mime=st.sampled_from(["text/csv", None]))
    def succeed(self, job_id: str, result: bytes | None, mime: str | None) -> None:
        size = None if result is None else len(result)
        self.apply(job_id, Succeed(size, mime if size is not None else None), result)

    @rule(
        job_id=st.sampled_from(IDS),
        what=st.sampled_from(ATTEMPT_EVENTS),
        fence=st.sampled_from(sorted(FENCES)),
        data=st.data(),
    )
    def attempted(self, job_id: str, what: str, fence: str, data: st.DataObject) -> None:
        """An event of a running attempt, sent with its current, a stale or a bogus
        later attempt number: only the current one may change the record."""
        job = self.live(job_id, utcnow())
        attempt = (job.attempt if job is not None else 1) + FENCES[fence]
        event, result = self.attempt_event(what, attempt, data)
        self.apply(job_id, event, result)

    @rule(data=st.data(), names=st.lists(step_names, min_size=1, max_size=3))
    def steps(self, data: st.DataObject, names: list[str]) -> None:
        """A running attempt stores its durable steps, one after the other (a queued
        job is started first)."""
        active = sorted(j.id for j in self.jobs.values() if j.state in ACTIVE)
        if not active:
            return
        job_id = data.draw(st.sampled_from(active), label="active")
        if self.jobs[job_id].state is JobState.QUEUED:
            self.apply(job_id, Start(), None)
        attempt = self.jobs[job_id].attempt
        for name in names:
            self.apply(job_id, StepDone(name, data.draw(step_results), attempt), None)

    def attempt_event(
        self, what: str, attempt: int, data: st.DataObject
    ) -> tuple[Event, bytes | None]:
        """The event `what` of attempt `attempt` (and the result a Succeed stores)."""
        match what:
            case "report":
                return msgspec.structs.replace(data.draw(reports), attempt=attempt), None
            case "step":
                return StepDone(data.draw(step_names), data.draw(step_results), attempt), None
            case "succeed":
                result = data.draw(results, label="result")
                return Succeed(None if result is None else len(result), attempt=attempt), result
            case "fail":
                return Fail(ERROR, attempt, data.draw(compensations)), None
            case "retry":
                return Retry(
                    ERROR, self.not_before(data.draw(st.sampled_from(RETRY_DELAYS))), attempt
                ), None
            case "stopped":
                return Stopped(attempt), None
        return TimeOut(attempt), None

    def not_before(self, delay: str | None) -> datetime | None:
        """A retry's notBefore: none, already due, or an hour from now."""
        if delay is None:
            return None
        return (
            self.base - timedelta(seconds=60) if delay == "due" else utcnow() + timedelta(hours=1)
        )

    @rule(
        job_id=st.sampled_from(IDS),
        delay=st.sampled_from(RETRY_DELAYS),
        error=st.none() | st.just(ERROR),
    )
    def retry(self, job_id: str, delay: str | None, error: ErrorInfo | None) -> None:
        """A retryable failure of the current attempt: back to queued after a backoff."""
        job = self.live(job_id, utcnow())
        attempt = job.attempt if job is not None else None
        self.apply(job_id, Retry(error, self.not_before(delay), attempt), None)

    @rule(data=st.data(), again=st.booleans(), late=st.sampled_from(ATTEMPT_EVENTS))
    def lapse(self, data: st.DataObject, again: bool, late: str) -> None:
        """A running job's lease lapses: the sweep takes it back (`Retry` "lost", its
        attempt kept), it may start again, and then the lost attempt's late event
        arrives: refused, the record unchanged. (A queued job is started first.)"""
        active = sorted(j.id for j in self.jobs.values() if j.state in ACTIVE)
        if not active:
            return
        job_id = data.draw(st.sampled_from(active), label="active")
        if self.jobs[job_id].state is JobState.QUEUED:
            self.apply(job_id, Start(), None)
            if self.jobs[job_id].state is not JobState.RUNNING:
                return
        lost = self.jobs[job_id].attempt
        self.apply(job_id, Retry(LOST, attempt=lost), None)
        if again:
            # As the worker starts a job it lost (its key's holder, if any, has ended).
            self.apply(job_id, Start(after_ended=self.jobs[job_id].after is not None), None)
        before = self.jobs[job_id]
        event, result = self.attempt_event(late, lost, data)
        self.apply(job_id, event, result)
        assert self.jobs[job_id] is before, "a lost attempt's late event changed the job"

    @rule(data=st.data())
    def revive(self, data: st.DataObject) -> None:
        """An operator requeues a failed job (a dead letter)."""
        now = utcnow()
        failed = sorted(
            j.id for j in self.jobs.values() if j.state is JobState.FAILED and self.live(j.id, now)
        )
        if failed:
            self.apply(data.draw(st.sampled_from(failed), label="failed"), Revive(), None)

    def apply(self, job_id: str, event: Event, result: bytes | None) -> None:
        now = utcnow()
        old = self.live(job_id, now)
        outcome: Job | str
        if old is None:
            outcome = "not found"
        elif (
            isinstance(event, Revive)
            and old.key is not None
            and KINDS[old.kind] is not Uniqueness.NONE
        ):
            # Reviving a keyed job (`Revive(rule=...)` takes its key again, or is refused)
            # is not modelled here: test_a_revived_job_never_runs_beside_its_keys_new_holder
            # and tests/test_dead_letters.py check it on every store.
            return
        else:
            try:
                outcome = apply(old, event, now)
            except TransitionRefused:
                outcome = "refused"
            attempt = getattr(event, "attempt", None)
            if attempt is not None and (attempt, old.state) != (old.attempt, JobState.RUNNING):
                # Only the attempt that runs now may change its job (a queued job still
                # carries a lost attempt's number until it starts again).
                assert outcome == "refused", "a fenced event changed a record"
            if isinstance(event, Start) and old.state is JobState.QUEUED:
                # Before its notBefore (and its deadline) a job may not start.
                assert (outcome != "refused") == startable(old, event, now)
        if self.store is not None:
            carried: Job | None = None
            try:
                got: Job | str = self.call(
                    self.store.transition, job_id, event, result=result, now=now
                )
            except JobNotFound:
                got = "not found"
            except TransitionRefused as refused:
                got, carried = "refused", refused.job
            assert got == outcome
            if got == "refused":
                assert carried == old, "a refusal carries the unchanged record"
        if old is None or not isinstance(outcome, Job):
            return
        self.record(old, outcome, event, now)
        if isinstance(event, Succeed) and result is not None:
            self.results[job_id] = result

    def record(
        self, old: Job, new: Job, event: Event | None = None, now: datetime | None = None
    ) -> None:
        """Keep `new`, the record after a change of `old`, and check the change."""
        job_id = new.id
        if new is not old:
            assert new.version > old.version
            # Terminal states never change, but for a dead letter an operator requeues.
            assert not old.state.terminal or isinstance(event, Revive)
        assert new.attempt >= old.attempt, "an attempt number never decreases"
        assert (old.compensation_id or new.compensation_id) == new.compensation_id
        old_steps, new_steps = {s.name for s in old.steps}, {s.name for s in new.steps}
        assert old_steps <= new_steps, "a stored step is never lost"
        if new.steps != old.steps:
            assert isinstance(event, StepDone), "steps change only by a step stored"
            assert old.state is new.state is JobState.RUNNING, "steps are stored while running"
        assert set(new.step_results) == new_steps
        if isinstance(event, Start) and new.state is JobState.RUNNING:
            assert now is not None
            assert old.not_before is None or old.not_before <= now, "started before notBefore"
            assert new.attempt == old.attempt + 1
        if isinstance(event, Revive):
            assert now is not None
            assert (new.state, new.attempt, new.finished_at) == (JobState.QUEUED, old.attempt, None)
            # A fresh processing window, as long as the first one.
            assert new.deadline - now == old.deadline - (old.not_before or old.created_at)
            self.finals.pop(job_id)
        if isinstance(event, Start):
            assert job_id not in self.stopped_while_queued
        if old.state is JobState.QUEUED and new.state is JobState.STOPPED:
            self.stopped_while_queued.add(job_id)
        self.jobs[job_id] = new
        if new.state.terminal:
            self.finals.setdefault(job_id, new)
        if new.key is not None:
            held = self.holders.get((new.kind, new.key))
            if held is not None and held[0] == job_id:
                fate = key_after(held[1], new)
                if fate in (KeyAfter.FREE, KeyAfter.WAIT):
                    del self.holders[(new.kind, new.key)]
                if fate is KeyAfter.WAIT:
                    # Free, but the next holder waits for what this one waited for.
                    self.waits[(new.kind, new.key)] = new.after

    @rule(job_id=st.sampled_from(IDS))
    def start_after(self, job_id: str) -> None:
        """Start a job that replaced a running holder, the way the worker does: only
        once that holder is terminal (or gone)."""
        job = self.live(job_id, utcnow())
        if job is None or job.after is None:
            return
        holder = self.live(job.after, utcnow())
        if holder is None or holder.state.terminal:
            self.apply(job_id, Start(after_ended=True), None)

    @rule(kind=st.sampled_from(sorted(KINDS)), key=st.sampled_from(KEYS[1:]))
    def release(self, kind: str, key: str) -> None:
        held = self.holders.get((kind, key))
        holder = self.jobs.get(held[0]) if held is not None else None
        # The holder may be a later job under the same id (and another kind): then the
        # key's own job is long gone and the key is free to release.
        active = (
            holder is not None
            and holder.state in ACTIVE
            and (holder.kind, holder.key) == (kind, key)
        )
        expected = held is not None and not active
        if expected:
            del self.holders[(kind, key)]
        if self.store is not None:
            assert self.call(self.store.release_key, kind, key) == expected

    @rule(
        ahead=st.sampled_from([0, 7200]),
        purge=st.booleans(),
        limit=st.integers(min_value=1, max_value=3),
        kind=st.none() | st.sampled_from(sorted(KINDS)),
        state=st.none() | st.sampled_from(list(JobState)),
        key=st.none() | st.sampled_from(KEYS[1:]),
    )
    def observe(
        self,
        ahead: int,
        purge: bool,
        limit: int,
        kind: str | None,
        state: JobState | None,
        key: str | None,
    ) -> None:
        """What the sweeper and the job list see: overdue jobs, purge, pages."""
        if self.store is None:
            return
        now = utcnow()
        if purge:
            self.call(self.store.purge_expired, now)
        later = now + timedelta(seconds=ahead)
        late = {j.id for j in self.jobs.values() if j.finished_at is None and j.deadline < later}
        assert set(self.call(self.store.overdue, later, 100)) == late
        query = JobQuery(kind=kind, state=state, key=key, limit=limit)
        expected = sorted(
            (j for j in self.jobs.values() if not expired(j, now) and query.matches(j)),
            key=lambda j: (j.created_at, j.id),
            reverse=True,
        )
        seen: list[Job] = []
        cursor = None
        for _ in range(50):
            page = self.call(self.store.list_jobs, msgspec.structs.replace(query, cursor=cursor))
            assert len(page.items) <= limit
            seen += page.items
            cursor = page.next
            if cursor is None:
                break
        assert seen == expected

    # -- invariants ------------------------------------------------------------------

    @invariant()
    def records_obey_the_lifecycle(self) -> None:
        for job_id, job in self.jobs.items():
            assert (job.finished_at is not None) == job.state.terminal
            assert (job.result_size is not None) <= (job.state is JobState.SUCCEEDED)
            if job.state.terminal:
                assert self.finals[job_id] == job, "terminal states never change"
            if job_id in self.stopped_while_queued:
                # Stopped in the queue, it never runs again (a Start is refused, see apply).
                assert job.state is JobState.STOPPED

    @invariant()
    def one_job_of_a_key_runs_at_a_time(self) -> None:
        running = [
            (job.kind, job.key)
            for job in self.jobs.values()
            if job.state is JobState.RUNNING
            and job.key is not None
            and KINDS[job.kind] is not Uniqueness.NONE
        ]
        assert len(running) == len(set(running)), "two jobs of one key run at once"

    @invariant()
    def store_agrees_with_the_model(self) -> None:
        if self.store is None:
            return
        now = utcnow()
        for job_id in IDS:
            model = self.live(job_id, now)
            assert self.call(self.store.get, job_id) == model
            stored = self.call(self.store.get_result, job_id)
            if model is not None and model.state is JobState.SUCCEEDED:
                assert stored == self.results.get(job_id)
            else:
                assert stored is None, "a result exists only for succeeded jobs"

    @invariant()
    def store_counts_agree_with_the_model(self) -> None:
        if self.store is None:
            return

        def counts(at: datetime) -> Counter[tuple[str, JobState]]:
            return Counter(
                (job.kind, job.state) for job in self.jobs.values() if not expired(job, at)
            )

        # Records only ever leave by expiring: what the store counts lies between the
        # model just before the call (less a millisecond of rounding) and just after it.
        high = counts(utcnow() - timedelta(milliseconds=2))
        stored = self.call(self.store.count_states, sorted(KINDS))
        low = counts(utcnow())
        for kind in KINDS:
            for state in JobState:
                n = stored[kind][state]
                assert low[kind, state] <= n <= high[kind, state], (kind, state, n)


@pytest.mark.parametrize(
    "backend", ["pure", "memory", pytest.param("redis", marks=pytest.mark.redis)]
)
def test_lifecycle_state_machine(backend: str, request: pytest.FixtureRequest) -> None:
    open_store: Callable[[], Awaitable[StateStore]] | None = None
    if backend == "memory":

        async def open_memory() -> StateStore:
            return MemoryStateStore()

        open_store = open_memory
    elif backend == "redis":
        url = request.getfixturevalue("redis_url")
        prefix = request.getfixturevalue("unique_prefix")
        counter = itertools.count()

        async def open_redis() -> StateStore:
            # A fresh namespace per example: every run starts from an empty store.
            store = RedisStateStore(url, prefix=f"{prefix}{next(counter)}:")
            await store.start()
            return store

        open_store = open_redis

    async def close_store(store: StateStore) -> None:
        await store.aclose()
        if isinstance(store, RedisStateStore):
            await delete_prefix(store.url, store.prefix)

    with start_blocking_portal("asyncio") as portal:
        machine = type(
            "Machine",
            (LifecycleMachine,),
            {
                "portal": portal,
                "open_store": staticmethod(open_store) if open_store else None,
                "close_store": staticmethod(close_store),
            },
        )
        try:
            run_state_machine_as_test(machine, settings=machine_settings(backend))
        finally:
            if backend == "redis":
                portal.call(
                    delete_prefix,
                    request.getfixturevalue("redis_url"),
                    request.getfixturevalue("unique_prefix"),
                )


# -- gaps the machine steps around (each a strict xfail: it fails loudly once fixed) ----

BACKENDS = ["pure", "memory", pytest.param("redis", marks=pytest.mark.redis)]


@asynccontextmanager
async def opened(backend: str, request: pytest.FixtureRequest) -> AsyncIterator[StateStore | None]:
    """The store of `backend` (None for the pure lifecycle), emptied afterwards."""
    if backend == "pure":
        yield None
    elif backend == "memory":
        async with MemoryStateStore() as memory:
            yield memory
    else:
        url = request.getfixturevalue("redis_url")
        prefix = request.getfixturevalue("unique_prefix")
        try:
            async with RedisStateStore(url, prefix=prefix) as redis_store:
                await redis_store.start()
                yield redis_store
        finally:
            await delete_prefix(url, prefix)


class Driver:
    """Applies events to one store, or to a dict of records through `lifecycle.apply`."""

    def __init__(self, store: StateStore | None) -> None:
        self.store = store
        self.jobs: dict[str, Job] = {}

    async def insert(self, job: Job, uniqueness: Uniqueness = Uniqueness.NONE) -> Job:
        if self.store is not None:
            job = (await self.store.insert(job, uniqueness=uniqueness)).job
        self.jobs[job.id] = job
        return job

    async def change(self, job_id: str, event: Event) -> Job:
        """The record after `event`; raises `TransitionRefused` like a store."""
        if self.store is not None:
            return await self.store.transition(job_id, event)
        self.jobs[job_id] = apply(self.jobs[job_id], event, utcnow())
        return self.jobs[job_id]

    async def get(self, job_id: str) -> Job | None:
        if self.store is not None:
            return await self.store.get(job_id)
        return self.jobs.get(job_id)


def plain_job(job_id: str, key: str | None = None) -> Job:
    """A queued job of kind `k.active` with an hour to run and an hour of retention."""
    now = utcnow()
    return Job(
        id=job_id,
        kind="k.active",
        state=JobState.QUEUED,
        created_at=now,
        deadline=now + timedelta(hours=1),
        retention=3600.0,
        key=key,
    )


@pytest.mark.anyio
@pytest.mark.parametrize("late", [Fail(ERROR, 1), TimeOut(1)], ids=["fail", "timeout"])
@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_lost_attempts_late_failure_is_refused_while_the_job_waits_to_run_again(
    backend: str, late: Event, request: pytest.FixtureRequest
) -> None:
    """A worker freezes past its lease; the sweep takes the job back (queued again,
    attempt 1 kept) and before another worker starts it, the frozen one wakes up and
    reports its failure (or timeout) of attempt 1: that attempt is over, so the
    outcome must be refused and the job stay queued to run again."""
    async with opened(backend, request) as store:
        jobs = Driver(store)
        await jobs.insert(plain_job("lapsed"))
        assert (await jobs.change("lapsed", Start())).attempt == 1
        queued = await jobs.change("lapsed", Retry(LOST, attempt=1))
        try:
            await jobs.change("lapsed", late)
        except TransitionRefused:
            pass
        assert await jobs.get("lapsed") == queued, "the lost attempt's outcome changed the job"


@pytest.mark.anyio
@pytest.mark.parametrize("backend", ["memory", pytest.param("redis", marks=pytest.mark.redis)])
async def test_a_revived_job_never_runs_beside_its_keys_new_holder(
    backend: str, request: pytest.FixtureRequest
) -> None:
    """Job A of key x is a dead letter; job B takes the free key and runs; an operator
    requeues A. Whatever the store does (refuse the requeue, or make A wait for B),
    A and B never run at once."""
    async with opened(backend, request) as store:
        jobs = Driver(store)
        await jobs.insert(plain_job("a", key="x"), Uniqueness.ACTIVE)
        await jobs.change("a", Start())
        await jobs.change("a", Fail(ErrorInfo(error_id="dead_letter")))
        await jobs.insert(plain_job("b", key="x"), Uniqueness.ACTIVE)
        await jobs.change("b", Start())
        # Revive with the kind's rule takes the key again, or is refused while B holds it.
        for event in (Revive(rule=Uniqueness.ACTIVE), Start()):
            try:
                await jobs.change("a", event)
            except (TransitionRefused, KeyConflict):
                break
        running = [
            j for j in ("a", "b") if (job := await jobs.get(j)) and job.state is JobState.RUNNING
        ]
        assert running != ["a", "b"], "two jobs of one key run at once"
