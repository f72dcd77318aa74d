"""The Python client (async and sync) against a real server on a loopback port."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator
from typing import Any

import anyio
import httpx
import msgspec
import pytest

from asyncproc.client import ApiError, AsyncClient, Client, JobResult
from asyncproc.config import load_settings
from asyncproc.errors import AsyncProcError
from asyncproc.model import JobState, JobStatus
from asyncproc.server import create_app
from tests.support import live_server, wait_until

pytestmark = pytest.mark.anyio

LONG_COUNT = {"n": 10_000, "delay": 0.05}


@pytest.fixture
async def base_url() -> AsyncIterator[str]:
    """A fresh single-node server (memory backends, demo kinds) for each test."""
    async with live_server(create_app(load_settings(environ={}, shutdown_grace=0.2))) as url:
        yield url


@pytest.fixture
async def client(base_url: str) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(base_url) as api:
        yield api


async def running(client: AsyncClient, job_id: str) -> JobStatus:
    """Wait until the job runs (and has reported progress once)."""
    return await wait_until(
        lambda: client.status(job_id),
        lambda s: s.state is JobState.RUNNING and s.progress.percent is not None,
    )


# -- enqueue, wait, progress -------------------------------------------------------------


async def test_wait_reports_each_change_until_succeeded(client: AsyncClient) -> None:
    job = await client.enqueue("demo.count", {"n": 5, "delay": 0.05})
    assert job.kind == "demo.count"
    assert job.state in {JobState.QUEUED, JobState.RUNNING}
    seen: list[JobStatus] = []

    async def on_progress(status: JobStatus) -> None:
        seen.append(status)

    final = await client.wait(job.id, on_progress=on_progress)

    assert final.state is JobState.SUCCEEDED
    assert final.progress.percent == 100.0
    assert seen[-1] == final
    versions = [s.version for s in seen]
    assert versions == sorted(set(versions)), "each change reported once, in order"
    percents = [s.progress.percent for s in seen if s.progress.percent is not None]
    assert len(percents) >= 2
    assert percents == sorted(percents)
    assert "counting" in {s.progress.biz_step for s in seen}
    assert await client.result(job.id) == JobResult(b'{"counted":5}', "application/json")


async def test_enqueue_fields_and_request_id_idempotence(client: AsyncClient) -> None:
    first = await client.enqueue(
        "demo.echo",
        {"x": 1},
        request_id="order-42",
        key="customer-7",
        proc_routing="default",
        callback_routing="orders.done",
    )
    assert first.id == "order-42"
    assert (first.key, first.proc_routing, first.callback_routing) == (
        "customer-7",
        "default",
        "orders.done",
    )
    again = await client.enqueue("demo.echo", {"x": 2}, request_id="order-42")
    assert again.id == first.id
    assert again.created_at == first.created_at
    done = await client.wait(first.id)
    data, mime = await client.result(done.id)
    assert data is not None
    assert msgspec.json.decode(data)["content"] == {"x": 1}, "the second enqueue queued nothing"
    assert mime == "application/json"


@pytest.mark.parametrize(
    ("kind", "content", "expected", "mime"),
    [
        ("demo.count", {"n": 3, "delay": 0}, b'{"counted":3}', "application/json"),
        ("demo.report", {"rows": 3, "delay": 0}, b"id,value\n1,1\n2,4\n3,9\n", "text/csv"),
        (
            "demo.bytes",
            {"text": "h\u00e9llo\n"},
            "h\u00e9llo\n".encode(),
            "application/octet-stream",
        ),
        ("demo.sleep", {"seconds": 0}, None, None),
    ],
)
async def test_result_of_each_demo_kind(
    client: AsyncClient, kind: str, content: Any, expected: bytes | None, mime: str | None
) -> None:
    job = await client.enqueue(kind, content)
    final = await client.wait(job.id, timeout=30)
    assert final.state is JobState.SUCCEEDED
    data, got_mime = await client.result(job.id)
    assert data == expected
    if mime is None:
        assert got_mime is None
        assert final.result_size is None
    else:
        assert got_mime is not None
        assert got_mime.split(";")[0] == mime
        assert final.result_size == len(expected or b"")
        assert final.result_mime is not None
        assert final.result_mime.split(";")[0] == mime


async def test_echo_result_is_the_content(client: AsyncClient) -> None:
    job = await client.enqueue("demo.echo", {"nested": {"list": [1, 2]}})
    await client.wait(job.id)
    data, mime = await client.result(job.id)
    assert mime == "application/json"
    assert data is not None
    assert msgspec.json.decode(data)["content"] == {"nested": {"list": [1, 2]}}


@pytest.mark.parametrize(
    ("mode", "biz_msg", "tech_msg", "error_id"),
    [
        ("reported", "the sky fell", "demo failure", "demo.failed"),
        ("unhandled", None, "the sky fell", "unhandled"),
    ],
)
async def test_failed_job_error_and_result_conflict(
    client: AsyncClient, mode: str, biz_msg: str | None, tech_msg: str, error_id: str
) -> None:
    job = await client.enqueue("demo.fail", {"mode": mode, "message": "the sky fell"})
    final = await client.wait(job.id)
    assert final.state is JobState.FAILED
    assert final.error is not None
    assert (final.error.biz_msg, final.error.tech_msg, final.error.error_id) == (
        biz_msg,
        tech_msg,
        error_id,
    )
    with pytest.raises(ApiError) as caught:
        await client.result(job.id)
    assert caught.value.status_code == 409
    assert caught.value.code == "state_conflict"
    assert caught.value.status is not None
    assert caught.value.status.error == final.error
    assert "the sky fell" in caught.value.message


# -- stop -------------------------------------------------------------------------------


async def test_stop_running_job(client: AsyncClient) -> None:
    job = await client.enqueue("demo.count", LONG_COUNT)
    await running(client, job.id)

    answer = await client.stop(job.id)
    assert answer.stop_requested
    assert answer.state in {JobState.RUNNING, JobState.STOPPED}
    final = await client.wait(job.id, timeout=30)
    assert final.state is JobState.STOPPED
    assert final.progress.percent is not None
    assert final.progress.percent < 100

    assert (await client.stop(job.id)).state is JobState.STOPPED, "stop is idempotent"
    with pytest.raises(ApiError) as caught:
        await client.result(job.id)
    assert caught.value.status_code == 409
    assert caught.value.status is not None
    assert caught.value.status.state is JobState.STOPPED


async def test_stop_finished_job_is_a_conflict_with_status(client: AsyncClient) -> None:
    job = await client.enqueue("demo.count", {"n": 0})
    await client.wait(job.id)
    with pytest.raises(ApiError) as caught:
        await client.stop(job.id)
    error = caught.value
    assert (error.status_code, error.code) == (409, "state_conflict")
    assert error.status is not None
    assert error.status.id == job.id
    assert error.status.state is JobState.SUCCEEDED


async def test_wait_gives_up_after_timeout(client: AsyncClient) -> None:
    job = await client.enqueue("demo.count", LONG_COUNT)
    with pytest.raises(TimeoutError):
        await client.wait(job.id, timeout=0.3)
    assert not (await client.status(job.id)).state.terminal
    await client.stop(job.id)


# -- listing ----------------------------------------------------------------------------


async def test_jobs_pages_cover_every_job_once(client: AsyncClient) -> None:
    ids = [(await client.enqueue("demo.echo", {"i": i})).id for i in range(7)]
    failed = (await client.enqueue("demo.fail", {"mode": "reported", "message": "x"})).id
    for job_id in [*ids, failed]:
        await client.wait(job_id)

    first = await client.jobs(kind="demo.echo", limit=3)
    assert len(first.items) == 3
    assert first.next is not None
    pages = [first]
    while pages[-1].next is not None:
        pages.append(await client.jobs(kind="demo.echo", limit=3, cursor=pages[-1].next))
    listed = [item.id for page in pages for item in page.items]
    assert sorted(listed) == sorted(ids)
    assert len(listed) == len(set(listed))

    every = [item async for item in client.iter_jobs(kind="demo.echo", page_size=2)]
    assert [item.id for item in every] == listed
    created = [item.created_at for item in every]
    assert created == sorted(created, reverse=True), "newest first"

    only_failed = [item.id async for item in client.iter_jobs(state=JobState.FAILED)]
    assert only_failed == [failed]
    assert [item.id async for item in client.iter_jobs(state="failed", kind="demo.echo")] == []


# -- errors -----------------------------------------------------------------------------


async def test_api_errors_carry_status_code_code_and_message(client: AsyncClient) -> None:
    with pytest.raises(ApiError) as caught:
        await client.status("0" * 32)
    assert (caught.value.status_code, caught.value.code) == (404, "job_not_found")
    assert isinstance(caught.value, AsyncProcError)

    with pytest.raises(ApiError) as caught:
        await client.enqueue("no.such.kind", {})
    assert (caught.value.status_code, caught.value.code) == (404, "unknown_kind")
    assert "no.such.kind" in caught.value.message

    with pytest.raises(ApiError) as caught:
        await client.enqueue("demo.count", {"n": -1})
    assert (caught.value.status_code, caught.value.code) == (422, "invalid_content")
    assert caught.value.message == "content.n: expected an integer of 0 or more, got -1"
    assert caught.value.status is None

    with pytest.raises(ApiError) as caught:
        await client.enqueue("demo.echo", {}, request_id="not valid!")
    assert caught.value.status_code == 422
    assert "requestId" in caught.value.message

    await client.enqueue("demo.echo", {}, request_id="shared-id")
    with pytest.raises(ApiError) as caught:
        await client.enqueue("demo.count", {"n": 0}, request_id="shared-id")
    assert (caught.value.status_code, caught.value.code) == (409, "request_id_conflict")
    assert caught.value.status is None

    with pytest.raises(ApiError) as caught:
        await client.jobs(state="bogus")
    assert caught.value.status_code == 422


async def test_token_is_sent_and_odd_error_bodies_are_understood() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.url.path == "/api/jobs/busy":
            return httpx.Response(503, headers={"Retry-After": "2"}, json={"error": {}})
        return httpx.Response(502, text="<html>Bad gateway</html>\n")

    transport = httpx.MockTransport(handler)
    async with AsyncClient("http://proxy.test/", "s3cret", transport=transport) as api:
        with pytest.raises(ApiError) as caught:
            await api.status("busy")
        assert (caught.value.status_code, caught.value.retry_after) == (503, 2.0)
        with pytest.raises(ApiError) as caught:
            await api.status("other")
        assert caught.value.status_code == 502
        assert caught.value.message == "<html>Bad gateway</html>"
    assert {r.headers["authorization"] for r in seen} == {"Bearer s3cret"}


# -- the sync client ----------------------------------------------------------------------


def _sync_scenario(url: str) -> None:
    with Client(url) as api:
        seen: list[JobStatus] = []
        job = api.enqueue("demo.count", {"n": 4, "delay": 0.02})
        final = api.wait(job.id, on_progress=seen.append)
        assert final.state is JobState.SUCCEEDED
        assert seen[-1] == final
        assert "counting" in {s.progress.biz_step for s in seen}
        assert api.result(job.id) == (b'{"counted":4}', "application/json")
        assert api.status(job.id) == final

        with pytest.raises(ApiError) as caught:
            api.stop(job.id)
        assert caught.value.status is not None
        assert caught.value.status.state is JobState.SUCCEEDED

        long = api.enqueue("demo.count", LONG_COUNT)
        with pytest.raises(TimeoutError):
            api.wait(long.id, timeout=0.2)
        api.stop(long.id)
        assert api.wait(long.id, timeout=30).state is JobState.STOPPED

        assert [j.id for j in api.jobs(limit=1).items] == [long.id]
        assert {j.id for j in api.iter_jobs(page_size=1)} == {job.id, long.id}

        with pytest.raises(ApiError) as caught:
            api.status("nope")
        assert caught.value.status_code == 404


async def test_sync_client_same_calls(base_url: str) -> None:
    await anyio.to_thread.run_sync(_sync_scenario, base_url)
    leftover = [t for t in threading.enumerate() if t.name == "asyncproc-client"]
    assert leftover == [], "close() ends the client's loop thread"
