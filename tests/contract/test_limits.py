"""The StateStore contract for start limits (API.md section 13): `acquire_start`,
`release_start` and `renew_starts` on every store. A full semaphore refuses until a
permit is released or lapses (a dead holder's permit comes back after its lease), a
full rate window refuses until its oldest start leaves it, a release wakes the
oldest waiter, and a spare copy of a held job's message is told apart from its
fallback. Times are passed in, so nothing here waits.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pytest

from asyncproc.interfaces import StateStore
from asyncproc.lifecycle import RequestStop
from asyncproc.limits import RATE_SLACK, WAKE_EARLY, Limits
from asyncproc.model import utcnow
from tests.contract import new_job

pytestmark = pytest.mark.anyio

TWO_AT_ONCE = Limits(max_concurrency=2, rate=None)
ONE_AT_ONCE = Limits(max_concurrency=1, rate=None)
THREE_PER_SECOND = Limits(max_concurrency=None, rate=(3, 1.0))
LEASE = timedelta(seconds=10)
KIND = "demo.limited"


async def acquire(
    store: StateStore, job: str, limits: Limits, now: datetime, *, lease: timedelta = LEASE
) -> float:
    """Acquire for `job` with holder `<job>.h` at `now`."""
    return await store.acquire_start(KIND, job, f"{job}.h", limits, now + lease, now=now)


async def queued(store: StateStore, *job_ids: str) -> None:
    """Store queued records of `job_ids` (a release wakes only queued waiters)."""
    for job_id in job_ids:
        await store.create(new_job(job_id, kind=KIND))


async def test_a_full_semaphore_refuses_until_a_release_wakes_the_oldest_waiter(
    store: StateStore,
) -> None:
    await queued(store, "c", "d")
    now = utcnow()
    assert await acquire(store, "a", TWO_AT_ONCE, now) == 0
    assert await acquire(store, "b", TWO_AT_ONCE, now) == 0
    wait_c = await acquire(store, "c", TWO_AT_ONCE, now)
    wait_d = await acquire(store, "d", TWO_AT_ONCE, now + timedelta(seconds=0.1))
    # Refused, and told to come back at the latest when a permit would lapse.
    assert 0 < wait_c <= LEASE.total_seconds()
    assert 0 < wait_d <= LEASE.total_seconds()

    assert await store.release_start(KIND, "a.h") == "c"  # the oldest waiter first
    assert await acquire(store, "c", TWO_AT_ONCE, now + timedelta(seconds=0.2)) == 0
    # Full again: d still waits; b's release wakes it.
    assert await acquire(store, "e", TWO_AT_ONCE, now + timedelta(seconds=0.3)) > 0
    assert await store.release_start(KIND, "b.h") == "d"
    assert await acquire(store, "d", TWO_AT_ONCE, now + timedelta(seconds=0.4)) == 0


async def test_a_release_of_a_permit_not_held_wakes_nobody(store: StateStore) -> None:
    now = utcnow()
    assert await store.release_start(KIND, "nobody.h") is None
    assert await acquire(store, "a", ONE_AT_ONCE, now) == 0
    assert await store.release_start(KIND, "a.h") is None  # no waiter
    assert await store.release_start(KIND, "a.h") is None  # released already


async def test_the_permits_of_a_dead_holder_come_back_after_its_lease(
    store: StateStore,
) -> None:
    now = utcnow()
    lease = timedelta(seconds=2)
    assert await acquire(store, "dead", ONE_AT_ONCE, now, lease=lease) == 0
    wait = await acquire(store, "next", ONE_AT_ONCE, now + timedelta(seconds=1), lease=lease)
    # Refused until the dead holder's permit lapses (at most the lease away).
    assert 0 < wait <= 1.0 + 1e-6
    later = now + lease + timedelta(seconds=0.5)
    assert await acquire(store, "next", ONE_AT_ONCE, later, lease=lease) == 0


async def test_a_renewed_permit_stays_held_and_a_released_one_stays_released(
    store: StateStore,
) -> None:
    await queued(store, "other")
    now = utcnow()
    lease = timedelta(seconds=2)
    assert await acquire(store, "alive", ONE_AT_ONCE, now, lease=lease) == 0
    await store.renew_starts({KIND: ["alive.h"]}, now + timedelta(seconds=60))
    later = now + timedelta(seconds=30)
    assert await acquire(store, "other", ONE_AT_ONCE, later, lease=lease) > 0

    assert await store.release_start(KIND, "alive.h") == "other"
    await store.renew_starts({KIND: ["alive.h"]}, now + timedelta(seconds=60))
    assert await acquire(store, "other", ONE_AT_ONCE, later, lease=lease) == 0


async def test_the_same_holder_acquiring_again_keeps_its_one_permit(store: StateStore) -> None:
    now = utcnow()
    assert await acquire(store, "a", ONE_AT_ONCE, now) == 0
    assert await acquire(store, "a", ONE_AT_ONCE, now) == 0
    assert await acquire(store, "b", ONE_AT_ONCE, now) > 0


async def test_a_full_rate_window_refuses_until_its_oldest_start_leaves_it(
    store: StateStore,
) -> None:
    now = utcnow()
    for i in range(3):
        assert await acquire(store, f"r{i}", THREE_PER_SECOND, now + timedelta(seconds=i / 10)) == 0
    at = now + timedelta(seconds=0.3)
    wait = await acquire(store, "r3", THREE_PER_SECOND, at)
    assert wait == pytest.approx(1.0 + RATE_SLACK - 0.3, abs=1e-3)
    # Not a moment early (a spare copy is told so with a negative answer) ...
    assert await acquire(store, "r3", THREE_PER_SECOND, at + timedelta(seconds=wait - 0.1)) < 0
    # ... and let in once the oldest start has left the window (a microsecond past the
    # answered wait: `timedelta` rounds to microseconds, which may land just before it).
    later = at + timedelta(seconds=wait, microseconds=1)
    assert await acquire(store, "r3", THREE_PER_SECOND, later) == 0
    # The second start of the window is still in it: the next one waits for it.
    next_wait = await acquire(store, "r4", THREE_PER_SECOND, later)
    assert next_wait == pytest.approx(0.1, abs=1e-3)


async def test_a_spare_copy_is_told_apart_from_the_fallback_message(store: StateStore) -> None:
    """A refused job's message comes back when its wait is over (the fallback); another
    copy arriving before that (a wake that lost the race) answers negative: drop it."""
    now = utcnow()
    assert await acquire(store, "holder", ONE_AT_ONCE, now) == 0
    wait = await acquire(store, "held", ONE_AT_ONCE, now)
    assert wait > WAKE_EARLY
    spare = await acquire(store, "held", ONE_AT_ONCE, now + timedelta(seconds=wait / 2))
    assert spare == pytest.approx(-wait / 2, abs=1e-3)
    # The fallback itself is not spare: refused again, with a new wait.
    assert await acquire(store, "held", ONE_AT_ONCE, now + timedelta(seconds=wait)) > 0


async def test_kinds_are_limited_apart(store: StateStore) -> None:
    now = utcnow()
    assert await acquire(store, "a", ONE_AT_ONCE, now) == 0
    other = await store.acquire_start("demo.other", "b", "b.h", ONE_AT_ONCE, now + LEASE, now=now)
    assert other == 0


async def test_a_release_passes_over_waiters_no_longer_queued(store: StateStore) -> None:
    """A waiter stopped (or gone) while it waited is not woken: the next one is."""
    await queued(store, "stopped", "next")
    now = utcnow()
    assert await acquire(store, "a", ONE_AT_ONCE, now) == 0
    assert await acquire(store, "stopped", ONE_AT_ONCE, now) > 0
    assert await acquire(store, "gone", ONE_AT_ONCE, now) > 0  # no record at all
    assert await acquire(store, "next", ONE_AT_ONCE, now) > 0
    await store.transition("stopped", RequestStop())
    assert await store.release_start(KIND, "a.h") == "next"
