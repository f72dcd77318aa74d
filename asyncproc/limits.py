"""Per-kind start limits (API.md section 13): `max_concurrency` and `rate_limit`.

The rule is pure (`start_wait`, `spare_copy`): both StateStores apply it, the memory
store in Python and the Redis store in its ACQUIRE script (which mirrors it line by
line). `StartGate` is the worker's side: it asks the store for a permit before a
limited job starts, re-publishes a refused job with a delay (the record stays
`queued`: nothing fails, no worker slot waits), releases the permit however the job
ends, and renews permits with the leases. Kinds without limits never reach it.

How a held job comes back: a job refused by the rate comes back when the oldest start
of the window leaves it (an exact wait). A job refused by `max_concurrency` joins the
kind's waiters; each release wakes the oldest waiter at once (a message of its own),
and its delayed message, due when the earliest permit would lapse if never renewed
(at most one lease), is the fallback when no wake comes. A refused delivery that
arrives before its job's fallback is due is a spare copy and is dropped, so a job
never keeps more than one fallback message in the queue.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, NamedTuple, Protocol

from .errors import BackendUnavailable
from .model import Job, JobState, utcnow

if TYPE_CHECKING:
    from .interfaces import Delivery
    from .service import JobService

__all__ = [
    "MIN_WAIT",
    "RATE_SLACK",
    "STALE",
    "WAKE_EARLY",
    "Limits",
    "Permits",
    "StartGate",
    "limits_of",
    "parse_rate",
    "spare_copy",
    "start_wait",
]

log = logging.getLogger("asyncproc")

WINDOWS = {"s": 1.0, "m": 60.0, "h": 3600.0}
# Added to every rate window: a start is counted from its grant, but the record's
# `startedAt` is written a moment later (a store round trip), and those moments
# must not squeeze n + 1 starts into one window.
RATE_SLACK = 0.025
# The shortest wait handed out, so a refused job never comes straight back.
MIN_WAIT = 0.01
# A refused delivery this long before its job's fallback is due is a spare copy.
WAKE_EARLY = 0.05
# A waiter whose fallback is this overdue is gone (stopped, failed): forgotten.
STALE = 60.0


class Limits(NamedTuple):
    """A kind's limits: running jobs at once, and (n starts, per window seconds)."""

    max_concurrency: int | None
    rate: tuple[int, float] | None


class _Limited(Protocol):
    max_concurrency: int | None
    rate_limit: str | None


def parse_rate(text: str) -> tuple[int, float]:
    """`"<n>/s"`, `"<n>/m"` or `"<n>/h"` as (n, window seconds); ValueError otherwise."""
    count, _, unit = text.partition("/")
    if unit not in WINDOWS or not count.isdigit() or int(count) < 1:
        raise ValueError(f"{text!r}: expected n/s, n/m or n/h with n >= 1")
    return int(count), WINDOWS[unit]


def limits_of(kind: _Limited) -> Limits | None:
    """The kind's limits, or None when it has none (its jobs skip the gate)."""
    rate = parse_rate(kind.rate_limit) if kind.rate_limit else None
    if kind.max_concurrency is None and rate is None:
        return None
    return Limits(kind.max_concurrency, rate)


def start_wait(
    limits: Limits,
    *,
    running: int,
    earliest_lapse: float | None,
    starts: int,
    oldest_start: float | None,
    now: float,
    lease: float,
) -> float:
    """Seconds before a job of a kind with `limits` may try to start again; 0: now.

    `running` permits are held (none lapsed), the earliest lapsing at
    `earliest_lapse`; `starts` grants lie within the last window + `RATE_SLACK`, the
    oldest at `oldest_start` (times in epoch seconds). A full semaphore answers the
    time until its earliest permit would lapse (at most `lease`): a release wakes a
    waiter sooner; a full window the time until its oldest start leaves it.
    """
    wait = 0.0
    if limits.rate is not None and oldest_start is not None and starts >= limits.rate[0]:
        wait = max(MIN_WAIT, oldest_start + limits.rate[1] + RATE_SLACK - now)
    if limits.max_concurrency is not None and running >= limits.max_concurrency:
        fallback = lease
        if earliest_lapse is not None:
            fallback = min(lease, max(MIN_WAIT, earliest_lapse - now))
        wait = max(wait, fallback)
    return wait


def spare_copy(due: float | None, now: float) -> bool:
    """True when a refused job's delivery is a spare copy (a wake, a duplicate): its
    fallback message, due at `due`, is still to come."""
    return due is not None and now < due - WAKE_EARLY


class Permits:
    """One kind's permits, start log and waiters in local structures (the memory
    store's; times in epoch seconds). Mirrors the Redis store's ACQUIRE and RELEASE."""

    __slots__ = ("due", "running", "starts", "waiting")

    def __init__(self) -> None:
        self.running: dict[str, float] = {}  # holder -> when its permit lapses
        self.starts: list[tuple[float, str]] = []  # (grant time, holder), oldest first
        self.waiting: dict[str, float] = {}  # job id -> when it first waited (FIFO)
        self.due: dict[str, float] = {}  # job id -> when its fallback message is due

    def acquire(
        self, job_id: str, holder: str, limits: Limits, lease_until: float, now: float
    ) -> float:
        """See `StateStore.acquire_start`."""
        if limits.max_concurrency is not None:
            self.running = {h: until for h, until in self.running.items() if until >= now}
            if holder in self.running:
                return 0.0
        if limits.rate is not None:
            horizon = now - limits.rate[1] - RATE_SLACK
            self.starts = [(at, h) for at, h in self.starts if at > horizon]
        wait = start_wait(
            limits,
            running=len(self.running),
            earliest_lapse=min(self.running.values(), default=None),
            starts=len(self.starts),
            oldest_start=self.starts[0][0] if self.starts else None,
            now=now,
            lease=max(0.0, lease_until - now),
        )
        if wait <= 0:
            if limits.max_concurrency is not None:
                self.running[holder] = lease_until
            if limits.rate is not None:
                self.starts.append((now, holder))
                self.starts.sort()
            self.waiting.pop(job_id, None)
            self.due.pop(job_id, None)
            return 0.0
        self.due = {job: at for job, at in self.due.items() if at >= now - STALE}
        full = limits.max_concurrency is not None and len(self.running) >= limits.max_concurrency
        if full:
            self.waiting.setdefault(job_id, now)
        due = self.due.get(job_id)
        if due is not None and spare_copy(due, now):
            return now - due
        self.due[job_id] = now + wait
        return wait

    def release(self, holder: str, now: float, queued: Callable[[str], bool]) -> str | None:
        """See `StateStore.release_start`; `queued(job_id)` tells a waiter still queued."""
        if self.running.pop(holder, None) is None:
            return None
        while self.waiting:
            job_id = next(iter(self.waiting))
            del self.waiting[job_id]
            due = self.due.get(job_id)
            if due is not None and due >= now - STALE and queued(job_id):
                return job_id
            self.due.pop(job_id, None)
        return None

    def renew(self, holders: Sequence[str], until: float) -> None:
        """See `StateStore.renew_starts`."""
        for holder in holders:
            if holder in self.running:
                self.running[holder] = until


class StartGate:
    """A worker pool's permits for the jobs of limited kinds.

    Built once per pool from the registry (after `[kinds.*]` settings apply);
    `kinds` is empty when no kind is limited, and then the pool never calls it.
    """

    def __init__(self, service: JobService, lease: float) -> None:
        self.service = service
        self.lease = lease
        self.kinds: dict[str, Limits] = {}
        for kind in service.registry:
            limits = limits_of(kind)
            if limits is not None:
                self.kinds[kind.name] = limits
        # delivery -> (kind, holder): the permits this pool holds, by the delivery that
        # took each (two copies of one job's message may be in hand at once).
        self.held: dict[Delivery, tuple[str, str]] = {}
        self.names = frozenset(self.kinds)

    async def admit(self, delivery: Delivery, job: Job) -> bool:
        """True when the delivery may go on to start `job` (its record, as the refused
        `Start` handed it over; a permit is held when its kind is limited); False when
        the job was held back: re-published with the wait, or dropped as a spare copy.
        The record stays as it is."""
        service = self.service
        limits = self.kinds.get(job.kind)
        if limits is None:
            return True
        now = utcnow()
        if job.state is JobState.QUEUED:
            if job.not_before is not None and job.not_before > now:
                return True  # not due yet: the start refuses it and queues it again
        elif not (job.state is JobState.RUNNING and delivery.redelivered):
            return True  # finished, or a duplicate of a running job: nothing starts
        holder = f"{job.id}.{os.urandom(6).hex()}"
        wait = await service.store.acquire_start(
            job.kind, job.id, holder, limits, now + timedelta(seconds=self.lease), now=now
        )
        if wait == 0:
            self.held[delivery] = (job.kind, holder)
            return True
        if wait > 0:
            await service.queue.publish(job.id, job.proc_routing, delay=wait)
        elif delivery.redelivered:
            # A spare copy given back (a publish that failed after the refusal, a
            # consumer gone) may be the job's only message: it comes back when due.
            await service.queue.publish(job.id, job.proc_routing, delay=-wait)
        return False

    async def release(self, delivery: Delivery) -> None:
        """Give back the permit `delivery` took, if any, and wake the kind's oldest
        waiter; a store or queue outage only delays that waiter until its fallback."""
        held = self.held.pop(delivery, None)
        if held is None:
            return
        kind, holder = held
        store = self.service.store
        try:
            woken = await store.release_start(kind, holder)
            if woken is None:
                return
            job = await store.get(woken)
            if job is not None and job.state is JobState.QUEUED:
                await self.service.queue.publish(job.id, job.proc_routing)
        except BackendUnavailable:
            pass  # the permit lapses with its lease; the waiter has its fallback

    async def renew(self, until: datetime) -> None:
        """Renew the permits held here until `until` (with the jobs' leases)."""
        if self.held:
            by_kind: dict[str, list[str]] = {}
            for kind, holder in self.held.values():
                by_kind.setdefault(kind, []).append(holder)
            await self.service.store.renew_starts(by_kind, until)
