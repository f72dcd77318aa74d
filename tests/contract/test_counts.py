"""The StateStore contract for the overview's counts (API.md section 16, `GET /api/stats`):
jobs per kind and state, kept as records change, and the per-minute counters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from asyncproc.interfaces import StateStore
from asyncproc.lifecycle import Fail, RequestStop, Revive, Start, Succeed
from asyncproc.model import ErrorInfo, JobState, OnConflict, Uniqueness, utcnow
from tests.contract import new_job
from tests.support import wait_until

pytestmark = pytest.mark.anyio

BOOM = ErrorInfo(error_id="boom")


def _nonzero(counts: dict[str, dict[JobState, int]]) -> dict[str, dict[str, int]]:
    return {
        kind: {str(state): n for state, n in states.items() if n} for kind, states in counts.items()
    }


async def test_counts_follow_every_change(store: StateStore) -> None:
    a1, _ = await store.create(new_job(kind="k.a"))
    a2, _ = await store.create(new_job(kind="k.a"))
    a3, _ = await store.create(new_job(kind="k.a"))
    b1, _ = await store.create(new_job(kind="k.b"))
    counts = await store.count_states(["k.a", "k.b", "k.none"])
    assert _nonzero(counts) == {"k.a": {"queued": 3}, "k.b": {"queued": 1}, "k.none": {}}
    # Every kind asked for answers every state.
    assert set(counts["k.none"]) == set(JobState)

    await store.transition(a1.id, Start())
    await store.transition(a2.id, Start())
    await store.transition(a2.id, RequestStop())  # no change of state
    await store.transition(a1.id, Succeed())
    await store.transition(a3.id, Fail(BOOM))
    await store.transition(b1.id, RequestStop())  # queued: stopped at once
    assert _nonzero(await store.count_states(["k.a", "k.b"])) == {
        "k.a": {"running": 1, "succeeded": 1, "failed": 1},
        "k.b": {"stopped": 1},
    }

    await store.transition(a3.id, Revive())  # a dead letter requeued
    assert _nonzero(await store.count_states(["k.a"])) == {
        "k.a": {"running": 1, "succeeded": 1, "queued": 1}
    }


async def test_a_forgotten_job_is_not_counted(store: StateStore) -> None:
    job, _ = await store.create(new_job(kind="k.f"))
    assert await store.forget(job)
    assert _nonzero(await store.count_states(["k.f"])) == {"k.f": {}}


async def test_a_replaced_holder_counts_as_stopped(store: StateStore) -> None:
    active = Uniqueness.ACTIVE
    await store.create(new_job(kind="k.r", key="x"), uniqueness=active)
    await store.create(
        new_job(kind="k.r", key="x"), uniqueness=active, on_conflict=OnConflict.REPLACE
    )
    assert _nonzero(await store.count_states(["k.r"])) == {"k.r": {"queued": 1, "stopped": 1}}


async def test_a_purged_job_leaves_the_counts(store: StateStore) -> None:
    keep, _ = await store.create(new_job(kind="k.p", retention=3600))
    gone, _ = await store.create(new_job(kind="k.p", retention=0.5))
    for job in (keep, gone):
        await store.transition(job.id, Start())
        await store.transition(job.id, Succeed())
    assert _nonzero(await store.count_states(["k.p"])) == {"k.p": {"succeeded": 2}}

    async def succeeded() -> int:
        return (await store.count_states(["k.p"]))["k.p"][JobState.SUCCEEDED]

    await wait_until(succeeded, lambda n: n == 1, timeout=5)
    assert await store.get(gone.id) is None


async def test_minute_counts_add_up_oldest_first(store: StateStore) -> None:
    now = utcnow()
    minute = datetime(now.year, now.month, now.day, now.hour, now.minute, tzinfo=UTC)
    before = minute - timedelta(minutes=2)
    await store.add_minute_counts({(minute, "enqueued"): 3, (before, "failed"): 1})
    # Another node's flush adds to the same minutes.
    await store.add_minute_counts({(minute, "enqueued"): 2, (minute, "succeeded"): 4})
    await store.add_minute_counts({})
    rows = await store.minute_counts(minute - timedelta(minutes=3), 5)
    assert rows == [{}, {"failed": 1}, {}, {"enqueued": 5, "succeeded": 4}, {}]
