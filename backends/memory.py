"""In-memory StateStore and Queue: the single-node default and the test double.

Both live in one process and one event loop; atomicity comes from never awaiting
between a read and its write.
"""

from __future__ import annotations

import asyncio
import heapq
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from datetime import datetime, timedelta

import anyio
import msgspec

from asyncproc.changes import Change, ChangeHub
from asyncproc.errors import JobNotFound, KeyConflict
from asyncproc.interfaces import (
    Created,
    Delivery,
    Doc,
    JobQuery,
    Page,
    Queue,
    StateStore,
)
from asyncproc.lifecycle import Event, Revive, Succeed, apply, lease_after
from asyncproc.limits import Limits, Permits
from asyncproc.model import Job, JobState, OnConflict, Uniqueness, utcnow
from asyncproc.rules import (
    KeyAfter,
    expired,
    holds_key,
    key_after,
    replace_event,
    waits_for,
)

from .memory_index import JobIndex

__all__ = ["MemoryQueue", "MemoryStateStore"]

_MINUTES_KEPT = timedelta(hours=2)


class MemoryStateStore(StateStore):
    """Job records and results in dicts; expiry by a heap the sweeper drains."""

    name = "memory"

    def __init__(self, hub: ChangeHub | None = None, *, max_finished: int = 0) -> None:
        self.hub = hub or ChangeHub()
        # Finished jobs kept at most (0: no cap); past it the oldest finished go first.
        self.max_finished = max_finished
        self._jobs: dict[str, Job] = {}
        self._index = JobIndex()
        # Finished job ids in the order they finished: what the cap drops first.
        # An OrderedDict, not a dict: taking the oldest off a dict again and again
        # walks past every slot emptied before it (`_cap` went quadratic).
        self._finished: OrderedDict[str, None] = OrderedDict()
        self._results: dict[str, bytes] = {}
        self._unfinished: dict[str, datetime] = {}
        self._expiry: list[tuple[datetime, str]] = []
        # (kind, key) -> (holder job id, its rule); see `create`.
        self._holders: dict[tuple[str, str], tuple[str, Uniqueness]] = {}
        self._docs: dict[str, dict[str, Doc]] = {}
        self._leases: dict[str, datetime] = {}
        # (kind, key) -> the job a free key's next holder waits for (`KeyAfter.WAIT`).
        self._waits: dict[tuple[str, str], str] = {}
        # kind -> its start permits, start log and waiters (`max_concurrency`, `rate_limit`).
        self._permits: dict[str, Permits] = {}
        # (kind, state) -> how many stored records are in it (`count_states`).
        self._state_counts: dict[tuple[str, JobState], int] = {}
        # minute -> name -> count (`add_minute_counts`), the last `_MINUTES_KEPT`.
        self._minutes: dict[datetime, dict[str, int]] = {}

    async def ping(self) -> None:
        """Always answers: the store is this process."""

    def _live(self, job_id: str, now: datetime | None = None) -> Job | None:
        job = self._jobs.get(job_id)
        if job is not None and job.finished_at is not None and expired(job, now or utcnow()):
            self._drop(job_id)
            return None
        return job

    def _drop(self, job_id: str) -> None:
        job = self._jobs.pop(job_id, None)
        if job is not None:
            self._index.remove(job, self._indexed)
            self._count(job.kind, job.state, -1)
        self._results.pop(job_id, None)
        self._unfinished.pop(job_id, None)
        self._finished.pop(job_id, None)

    def _indexed(self, entry: tuple[datetime, str]) -> bool:
        job = self._jobs.get(entry[1])
        return job is not None and job.created_at == entry[0]

    def _cap(self) -> None:
        """Drop the oldest finished jobs past `max_finished`."""
        while len(self._finished) > self.max_finished:
            job_id, _ = self._finished.popitem(last=False)
            self._drop(job_id)

    def _holder(self, kind: str, key: str) -> Job | None:
        """The job holding (kind, key), forgetting an entry that no longer holds."""
        entry = self._holders.get((kind, key))
        if entry is None:
            return None
        job = self._live(entry[0])
        if job is not None and (job.kind, job.key) == (kind, key):
            if holds_key(entry[1], job.state):
                return job
        elif entry[1] is Uniqueness.ONCE:
            return None  # a succeeded `once` job purged after retention still holds it
        del self._holders[(kind, key)]
        return None

    def _release_on_finish(self, job: Job) -> None:
        """A finished job frees its key, except a succeeded `once` job."""
        if job.key is None:
            return
        entry = self._holders.get((job.kind, job.key))
        if entry is None or entry[0] != job.id:
            return
        fate = key_after(entry[1], job)
        if fate is KeyAfter.FREE or fate is KeyAfter.WAIT:
            del self._holders[(job.kind, job.key)]
        if fate is KeyAfter.WAIT and job.after is not None:
            self._waits[(job.kind, job.key)] = job.after

    async def insert(
        self,
        job: Job,
        *,
        uniqueness: Uniqueness = Uniqueness.NONE,
        on_conflict: OnConflict = OnConflict.REJECT,
    ) -> Created:
        """See `StateStore.insert`."""
        existing = self._live(job.id)
        if existing is not None:
            return Created(existing, False)
        replaced = None
        key = job.key
        if key is not None and uniqueness is not Uniqueness.NONE:
            holder = self._holder(job.kind, key)
            entry = self._holders.get((job.kind, key))
            if entry is not None:  # held (by `holder`, or by a purged `once` job)
                if on_conflict is OnConflict.EXISTING and holder is not None:
                    return Created(holder, False)
                if on_conflict is not OnConflict.REPLACE:
                    raise KeyConflict(f"key {key!r} is held by job {entry[0]}", jobId=entry[0])
                event = replace_event(holder) if holder is not None else None
                if holder is not None and event is not None:
                    replaced = (holder, self._write(holder, event, None, utcnow()))
                    after = waits_for(replaced[1])
                    if after is not None:
                        job = msgspec.structs.replace(job, after=after)
            wait = self._waits.pop((job.kind, key), None)
            if wait is not None and job.after is None and (job.kind, key) not in self._holders:
                job = msgspec.structs.replace(job, after=wait)
            self._holders[(job.kind, key)] = (job.id, uniqueness)
        self._jobs[job.id] = job
        self._index.add(job)
        self._count(job.kind, job.state, 1)
        self._unfinished[job.id] = job.deadline
        self._publish(job)
        return Created(job, True, replaced)

    async def forget(self, job: Job) -> bool:
        """See `StateStore.forget`."""
        current = self._jobs.get(job.id)
        if current is None or current.version != job.version:
            return False
        self._drop(job.id)
        if current.key is not None:
            entry = self._holders.get((current.kind, current.key))
            if entry is not None and entry[0] == job.id:
                del self._holders[(current.kind, current.key)]
        return True

    async def key_holder(self, kind: str, key: str) -> Job | None:
        """See `StateStore.key_holder`."""
        return self._holder(kind, key)

    async def get(self, job_id: str) -> Job | None:
        """See `StateStore.get`."""
        return self._live(job_id)

    async def change(
        self,
        job_id: str,
        event: Event,
        *,
        result: bytes | None = None,
        now: datetime | None = None,
        by_runner: bool = False,
    ) -> tuple[Job, Job]:
        """See `StateStore.change`."""
        now = now or utcnow()
        job = self._live(job_id, now)
        if job is None:
            raise JobNotFound(f"no job {job_id}")
        if isinstance(event, Revive) and event.rule is not Uniqueness.NONE and job.key:
            return job, self._revive_keyed(job, event, now)
        return job, self._write(job, event, result, now)

    def _revive_keyed(self, job: Job, event: Revive, now: datetime) -> Job:
        """Revive `job` and take its key again, unless another job holds it."""
        assert job.key is not None
        slot = (job.kind, job.key)
        self._holder(job.kind, job.key)  # forgets a hold that no longer holds
        entry = self._holders.get(slot)
        if entry is not None and entry[0] != job.id:
            raise KeyConflict(f"key {job.key!r} is held by job {entry[0]}", jobId=entry[0])
        new = self._write(job, event, None, now)
        self._holders[slot] = (job.id, event.rule)
        wait = self._waits.pop(slot, None)
        if wait is not None and wait != job.id:
            new = self._jobs[job.id] = msgspec.structs.replace(new, after=wait)
        return new

    def _write(self, job: Job, event: Event, result: bytes | None, now: datetime) -> Job:
        new = apply(job, event, now)
        if new is job:
            return job
        job_id = job.id
        self._jobs[job_id] = new
        self._index.moved(job, new)
        if new.state is not job.state:
            self._count(job.kind, job.state, -1)
            self._count(new.kind, new.state, 1)
        if isinstance(event, Succeed) and result is not None:
            self._results[job_id] = result
        lease = lease_after(job, new, event)
        if lease is False:
            self._leases.pop(job_id, None)
        elif lease is not True:
            self._leases[job_id] = lease
        if new.finished_at is not None:
            self._unfinished.pop(job_id, None)
            heapq.heappush(self._expiry, (new.expires_at, job_id))
            self._release_on_finish(new)
            self._finished[job_id] = None
            if self.max_finished and len(self._finished) > self.max_finished:
                self._cap()
        elif job.finished_at is not None:
            # Revived (a dead letter requeued): unfinished again, with a new deadline;
            # its entry in the expiry heap is skipped by `purge_expired`.
            self._unfinished[job_id] = new.deadline
            self._finished.pop(job_id, None)
        self._publish(new)
        return new

    def _count(self, kind: str, state: JobState, delta: int) -> None:
        slot = (kind, state)
        self._state_counts[slot] = self._state_counts.get(slot, 0) + delta

    def _publish(self, job: Job) -> None:
        self.hub.publish(Change(job.id, job.version, job.state, job.stop_requested))

    async def get_result(self, job_id: str) -> bytes | None:
        """See `StateStore.get_result`."""
        return self._results.get(job_id) if self._live(job_id) is not None else None

    async def list_jobs(self, query: JobQuery) -> Page:
        """See `StateStore.list_jobs`."""
        now = utcnow()
        return self._index.page(query, self._jobs.get, lambda job: not expired(job, now))

    async def release_key(self, kind: str, key: str) -> bool:
        """See `StateStore.release_key`."""
        entry = self._holders.get((kind, key))
        if entry is None or entry[1] is not Uniqueness.ONCE:
            return False
        holder = self._holder(kind, key)
        if holder is not None and not holder.state.terminal:
            return False
        self._holders.pop((kind, key), None)
        return True

    async def overdue(self, now: datetime, limit: int = 100) -> list[str]:
        """See `StateStore.overdue`."""
        late = [job_id for job_id, deadline in self._unfinished.items() if deadline < now]
        return late[:limit]

    async def unfinished(self, limit: int = 200) -> list[str]:
        """See `StateStore.unfinished`."""
        return heapq.nsmallest(limit, self._unfinished, key=self._unfinished.__getitem__)

    async def purge_expired(self, now: datetime) -> int:
        """See `StateStore.purge_expired`."""
        purged = 0
        while self._expiry and self._expiry[0][0] <= now:
            _, job_id = heapq.heappop(self._expiry)
            job = self._jobs.get(job_id)
            if job is not None and job.finished_at is not None and job.expires_at <= now:
                self._drop(job_id)
                purged += 1
        if len(self._expiry) > 2 * len(self._finished) + 1024:
            # Entries of jobs the cap dropped (or revived): rebuild rather than keep them
            # until their time comes, so the heap stays the size of what is held.
            self._expiry = [(self._jobs[i].expires_at, i) for i in self._finished]
            heapq.heapify(self._expiry)
        return purged

    async def count_states(self, kinds: Iterable[str]) -> dict[str, dict[JobState, int]]:
        """See `StateStore.count_states`."""
        await self.purge_expired(utcnow())  # what `get` would no longer answer
        counts = self._state_counts
        return {kind: {state: counts.get((kind, state), 0) for state in JobState} for kind in kinds}

    async def add_minute_counts(self, counts: Mapping[tuple[datetime, str], int]) -> None:
        """See `StateStore.add_minute_counts`."""
        for (minute, name), n in counts.items():
            names = self._minutes.setdefault(minute, {})
            names[name] = names.get(name, 0) + n
        horizon = utcnow() - _MINUTES_KEPT
        for minute in [m for m in self._minutes if m < horizon]:
            del self._minutes[minute]

    async def minute_counts(self, first: datetime, minutes: int) -> list[dict[str, int]]:
        """See `StateStore.minute_counts`."""
        step = timedelta(minutes=1)
        return [dict(self._minutes.get(first + i * step, {})) for i in range(minutes)]

    async def hold_lease(self, job_ids: Sequence[str], until: datetime) -> None:
        """See `StateStore.hold_lease`."""
        for job_id in job_ids:
            self._leases[job_id] = until

    async def drop_lease(self, job_id: str) -> None:
        """See `StateStore.drop_lease`."""
        self._leases.pop(job_id, None)

    async def lease_of(self, job_id: str) -> datetime | None:
        """See `StateStore.lease_of`."""
        return self._leases.get(job_id)

    async def lapsed(self, now: datetime, limit: int = 100) -> list[str]:
        """See `StateStore.lapsed`."""
        return [job_id for job_id, until in self._leases.items() if until < now][:limit]

    async def acquire_start(
        self,
        kind: str,
        job_id: str,
        holder: str,
        limits: Limits,
        lease_until: datetime,
        *,
        now: datetime | None = None,
    ) -> float:
        """See `StateStore.acquire_start`."""
        permits = self._permits.setdefault(kind, Permits())
        moment = (now or utcnow()).timestamp()
        return permits.acquire(job_id, holder, limits, lease_until.timestamp(), moment)

    async def release_start(self, kind: str, holder: str) -> str | None:
        """See `StateStore.release_start`."""
        permits = self._permits.get(kind)
        if permits is None:
            return None

        def queued(job_id: str) -> bool:
            job = self._live(job_id)
            return job is not None and job.state is JobState.QUEUED

        return permits.release(holder, utcnow().timestamp(), queued)

    async def renew_starts(self, holders: Mapping[str, Sequence[str]], until: datetime) -> None:
        """See `StateStore.renew_starts`."""
        for kind, names in holders.items():
            permits = self._permits.get(kind)
            if permits is not None:
                permits.renew(names, until.timestamp())

    async def get_doc(self, space: str, name: str) -> Doc | None:
        """See `StateStore.get_doc`."""
        return self._docs.get(space, {}).get(name)

    async def put_doc(
        self, space: str, name: str, data: bytes, *, expected: int | None = None
    ) -> int | None:
        """See `StateStore.put_doc`."""
        docs = self._docs.setdefault(space, {})
        current = docs.get(name)
        version = current.version if current is not None else 0
        if expected is not None and expected != version:
            return None
        docs[name] = Doc(bytes(data), version + 1)
        return version + 1

    async def list_docs(self, space: str) -> dict[str, Doc]:
        """See `StateStore.list_docs`."""
        return dict(sorted(self._docs.get(space, {}).items()))

    async def delete_doc(self, space: str, name: str) -> bool:
        """See `StateStore.delete_doc`."""
        return self._docs.get(space, {}).pop(name, None) is not None


class _MemoryDelivery(Delivery):
    __slots__ = ("_consumer", "_settled", "job_id", "redelivered", "routing")

    def __init__(self, consumer: _Consumer, job_id: str, routing: str, redelivered: bool) -> None:
        self._consumer = consumer
        self._settled = False
        self.job_id = job_id
        self.routing = routing
        self.redelivered = redelivered

    def _settle(self) -> bool:
        if self._settled:
            return False
        self._settled = True
        self._consumer.settled(self)
        return True

    async def ack(self) -> None:
        """See `Delivery.ack`."""
        self._settle()

    async def requeue(self) -> None:
        """See `Delivery.requeue`."""
        if self._settle():
            self._consumer.queue.put_back(self.job_id, self.routing)

    async def reject(self) -> None:
        """See `Delivery.reject`."""
        if self._settle():
            self._consumer.queue.dead_letters.append((self.routing, self.job_id))


class _Consumer:
    def __init__(self, queue: MemoryQueue, routings: Sequence[str], prefetch: int) -> None:
        self.queue = queue
        self.routings = list(routings)
        self.prefetch = max(1, prefetch)
        self.unsettled: set[_MemoryDelivery] = set()
        self.wakeup = anyio.Event()

    def wake(self) -> None:
        self.wakeup.set()

    def settled(self, delivery: _MemoryDelivery) -> None:
        self.unsettled.discard(delivery)
        self.wakeup.set()

    def take(self) -> _MemoryDelivery | None:
        if len(self.unsettled) >= self.prefetch:
            return None
        for routing in self.routings:
            waiting = self.queue.waiting(routing)
            if waiting:
                job_id, redelivered = waiting.popleft()
                delivery = _MemoryDelivery(self, job_id, routing, redelivered)
                self.unsettled.add(delivery)
                return delivery
        return None

    async def deliveries(self) -> AsyncIterator[Delivery]:
        while True:
            delivery = self.take()
            if delivery is not None:
                yield delivery
                continue
            await self.wakeup.wait()
            self.wakeup = anyio.Event()


class MemoryQueue(Queue):
    """One deque per routing; unsettled deliveries return when their consumer closes."""

    name = "memory"

    def __init__(self) -> None:
        self._waiting: dict[str, deque[tuple[str, bool]]] = {}
        self._consumers: dict[str, set[_Consumer]] = {}
        self.dead_letters: list[tuple[str, str]] = []
        # Delayed messages: the event loop's own timer heap, no task per message.
        self._timers: set[asyncio.TimerHandle] = set()

    def waiting(self, routing: str) -> deque[tuple[str, bool]]:
        """The messages waiting on `routing`: (job id, redelivered)."""
        waiting = self._waiting.get(routing)
        if waiting is None:
            waiting = self._waiting[routing] = deque()
        return waiting

    async def ping(self) -> None:
        """Always answers: the queue is this process."""

    async def publish(
        self, job_id: str, routing: str, *, delay: float = 0.0, hint: bytes = b""
    ) -> None:
        """See `Queue.publish` (the hint is dropped: the records are in this process)."""
        if delay > 0:

            def due() -> None:
                self._timers.discard(timer)
                self.waiting(routing).append((job_id, False))
                self._wake(routing)

            timer = asyncio.get_running_loop().call_later(delay, due)
            self._timers.add(timer)
            return
        self.waiting(routing).append((job_id, False))
        self._wake(routing)

    async def aclose(self) -> None:
        """Drop the delayed messages' timers (the queue goes with the process)."""
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()

    def put_back(self, job_id: str, routing: str) -> None:
        """Return a message to the head of its queue, flagged redelivered."""
        self.waiting(routing).appendleft((job_id, True))
        self._wake(routing)

    def _wake(self, routing: str) -> None:
        for consumer in self._consumers.get(routing, ()):
            consumer.wake()

    @asynccontextmanager
    async def consume(
        self, routings: Sequence[str], prefetch: int
    ) -> AsyncIterator[AsyncIterator[Delivery]]:
        """See `Queue.consume`."""
        consumer = _Consumer(self, routings, prefetch)
        for routing in consumer.routings:
            self._consumers.setdefault(routing, set()).add(consumer)
        try:
            yield consumer.deliveries()
        finally:
            for routing in consumer.routings:
                self._consumers[routing].discard(consumer)
            for delivery in list(consumer.unsettled):
                await delivery.requeue()

    async def take(self, routings: Sequence[str], count: int, wait: float) -> list[Delivery]:
        """See `Queue.take`: a short-lived consumer of `count` deliveries."""
        consumer = _Consumer(self, routings, count)
        for routing in consumer.routings:
            self._consumers.setdefault(routing, set()).add(consumer)
        taken: list[Delivery] = []
        try:
            with anyio.move_on_after(wait):
                while not self._take_into(consumer, taken):
                    await consumer.wakeup.wait()
                    consumer.wakeup = anyio.Event()
            self._take_into(consumer, taken)  # what came as the wait ran out
        finally:
            for routing in consumer.routings:
                self._consumers[routing].discard(consumer)
        return taken

    @staticmethod
    def _take_into(consumer: _Consumer, taken: list[Delivery]) -> bool:
        """Move what `consumer` may take into `taken` (its prefetch is the count)."""
        while (delivery := consumer.take()) is not None:
            taken.append(delivery)
        return bool(taken)

    async def depth(self, routing: str) -> int:
        """See `Queue.depth`."""
        return len(self._waiting.get(routing, ()))
