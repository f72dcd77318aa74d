"""Start limits (API.md section 13, `demo.limited` of section 9) on the memory
backends: `max_concurrency` and `rate_limit` hold jobs in `queued` until they may
start, nothing fails because of them, and a held job takes no worker slot."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import httpx
import pytest

from asyncproc import JobContext, Registry
from asyncproc.config import load_settings
from asyncproc.errors import PluginError
from asyncproc.limits import Limits, limits_of, parse_rate, start_wait
from asyncproc.registry import load_plugins
from asyncproc.server import create_app
from tests.support import api_client, wait_until
from tests.support import job_finished as finished
from tests.support import job_status as status
from tests.support import post_json as post

pytestmark = pytest.mark.anyio

test_kinds = Registry()


@test_kinds.job("test.single", max_concurrency=1)
async def single(ctx: JobContext, content: Any) -> None:
    """One at a time, by the decorator."""


def make_app(**overrides: Any) -> Any:
    registry = load_plugins(["asyncproc.plugins.demo"])
    registry.include(test_kinds)
    settings = load_settings(environ={}, sweep_interval=0.05, **overrides)
    return create_app(settings, registry=registry)


def moment(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def most_at_once(jobs: list[dict[str, Any]]) -> int:
    """The most jobs running at one moment, from their startedAt/finishedAt (a job
    ending at the moment another starts does not overlap it)."""
    edges = sorted(
        [(moment(job["startedAt"]), 1) for job in jobs]
        + [(moment(job["finishedAt"]), -1) for job in jobs]
    )
    running = most = 0
    for _, step in edges:
        running += step
        most = max(most, running)
    return most


async def enqueue(client: httpx.AsyncClient, kind: str, content: Any, n: int) -> list[str]:
    return [
        (await post(client, f"/api/{kind}/enqueue", {"content": content}, 202))["id"]
        for _ in range(n)
    ]


async def test_demo_limited_runs_at_most_two_at_once_and_all_succeed() -> None:
    async with api_client(make_app(concurrency=16)) as client:
        ids = await enqueue(client, "demo.limited", {"seconds": 0.5}, 6)
        # Two run; the rest wait in `queued`, not failed.
        states = await wait_until(
            lambda: _states(client, ids), lambda s: s.count("running") == 2, timeout=30
        )
        assert states.count("queued") == 4
        done = [await finished(client, job_id, timeout=60) for job_id in ids]
    assert [job["state"] for job in done] == ["succeeded"] * 6
    assert most_at_once(done) == 2
    assert all(job["attempt"] == 1 and job["error"] is None for job in done)


async def test_a_rate_limit_starts_no_more_than_n_in_any_window() -> None:
    app = make_app(concurrency=16, kinds={"demo.count": {"rate_limit": "5/s"}})
    async with api_client(app) as client:
        ids = await enqueue(client, "demo.count", {"n": 0}, 12)
        done = [await finished(client, job_id, timeout=60) for job_id in ids]
    assert [job["state"] for job in done] == ["succeeded"] * 12
    starts = sorted(moment(job["startedAt"]) for job in done)
    # Any one-second window holding starts i..i+5 would hold six.
    gaps = [(starts[i + 5] - starts[i]).total_seconds() for i in range(len(starts) - 5)]
    assert min(gaps) >= 1.0


async def test_a_held_job_takes_no_worker_slot() -> None:
    """Three slots, two limited jobs running and two held: an unlimited job still runs
    at once, while a limited one is still queued."""
    async with api_client(make_app(concurrency=3)) as client:
        limited = await enqueue(client, "demo.limited", {"seconds": 3}, 4)
        await wait_until(
            lambda: _states(client, limited), lambda s: s.count("running") == 2, timeout=30
        )
        [free] = await enqueue(client, "demo.count", {"n": 0}, 1)
        assert (await finished(client, free))["state"] == "succeeded"
        assert (await _states(client, limited)).count("queued") == 2
        for job_id in limited:
            await client.post(f"/api/jobs/{job_id}/stop")


async def test_a_permit_comes_back_however_a_job_ends() -> None:
    """Failing and stopped jobs give their permit back: one at a time, each job of a
    burst still ends, none waits for a lapsed lease (lease 60 s here)."""
    app = make_app(lease=60, kinds={"demo.fail": {"max_concurrency": 1}})
    async with api_client(app) as client:
        ids = await enqueue(client, "demo.fail", {"mode": "reported", "message": "no"}, 4)
        done = [await finished(client, job_id, timeout=30) for job_id in ids]
        assert [job["state"] for job in done] == ["failed"] * 4
        assert {job["error"]["errorId"] for job in done} == {"demo.failed"}

        first, second = await enqueue(client, "demo.limited", {"seconds": 30}, 2)
        third, fourth = await enqueue(client, "demo.limited", {"seconds": 0}, 2)
        await wait_until(lambda: status(client, first), lambda s: s["state"] == "running")
        await wait_until(lambda: status(client, second), lambda s: s["state"] == "running")
        # A held job stops at once, like any queued one.
        stopped = await post(client, "/api/demo.limited/stop", {"id": third}, 200)
        assert stopped["state"] == "stopped"
        await post(client, "/api/demo.limited/stop", {"id": first}, 202)
        assert (await finished(client, first))["state"] == "stopped"
        assert (await finished(client, fourth))["state"] == "succeeded"
        await post(client, "/api/demo.limited/stop", {"id": second}, 202)


async def test_limits_from_the_decorator_survive_other_kind_settings() -> None:
    app = make_app(kinds={"test.single": {"retries": 2}})
    kind = app.state.service.registry.get("test.single")
    assert (kind.max_concurrency, kind.retries) == (1, 2)
    assert limits_of(kind) == Limits(1, None)
    overridden = make_app(kinds={"test.single": {"max_concurrency": 3, "rate_limit": "2/m"}})
    kind = overridden.state.service.registry.get("test.single")
    assert limits_of(kind) == Limits(3, (2, 60.0))


def test_a_kind_with_a_bad_limit_is_refused() -> None:
    with pytest.raises(PluginError, match="rate_limit"):
        Registry().job("bad.rate", rate_limit="5/d")(single)
    with pytest.raises(PluginError, match="max_concurrency"):
        Registry().job("bad.max", max_concurrency=0)(single)


def test_rates_parse_as_count_and_window() -> None:
    assert parse_rate("5/s") == (5, 1.0)
    assert parse_rate("10/m") == (10, 60.0)
    assert parse_rate("1/h") == (1, 3600.0)
    for bad in ("0/s", "5", "x/s", "5/d", "-1/s"):
        with pytest.raises(ValueError, match="expected n/s"):
            parse_rate(bad)


def test_the_wait_is_the_later_of_the_two_limits() -> None:
    both = Limits(2, (3, 1.0))
    free = start_wait(
        both, running=1, earliest_lapse=None, starts=2, oldest_start=None, now=100.0, lease=10
    )
    assert free == 0
    # The window is full: until its oldest start (at 99.5) leaves it.
    rate = start_wait(
        both, running=0, earliest_lapse=None, starts=3, oldest_start=99.5, now=100.0, lease=10
    )
    assert rate == pytest.approx(0.5 + 0.025)
    # The semaphore is full: until the earliest permit would lapse, at most a lease.
    full = start_wait(
        both, running=2, earliest_lapse=104.0, starts=0, oldest_start=None, now=100.0, lease=10
    )
    assert full == pytest.approx(4.0)
    no_lapse = start_wait(
        both, running=2, earliest_lapse=None, starts=3, oldest_start=99.5, now=100.0, lease=10
    )
    assert no_lapse == pytest.approx(10.0)


async def _states(client: httpx.AsyncClient, ids: list[str]) -> list[str]:
    return [(await status(client, job_id))["state"] for job_id in ids]
