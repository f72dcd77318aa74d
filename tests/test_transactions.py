"""Business transactions (API.md sections 1, 3, 4, 13) through the API on the memory
backends: delayed starts, retries after a backoff, durable steps, compensation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from asyncproc import BlockingJobContext, JobContext, Registry
from asyncproc.errors import TransitionRefused
from asyncproc.lifecycle import Report, Start, StepDone, apply
from asyncproc.model import Job, JobState
from asyncproc.rules import retry_backoff
from tests.support import api_client, demo_app, wait_until
from tests.support import job_finished as finished
from tests.support import job_status as status
from tests.support import post_json as post

pytestmark = pytest.mark.anyio

test_kinds = Registry()


@test_kinds.job("test.timeouts", retries=2, retry_delay=0.05, retry_on=(TimeoutError,))
async def timeouts(ctx: JobContext, content: Any) -> dict[str, int]:
    """Raises a listed exception type (retryable) until attempt `succeed_on`."""
    if ctx.attempt < content["succeed_on"]:
        raise TimeoutError(f"attempt {ctx.attempt} timed out")
    return {"attempt": ctx.attempt}


@test_kinds.job("test.blocking-steps", retries=1, retry_delay=0.05)
def blocking_steps(ctx: BlockingJobContext, content: Any) -> dict[str, Any]:
    """A blocking handler with durable steps; crashes once after the first."""
    first = ctx.step("first", lambda: {"attempt": ctx.attempt})
    if ctx.attempt == 1:
        raise RuntimeError("crash")  # unhandled: not retried
    second = ctx.step("second", lambda: {"attempt": ctx.attempt})
    return {"first": first, "second": second}


def make_app(**overrides: Any) -> Any:
    return demo_app(test_kinds, **overrides)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(make_app()) as client:
        yield client


def moment(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# -- delayed start --------------------------------------------------------------------


async def test_a_delayed_job_waits_queued_until_its_time(client: httpx.AsyncClient) -> None:
    job = await post(client, "/api/demo.count/enqueue", {"content": {"n": 0}, "delay": 0.5}, 202)
    not_before = moment(job["notBefore"])
    assert not_before > moment(job["createdAt"])
    # The processing window starts at notBefore.
    assert moment(job["expiresAt"]) - not_before == timedelta(hours=1)
    assert (await status(client, job["id"]))["state"] == "queued"
    done = await finished(client, job["id"])
    assert done["state"] == "succeeded"
    assert moment(done["startedAt"]) >= not_before
    assert done["notBefore"] is None


async def test_not_before_in_the_past_starts_at_once(client: httpx.AsyncClient) -> None:
    past = (datetime.now(UTC) - timedelta(minutes=1)).isoformat()
    job = await post(
        client, "/api/demo.count/enqueue", {"content": {"n": 0}, "notBefore": past}, 202
    )
    assert job["notBefore"] is None
    assert (await finished(client, job["id"]))["state"] == "succeeded"


@pytest.mark.parametrize(
    "extra",
    [
        {"delay": 1, "notBefore": "2030-01-01T00:00:00Z"},
        {"delay": -1},
        {"notBefore": "2030-01-01T00:00:00"},  # no time zone
        {"notBefore": "tomorrow"},
    ],
)
async def test_bad_delays_are_422(client: httpx.AsyncClient, extra: dict[str, Any]) -> None:
    await post(client, "/api/demo.count/enqueue", {"content": {"n": 0}, **extra}, 422)


async def test_stop_of_a_delayed_job_stops_it_at_once(client: httpx.AsyncClient) -> None:
    job = await post(client, "/api/demo.count/enqueue", {"content": {"n": 0}, "delay": 30}, 202)
    stopped = await post(client, f"/api/jobs/{job['id']}/stop", None, 200)
    assert stopped["state"] == "stopped"
    assert stopped["startedAt"] is None


# -- retries --------------------------------------------------------------------------------


async def test_a_flaky_job_is_retried_after_a_backoff(client: httpx.AsyncClient) -> None:
    job = await post(client, "/api/demo.flaky/enqueue", {"content": {"failures": 2}}, 202)
    waiting = await wait_until(
        lambda: status(client, job["id"]),
        lambda s: s["state"] == "queued" and s["notBefore"] is not None,
    )
    # While it waits: the failure, and the attempt that failed.
    assert waiting["error"]["errorId"] == "demo.transient"
    assert waiting["error"]["bizMsg"] == "temporary failure"
    assert waiting["attempt"] >= 1
    assert moment(waiting["notBefore"]) > moment(waiting["startedAt"])
    done = await finished(client, job["id"])
    assert (done["state"], done["attempt"], done["error"]) == ("succeeded", 3, None)
    result = (await client.get(f"/api/jobs/{job['id']}/result")).json()
    assert result == {"attempts": 3}


async def test_retries_run_out(client: httpx.AsyncClient) -> None:
    job = await post(client, "/api/demo.flaky/enqueue", {"content": {"failures": 9}}, 202)
    done = await finished(client, job["id"])
    assert (done["state"], done["attempt"]) == ("failed", 4)  # retries 3
    assert done["error"]["errorId"] == "demo.transient"
    assert done["notBefore"] is None


async def test_stop_while_waiting_for_a_retry(client: httpx.AsyncClient) -> None:
    app = make_app(kinds={"demo.flaky": {"retry_delay": "30s"}})
    async with api_client(app) as other:
        job = await post(other, "/api/demo.flaky/enqueue", {"content": {"failures": 1}}, 202)
        await wait_until(
            lambda: status(other, job["id"]),
            lambda s: s["state"] == "queued" and s["notBefore"] is not None,
        )
        stopped = await post(other, f"/api/jobs/{job['id']}/stop", None, 200)
        assert (stopped["state"], stopped["attempt"]) == ("stopped", 1)


async def test_exception_types_a_kind_lists_are_retried(client: httpx.AsyncClient) -> None:
    job = await post(client, "/api/test.timeouts/enqueue", {"content": {"succeed_on": 2}}, 202)
    done = await finished(client, job["id"])
    assert (done["state"], done["attempt"]) == ("succeeded", 2)
    again = await post(client, "/api/test.timeouts/enqueue", {"content": {"succeed_on": 5}}, 202)
    failed = await finished(client, again["id"])
    assert (failed["state"], failed["attempt"]) == ("failed", 3)
    assert "timed out" in failed["error"]["techMsg"]


@given(
    attempt=st.integers(min_value=1, max_value=40),
    first=st.floats(min_value=0.001, max_value=60),
    cap=st.floats(min_value=0.001, max_value=3600),
    jitter=st.floats(min_value=-1, max_value=1),
)
def test_backoff_doubles_is_capped_and_jitters_a_quarter(
    attempt: int, first: float, cap: float, jitter: float
) -> None:
    base = min(cap, first * 2.0 ** (attempt - 1))
    backoff = retry_backoff(attempt, first, cap, jitter)
    assert base * 0.75 - 1e-9 <= backoff <= base * 1.25 + 1e-9


def test_no_backoff_without_a_first_delay() -> None:
    assert retry_backoff(3, 0.0, 60.0, 0.2) == 0.0


# -- durable steps ------------------------------------------------------------------------


async def test_completed_steps_are_not_run_again(client: httpx.AsyncClient) -> None:
    job = await post(client, "/api/demo.saga/enqueue", {"content": {"steps": 3, "crashAt": 2}}, 202)
    done = await finished(client, job["id"])
    assert (done["state"], done["attempt"]) == ("succeeded", 2)
    assert [step["name"] for step in done["steps"]] == ["step-1", "step-2", "step-3"]
    result = (await client.get(f"/api/jobs/{job['id']}/result")).json()
    assert result == {
        "done": ["step-1", "step-2", "step-3"],
        "ranOnAttempt": {"step-1": 1, "step-2": 2, "step-3": 2},
    }


async def test_a_blocking_handler_has_durable_steps_too(client: httpx.AsyncClient) -> None:
    job = await post(client, "/api/test.blocking-steps/enqueue", {"content": {}}, 202)
    done = await finished(client, job["id"])
    # An unhandled error is not retried: the first step was stored all the same.
    assert (done["state"], [s["name"] for s in done["steps"]]) == ("failed", ["first"])


def test_a_lost_attempts_late_events_are_refused() -> None:
    created = datetime.now(UTC)
    job = Job(
        id="j",
        kind="k",
        state=JobState.QUEUED,
        created_at=created,
        deadline=created + timedelta(hours=1),
        retention=60.0,
    )
    first = apply(job, Start(), created)
    assert apply(first, Report(percent=5, attempt=1), created).progress.percent == 5
    with pytest.raises(TransitionRefused):
        apply(first, Report(percent=5, attempt=2), created)
    with pytest.raises(TransitionRefused):
        apply(first, StepDone("s", msgspec.Raw(b"1"), attempt=0), created)


# -- compensation -----------------------------------------------------------------------------


async def test_a_failed_saga_is_compensated(client: httpx.AsyncClient) -> None:
    job = await post(client, "/api/demo.saga/enqueue", {"content": {"steps": 4, "failAt": 3}}, 202)
    done = await finished(client, job["id"])
    assert (done["state"], done["error"]["errorId"]) == ("failed", "demo.saga_failed")
    assert done["compensationId"] is not None
    undo = await finished(client, done["compensationId"])
    assert undo["kind"] == "demo.saga.compensate"
    assert undo["parentId"] == job["id"]
    assert undo["trigger"] == {"type": "compensation", "name": "demo.saga"}
    assert undo["state"] == "succeeded"
    result = (await client.get(f"/api/jobs/{undo['id']}/result")).json()
    assert result == {"undone": ["step-2", "step-1"]}


async def test_a_stopped_saga_is_not_compensated(client: httpx.AsyncClient) -> None:
    body = {"content": {"steps": 20, "delay": 1}}
    job = await post(client, "/api/demo.saga/enqueue", body, 202)
    await wait_until(lambda: status(client, job["id"]), lambda s: s["state"] == "running")
    await post(client, f"/api/jobs/{job['id']}/stop", None, 202)
    done = await finished(client, job["id"])
    assert (done["state"], done["compensationId"]) == ("stopped", None)
    listed = (await client.get("/api/jobs", params={"kind": "demo.saga.compensate"})).json()
    assert listed["items"] == []


async def test_a_timed_out_saga_is_compensated() -> None:
    app = make_app(kinds={"demo.saga": {"processing_timeout": "300ms"}})
    async with api_client(app) as client:
        body = {"content": {"steps": 20, "delay": 0.1}}
        job = await post(client, "/api/demo.saga/enqueue", body, 202)
        done = await finished(client, job["id"])
        assert (done["state"], done["error"]["errorId"]) == ("failed", "timeout")
        undo = await finished(client, done["compensationId"])
        assert undo["state"] == "succeeded"
