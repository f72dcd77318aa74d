"""The HTTP API of API.md sections 1-5 against a real uvicorn server, memory backends."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from typing import Any

import anyio
import httpx
import msgspec
import pytest

from asyncproc import JobContext, JobError, Registry, RetryableJobError
from tests.support import api_client, demo_app, wait_until

pytestmark = pytest.mark.anyio

TERMINAL = {"succeeded", "failed", "stopped"}
STATUS_FIELDS = {
    "id",
    "kind",
    "state",
    "stopRequested",
    "progress",
    "error",
    "resultSize",
    "resultMime",
    "attempt",
    "key",
    "procRouting",
    "callbackRouting",
    "createdAt",
    "startedAt",
    "finishedAt",
    "expiresAt",
    "notBefore",
    "parentId",
    "trigger",
    "owner",
    "steps",
    "compensationId",
    "version",
}


class Probe:
    """What the test kinds saw, for assertions."""

    def __init__(self) -> None:
        self.cleaned_up: set[str] = set()
        self.running = 0
        self.most_running = 0
        self.attempts: dict[str, int] = {}


probe = Probe()
test_kinds = Registry()


class Hold(msgspec.Struct):
    seconds: float = 30.0


@test_kinds.job("test.hold", content=Hold)
async def hold(ctx: JobContext, content: Hold) -> str:
    """Sleeps, counting concurrent runs, and records that its finally block ran."""
    probe.running += 1
    probe.most_running = max(probe.most_running, probe.running)
    try:
        await ctx.progress(percent=0.0, biz_step="holding")
        await anyio.sleep(content.seconds)
        return "held"
    finally:
        probe.running -= 1
        probe.cleaned_up.add(ctx.id)


@test_kinds.job("test.blocker", processing_timeout=30)
async def blocker(ctx: JobContext, content: Any) -> None:
    """Holds its worker slot for 30 s, whatever the global processing timeout."""
    await anyio.sleep(30)


@test_kinds.job("test.flaky", retries=2)
async def flaky(ctx: JobContext, content: Any) -> dict[str, int]:
    """Fails with a retryable error until its `succeed_on` attempt."""
    probe.attempts[ctx.id] = ctx.attempt
    if ctx.attempt < content["succeed_on"]:
        raise RetryableJobError("not yet", tech_msg=f"attempt {ctx.attempt}", error_id="flaky")
    return {"attempt": ctx.attempt}


@test_kinds.job("test.unique", unique="active")
async def unique(ctx: JobContext, content: Any) -> None:
    """Held until stopped; its key is unique among active jobs."""
    await anyio.sleep(30)


@test_kinds.job("test.once", unique="once")
async def once(ctx: JobContext, content: Any) -> None:
    """Succeeds at once; its key is held until released."""


@test_kinds.job("test.checked", check=lambda content: _positive(content))
async def checked(ctx: JobContext, content: Any) -> None:
    """Has a pre-start check."""


def _positive(content: Any) -> None:
    if not isinstance(content, int) or content <= 0:
        raise ValueError("must be a positive whole number")


@test_kinds.job("test.bad-result")
async def bad_result(ctx: JobContext, content: Any) -> object:
    """Returns something that is not JSON-encodable."""
    return object()


@test_kinds.job("test.short", processing_timeout=0.3)
async def short(ctx: JobContext, content: Any) -> None:
    """Runs past its 0.3 s processing timeout."""
    try:
        await anyio.sleep(30)
    finally:
        probe.cleaned_up.add(ctx.id)


def make_app(**overrides: Any) -> Any:
    return demo_app(test_kinds, **overrides)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(make_app()) as client:
        yield client


async def enqueue(
    client: httpx.AsyncClient, kind: str, content: Any, **extra: Any
) -> dict[str, Any]:
    response = await client.post(f"/api/{kind}/enqueue", json={"content": content, **extra})
    assert response.status_code == 202, response.text
    body: dict[str, Any] = response.json()
    return body


async def status(client: httpx.AsyncClient, job_id: str) -> dict[str, Any]:
    response = await client.get(f"/api/jobs/{job_id}")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def finished(client: httpx.AsyncClient, job_id: str, timeout: float = 10) -> dict[str, Any]:
    return await wait_until(
        lambda: status(client, job_id), lambda s: s["state"] in TERMINAL, timeout=timeout
    )


def assert_error(response: httpx.Response, status_code: int, code: str | None = None) -> None:
    assert response.status_code == status_code, response.text
    assert response.headers["content-type"].startswith("application/json")
    error = response.json()["error"]
    assert isinstance(error["message"], str)
    assert error["message"]
    if code is not None:
        assert error["code"] == code


# -- enqueue ---------------------------------------------------------------------


async def test_enqueue_answers_202_with_full_status_and_location(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/demo.count/enqueue", json={"content": {"n": 1, "delay": 0}})
    assert response.status_code == 202
    body = response.json()
    assert set(body) == STATUS_FIELDS
    assert re.fullmatch(r"[0-9a-f]{32}", body["id"])
    assert response.headers["location"] == f"/api/jobs/{body['id']}"
    assert body["kind"] == "demo.count"
    assert body["state"] == "queued"
    assert body["procRouting"] == "default"
    assert body["createdAt"].endswith("Z")
    done = await finished(client, body["id"])
    assert done["state"] == "succeeded"
    assert done["progress"]["percent"] == 100.0
    assert done["attempt"] == 1


async def test_request_id_makes_enqueue_idempotent(client: httpx.AsyncClient) -> None:
    body = {"content": {"n": 1, "delay": 0}, "requestId": "order-42:v1"}
    first = await client.post("/api/demo.count/enqueue", json=body)
    second = await client.post("/api/demo.count/enqueue", json=body)
    assert first.status_code == 202
    assert second.status_code == 200
    assert second.json()["id"] == "order-42:v1"
    other = await client.post(
        "/api/demo.echo/enqueue", json={"content": {}, "requestId": "order-42:v1"}
    )
    assert_error(other, 409, "request_id_conflict")
    page = (await client.get("/api/jobs", params={"kind": "demo.count"})).json()
    assert [job["id"] for job in page["items"]] == ["order-42:v1"]


@pytest.mark.parametrize(
    ("body", "status_code"),
    [
        (b"not json", 400),
        (b"[1, 2]", 400),
        (b"{}", 400),
        (b'{"content": {"n": "ten"}}', 422),
        (b'{"content": {"n": -1}}', 422),
        (b'{"content": {"n": 1, "extra": true}}', 422),
        (b'{"content": {"n": 1}, "requestId": "has space"}', 422),
        (b'{"content": {"n": 1}, "key": ""}', 422),
        (b'{"content": {"n": 1}, "procRouting": "a/b"}', 422),
    ],
)
async def test_bad_enqueue_bodies_get_4xx_with_error_body(
    client: httpx.AsyncClient, body: bytes, status_code: int
) -> None:
    response = await client.post(
        "/api/demo.count/enqueue", content=body, headers={"content-type": "application/json"}
    )
    assert_error(response, status_code)


async def test_validation_message_names_the_field(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/demo.count/enqueue", json={"content": {"n": "ten"}})
    assert_error(response, 422, "invalid_content")
    message = response.json()["error"]["message"]
    assert message == 'content.n: expected an integer of 0 or more, got "ten"'


async def test_pre_start_check_refusal_is_422(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/test.checked/enqueue", json={"content": -3})
    assert_error(response, 422, "invalid_content")
    assert "positive" in response.json()["error"]["message"]
    await enqueue(client, "test.checked", 3)


async def test_unknown_kind_route_method_and_job(client: httpx.AsyncClient) -> None:
    assert_error(await client.post("/api/nope/enqueue", json={"content": 1}), 404, "unknown_kind")
    assert_error(await client.get("/no/such/route"), 404)
    assert_error(await client.get("/api/demo.count/enqueue"), 405)
    assert_error(await client.get("/api/jobs/0123"), 404, "job_not_found")
    for call in ("progress", "stop", "result"):
        assert_error(await client.post(f"/api/demo.count/{call}", json={"id": "x"}), 404)


async def test_body_over_limit_is_413() -> None:
    async with api_client(make_app(max_body=100)) as client:
        response = await client.post(
            "/api/demo.echo/enqueue", json={"content": {"text": "x" * 200}}
        )
        assert_error(response, 413, "body_too_large")

        async def chunks() -> AsyncIterator[bytes]:
            yield b'{"content": {"text": "'
            for _ in range(10):
                yield b"x" * 50
            yield b'"}}'

        chunked = await client.post("/api/demo.echo/enqueue", content=chunks())
        assert_error(chunked, 413, "body_too_large")


async def test_queue_over_depth_limit_is_503_and_stores_nothing() -> None:
    async with api_client(make_app(max_queue_depth=1, concurrency=1)) as client:
        await enqueue(client, "test.hold", {"seconds": 30})  # runs, leaves the queue
        await wait_until(lambda: client.get("/api/jobs?state=running"), lambda r: r.json()["items"])
        await enqueue(client, "test.hold", {"seconds": 30})  # waits in the queue
        response = await client.post("/api/test.hold/enqueue", json={"content": {}})
        assert_error(response, 503, "overloaded")
        assert response.headers["retry-after"] == "1"
        assert len((await client.get("/api/jobs")).json()["items"]) == 2


# -- progress and long poll --------------------------------------------------------


async def test_progress_reports_percent_step_and_message(client: httpx.AsyncClient) -> None:
    job = await enqueue(client, "demo.count", {"n": 4, "delay": 0.05})
    seen = await wait_until(
        lambda: client.post("/api/demo.count/progress", json={"id": job["id"]}),
        lambda r: r.json()["progress"]["bizStep"] == "counting",
    )
    progress = seen.json()["progress"]
    assert 0 < progress["percent"] <= 100
    assert re.fullmatch(r"\d of 4", progress["message"])
    done = await finished(client, job["id"])
    assert done["progress"] == {"percent": 100.0, "bizStep": "counting", "message": "4 of 4"}


async def test_long_poll_answers_on_the_next_change(client: httpx.AsyncClient) -> None:
    job = await enqueue(client, "demo.count", {"n": 5, "delay": 0.1})
    current = await status(client, job["id"])
    response = await client.post(
        "/api/demo.count/progress",
        json={"id": job["id"], "wait": 30, "since": current["version"]},
    )
    assert response.status_code == 200
    assert response.json()["version"] > current["version"]


async def test_wait_alone_waits_for_the_next_change(client: httpx.AsyncClient) -> None:
    job = await enqueue(client, "demo.count", {"n": 5, "delay": 0.1})
    before = await status(client, job["id"])
    response = await client.get(f"/api/jobs/{job['id']}", params={"wait": 30})
    after = response.json()
    assert after["version"] > before["version"]
    assert after["state"] != "succeeded" or after["progress"]["percent"] == 100.0


async def test_long_poll_times_out_with_current_status(client: httpx.AsyncClient) -> None:
    job = await enqueue(client, "test.hold", {"seconds": 30})
    await wait_until(lambda: status(client, job["id"]), lambda s: s["state"] == "running")
    current = await status(client, job["id"])
    response = await client.get(
        f"/api/jobs/{job['id']}", params={"wait": 0.3, "since": current["version"]}
    )
    assert response.status_code == 200
    assert response.json()["version"] == current["version"]
    stale = await client.get(f"/api/jobs/{job['id']}", params={"wait": 10, "since": 0})
    assert stale.json()["version"] == current["version"]  # already newer: at once


@pytest.mark.parametrize("wait", ["-1", "61", "soon"])
async def test_wait_out_of_range_is_422(client: httpx.AsyncClient, wait: str) -> None:
    job = await enqueue(client, "demo.echo", {})
    assert_error(await client.get(f"/api/jobs/{job['id']}", params={"wait": wait}), 422)
    body = {"id": job["id"], "wait": json.loads(wait) if wait != "soon" else wait}
    assert_error(await client.post("/api/demo.echo/progress", json=body), 422)


async def test_job_of_another_kind_is_404(client: httpx.AsyncClient) -> None:
    job = await enqueue(client, "demo.echo", {})
    assert_error(await client.post("/api/demo.count/progress", json={"id": job["id"]}), 404)
    assert_error(await client.post("/api/demo.count/result", json={"id": job["id"]}), 404)


# -- SSE -----------------------------------------------------------------------------


async def test_events_stream_every_change_until_terminal(client: httpx.AsyncClient) -> None:
    job = await enqueue(client, "demo.count", {"n": 5, "delay": 0.02})
    statuses = []
    async with client.stream("GET", f"/api/jobs/{job['id']}/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                statuses.append(json.loads(line[6:]))
    versions = [s["version"] for s in statuses]
    assert versions == sorted(set(versions))
    assert statuses[-1]["state"] == "succeeded"
    assert all(set(s) == STATUS_FIELDS for s in statuses)
    assert any(s["progress"]["bizStep"] == "counting" for s in statuses)


async def test_events_of_unknown_job_is_404(client: httpx.AsyncClient) -> None:
    assert_error(await client.get("/api/jobs/nope/events"), 404, "job_not_found")


# -- stop --------------------------------------------------------------------------------


async def test_stop_queued_job_never_runs() -> None:
    async with api_client(make_app(concurrency=1)) as client:
        blocker = await enqueue(client, "test.hold", {"seconds": 30})
        waiting = await enqueue(client, "test.hold", {"seconds": 30})
        response = await client.post("/api/test.hold/stop", json={"id": waiting["id"]})
        assert response.status_code == 200
        assert response.json()["state"] == "stopped"
        await client.post(f"/api/jobs/{blocker['id']}/stop")
        await finished(client, blocker["id"])
        again = await client.post("/api/test.hold/stop", json={"id": waiting["id"]})
        assert again.status_code == 200  # idempotent
        final = await status(client, waiting["id"])
        assert final["state"] == "stopped"
        assert final["startedAt"] is None
        assert final["attempt"] == 0


async def test_stop_running_async_handler_cancels_it(client: httpx.AsyncClient) -> None:
    job = await enqueue(client, "test.hold", {"seconds": 30})
    await wait_until(lambda: status(client, job["id"]), lambda s: s["state"] == "running")
    response = await client.post(f"/api/jobs/{job['id']}/stop")
    assert response.status_code == 202
    assert response.json()["stopRequested"] is True
    done = await finished(client, job["id"], timeout=5)
    assert done["state"] == "stopped"
    assert job["id"] in probe.cleaned_up  # its finally block ran
    assert_error_free = await client.post(f"/api/jobs/{job['id']}/stop")
    assert assert_error_free.status_code == 200


async def test_stop_running_blocking_handler(client: httpx.AsyncClient) -> None:
    job = await enqueue(client, "demo.sleep", {"seconds": 30})
    await wait_until(lambda: status(client, job["id"]), lambda s: s["state"] == "running")
    response = await client.post("/api/demo.sleep/stop", json={"id": job["id"]})
    assert response.status_code == 202
    done = await finished(client, job["id"], timeout=5)
    assert done["state"] == "stopped"


async def test_stop_finished_job_is_409_with_status(client: httpx.AsyncClient) -> None:
    job = await enqueue(client, "demo.bytes", {"text": "x"})
    await finished(client, job["id"])
    response = await client.post(f"/api/jobs/{job['id']}/stop")
    assert response.status_code == 409
    assert response.json()["state"] == "succeeded"


# -- results and errors ----------------------------------------------------------------------


async def test_results_carry_their_mime_types(client: httpx.AsyncClient) -> None:
    count = await enqueue(client, "demo.count", {"n": 2, "delay": 0})
    report = await enqueue(client, "demo.report", {"rows": 3, "delay": 0})
    raw = await enqueue(client, "demo.bytes", {"text": "héllo"})
    sleep = await enqueue(client, "demo.sleep", {"seconds": 0})
    for job in (count, report, raw, sleep):
        assert (await finished(client, job["id"]))["state"] == "succeeded"

    response = await client.post("/api/demo.count/result", json={"id": count["id"]})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == {"counted": 2}

    response = await client.get(f"/api/jobs/{report['id']}/result")
    assert response.headers["content-type"].startswith("text/csv")
    assert response.text == "id,value\n1,1\n2,4\n3,9\n"
    assert (await status(client, report["id"]))["resultSize"] == len(response.content)

    response = await client.get(f"/api/jobs/{raw['id']}/result", params={"download": 1})
    assert response.headers["content-type"] == "application/octet-stream"
    assert response.content == "héllo".encode()
    assert response.headers["content-disposition"].startswith("attachment")

    response = await client.post("/api/demo.sleep/result", json={"id": sleep["id"]})
    assert response.status_code == 204
    done = await status(client, sleep["id"])
    assert done["resultSize"] is None
    assert done["resultMime"] is None


async def test_result_before_finish_is_409_with_status(client: httpx.AsyncClient) -> None:
    job = await enqueue(client, "test.hold", {"seconds": 30})
    response = await client.post("/api/test.hold/result", json={"id": job["id"]})
    assert response.status_code == 409
    assert response.json()["id"] == job["id"]


async def test_reported_failure_has_business_and_technical_message(
    client: httpx.AsyncClient,
) -> None:
    job = await enqueue(client, "demo.fail", {"mode": "reported", "message": "No data for 2026"})
    done = await finished(client, job["id"])
    assert done["state"] == "failed"
    error = done["error"]
    assert error["bizMsg"] == "No data for 2026"
    assert error["techMsg"] == "demo failure"
    assert error["errorId"] == "demo.failed"
    assert error["techInfo"] is None  # hidden by default
    response = await client.post("/api/demo.fail/result", json={"id": job["id"]})
    assert response.status_code == 409
    assert response.json()["error"]["bizMsg"] == "No data for 2026"


async def test_unhandled_failure_and_exposed_traceback() -> None:
    async with api_client(make_app(expose_tech_info=True)) as client:
        job = await enqueue(client, "demo.fail", {"mode": "unhandled", "message": "kaboom"})
        error = (await finished(client, job["id"]))["error"]
        assert error["errorId"] == "unhandled"
        assert error["techMsg"] == "kaboom"
        assert "RuntimeError: kaboom" in error["techInfo"]


async def test_unencodable_result_fails_the_job(client: httpx.AsyncClient) -> None:
    job = await enqueue(client, "test.bad-result", None)
    done = await finished(client, job["id"])
    assert done["state"] == "failed"
    assert done["error"]["errorId"] == "bad_result"


async def test_retryable_error_runs_again(client: httpx.AsyncClient) -> None:
    ok = await enqueue(client, "test.flaky", {"succeed_on": 3})
    done = await finished(client, ok["id"])
    assert done["state"] == "succeeded"
    assert done["attempt"] == 3
    assert done["error"] is None
    exhausted = await enqueue(client, "test.flaky", {"succeed_on": 9})
    failed = await finished(client, exhausted["id"])
    assert failed["state"] == "failed"
    assert failed["attempt"] == 3  # 1 + retries
    assert failed["error"]["errorId"] == "flaky"


async def test_headers_reach_the_handler_but_not_credentials(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/demo.echo/enqueue",
        json={"content": {"a": [1, 2]}},
        headers={"Authorization": "Bearer s3cret", "Cookie": "sid=1", "X-Tenant": "acme"},
    )
    job = response.json()
    await finished(client, job["id"])
    result = (await client.get(f"/api/jobs/{job['id']}/result")).json()
    assert result["content"] == {"a": [1, 2]}
    assert result["headers"]["x-tenant"] == "acme"
    assert "authorization" not in result["headers"]
    assert "cookie" not in result["headers"]
    assert result["incomingAt"] <= job["createdAt"]


# -- timing ------------------------------------------------------------------------------------


async def test_processing_timeout_cancels_and_fails(client: httpx.AsyncClient) -> None:
    job = await enqueue(client, "test.short", None)
    done = await finished(client, job["id"], timeout=5)
    assert done["state"] == "failed"
    assert done["error"]["errorId"] == "timeout"
    assert job["id"] in probe.cleaned_up


async def test_queued_job_times_out_in_the_queue() -> None:
    async with api_client(make_app(concurrency=1, processing_timeout="300ms")) as client:
        await enqueue(client, "test.blocker", None)
        waiting = await enqueue(client, "test.hold", {"seconds": 30})
        done = await finished(client, waiting["id"], timeout=5)
        assert done["state"] == "failed"
        assert done["error"]["errorId"] == "timeout"
        assert done["startedAt"] is None


async def test_terminal_job_expires_after_retention() -> None:
    async with api_client(make_app(retention="300ms")) as client:
        job = await enqueue(client, "demo.bytes", {"text": "x"})
        done = await finished(client, job["id"])
        assert done["expiresAt"] > done["finishedAt"]
        await wait_until(
            lambda: client.get(f"/api/jobs/{job['id']}"), lambda r: r.status_code == 404
        )
        assert_error(await client.get(f"/api/jobs/{job['id']}/result"), 404)
        assert_error(await client.post("/api/demo.bytes/stop", json={"id": job["id"]}), 404)


async def test_expires_at_is_the_deadline_while_unfinished(client: httpx.AsyncClient) -> None:
    job = await enqueue(client, "test.hold", {"seconds": 30})
    created = datetime.fromisoformat(job["createdAt"])
    assert datetime.fromisoformat(job["expiresAt"]) == created + timedelta(hours=1)


# -- concurrency, list, kinds, uniqueness -------------------------------------------------------------


async def test_concurrency_limit_is_respected() -> None:
    probe.most_running = 0
    async with api_client(make_app(concurrency=3)) as client:
        jobs = [await enqueue(client, "test.hold", {"seconds": 0.2}) for _ in range(9)]
        for job in jobs:
            assert (await finished(client, job["id"]))["state"] == "succeeded"
    assert probe.most_running == 3


async def test_job_list_pages_newest_first_each_job_once(client: httpx.AsyncClient) -> None:
    ids = [(await enqueue(client, "demo.echo", {"i": i}))["id"] for i in range(7)]
    await enqueue(client, "demo.bytes", {"text": "other kind"})
    seen: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"kind": "demo.echo", "limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = (await client.get("/api/jobs", params=params)).json()
        assert len(page["items"]) <= 3
        seen += [item["id"] for item in page["items"]]
        cursor = page["next"]
        if cursor is None:
            break
    assert seen == list(reversed(ids))
    created = [(await status(client, i))["createdAt"] for i in seen]
    assert created == sorted(created, reverse=True)


async def test_job_list_filters_and_bad_parameters(client: httpx.AsyncClient) -> None:
    job = await enqueue(client, "demo.fail", {"mode": "reported", "message": "x"}, key="k-1")
    await finished(client, job["id"])
    failed = (await client.get("/api/jobs", params={"state": "failed", "key": "k-1"})).json()
    assert [item["id"] for item in failed["items"]] == [job["id"]]
    assert (await client.get("/api/jobs", params={"state": "queued", "key": "k-1"})).json()[
        "items"
    ] == []
    assert_error(await client.get("/api/jobs", params={"state": "bogus"}), 422)
    assert_error(await client.get("/api/jobs", params={"limit": "0"}), 422)
    assert_error(await client.get("/api/jobs", params={"cursor": "!!"}), 400)
    capped = await client.get("/api/jobs", params={"limit": 1000})
    assert capped.status_code == 200


async def test_kinds_list_schemas(client: httpx.AsyncClient) -> None:
    kinds = {k["kind"]: k for k in (await client.get("/api/kinds")).json()}
    assert {
        "demo.count",
        "demo.report",
        "demo.fail",
        "demo.sleep",
        "demo.echo",
        "demo.bytes",
    } <= set(kinds)
    count = kinds["demo.count"]
    assert count["title"]
    schema = count["contentSchema"]
    definition = schema["$defs"][schema["$ref"].rsplit("/", 1)[1]]
    assert definition["required"] == ["n"]
    assert definition["properties"]["delay"]["default"] == 0.1


async def test_active_key_allows_one_active_job(client: httpx.AsyncClient) -> None:
    first = await enqueue(client, "test.unique", None, key="customer-7")
    second = await client.post(
        "/api/test.unique/enqueue", json={"content": None, "key": "customer-7"}
    )
    assert_error(second, 409, "key_conflict")
    assert second.json()["error"]["jobId"] == first["id"]
    await enqueue(client, "test.unique", None, key="customer-8")
    await client.post(f"/api/jobs/{first['id']}/stop")
    await finished(client, first["id"])
    await enqueue(client, "test.unique", None, key="customer-7")


async def test_once_key_is_held_until_released(client: httpx.AsyncClient) -> None:
    first = await enqueue(client, "test.once", None, key="init")
    await finished(client, first["id"])
    again = await client.post("/api/test.once/enqueue", json={"content": None, "key": "init"})
    assert_error(again, 409, "key_conflict")
    released = await client.post("/api/test.once/release", json={"key": "init"})
    assert released.json() == {"kind": "test.once", "key": "init", "released": True}
    await enqueue(client, "test.once", None, key="init")


async def test_health(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "ok"
    assert body["role"] == "all"
    assert body["backends"]["state"]["ok"]
    assert body["backends"]["queue"]["ok"]


async def test_page_is_served(client: httpx.AsyncClient) -> None:
    for path in ("/", "/jobs/abc"):
        response = await client.get(path)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/html")


def test_job_error_fields() -> None:
    error = JobError("for the user", tech_msg="for the log", error_id="x.y")
    assert (error.biz_msg, error.tech_msg, error.error_id) == ("for the user", "for the log", "x.y")
