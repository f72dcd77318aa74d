"""External processors (API.md section 14) through the HTTP API on the memory backends:
take, progress and heartbeats, results, failures and retries, stop, leases and
`lease_lost`."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import anyio
import httpx
import pytest

from asyncproc.external import make_token, token_attempt
from asyncproc.model import utcnow
from tests.support import api_client, demo_app, live_server, wait_until
from tests.support import job_finished as finished
from tests.support import job_status as status
from tests.support import post_json as post

pytestmark = pytest.mark.anyio

KIND = "ext.report"


def external_app(**overrides: Any) -> Any:
    """The demo app with the external kind `ext.report` (and its retries when asked)."""
    return demo_app(external_kinds=[KIND], **overrides)


async def enqueue(client: httpx.AsyncClient, content: Any = None, **more: Any) -> str:
    body = {"content": content if content is not None else {"rows": 3}, **more}
    job: dict[str, Any] = await post(client, f"/api/{KIND}/enqueue", body, 202)
    return str(job["id"])


async def take(client: httpx.AsyncClient, count: int = 1, wait: float = 0) -> list[Any]:
    body = {"kinds": [KIND], "worker": "test-processor", "max": count, "wait": wait}
    answer = await post(client, "/api/workers/take", body, 200)
    items: list[Any] = answer["items"]
    return items


def test_token_names_its_attempt_and_cannot_be_forged() -> None:
    secret = b"s" * 32
    token = make_token(secret, "job-1", 3)
    assert token_attempt(secret, "job-1", token) == 3
    assert token_attempt(secret, "job-2", token) is None  # another job's
    assert token_attempt(b"t" * 32, "job-1", token) is None  # another cluster's
    assert token_attempt(secret, "job-1", "4" + token[1:]) is None  # attempt changed
    assert token_attempt(secret, "job-1", "garbage") is None


def test_a_garbled_token_is_no_token_not_a_server_error() -> None:
    secret = b"s" * 32
    for garbled in ("3.é", "3." + "\U000ec398", "².abc", "٣.abc", "3"):
        assert token_attempt(secret, "job-1", garbled) is None, garbled


async def test_a_processor_takes_reports_and_finishes_a_job() -> None:
    async with api_client(external_app()) as client:
        job_id = await enqueue(client, {"rows": 3}, key=None)
        assert (await status(client, job_id))["state"] == "queued"
        [item] = await take(client)
        assert item["job"]["id"] == job_id
        assert item["job"]["state"] == "running"
        assert item["job"]["attempt"] == 1
        assert item["content"] == {"rows": 3}
        assert item["token"]
        assert item["leaseUntil"]
        token = item["token"]

        answer = await post(
            client,
            f"/api/workers/jobs/{job_id}/progress",
            {"token": token, "percent": 40, "bizStep": "rendering", "message": "row 1 of 3"},
            200,
        )
        assert answer["stopRequested"] is False
        assert answer["leaseUntil"] >= item["leaseUntil"]
        running = await status(client, job_id)
        assert running["progress"] == {
            "percent": 40.0,
            "bizStep": "rendering",
            "message": "row 1 of 3",
        }
        version = running["version"]
        # An empty report is a heartbeat: the lease is renewed, the record unchanged.
        await post(client, f"/api/workers/jobs/{job_id}/progress", {"token": token}, 200)
        assert (await status(client, job_id))["version"] == version

        response = await client.put(
            f"/api/workers/jobs/{job_id}/result",
            params={"token": token},
            content=b"id,value\n1,1\n",
            headers={"content-type": "text/csv"},
        )
        assert response.status_code == 200, response.text
        done = await status(client, job_id)
        assert done["state"] == "succeeded"
        assert done["resultMime"] == "text/csv"
        assert done["resultSize"] == len(b"id,value\n1,1\n")
        result = await client.get(f"/api/jobs/{job_id}/result")
        assert result.content == b"id,value\n1,1\n"
        assert result.headers["content-type"].startswith("text/csv")
        # The job moved on: the token changes nothing any more.
        late = await client.post(f"/api/workers/jobs/{job_id}/progress", json={"token": token})
        assert late.status_code == 409
        assert late.json()["error"]["code"] == "lease_lost"


async def test_take_waits_for_a_job_and_takes_several() -> None:
    async with api_client(external_app()) as client:
        assert await take(client) == []  # nothing queued, no wait: answers at once
        async with anyio.create_task_group() as tasks:
            taken: list[Any] = []

            async def long_poll() -> None:
                taken.extend(await take(client, count=5, wait=10))

            tasks.start_soon(long_poll)
            ids = [await enqueue(client, {"n": i}) for i in range(3)]
        assert {item["job"]["id"] for item in taken} <= set(ids)
        assert taken
        rest = await take(client, count=5)
        assert {item["job"]["id"] for item in taken + rest} == set(ids)
        # Each was handed out once, each with its own token.
        assert len({item["token"] for item in taken + rest}) == 3


async def test_take_refuses_kinds_that_are_not_external() -> None:
    async with api_client(external_app()) as client:
        body = {"kinds": ["demo.count"], "worker": "w"}
        response = await client.post("/api/workers/take", json=body)
        assert response.status_code == 422
        response = await client.post("/api/workers/take", json={"kinds": ["nope"], "worker": "w"})
        assert response.status_code == 404
        response = await client.post(
            "/api/workers/take", json={"kinds": [KIND], "worker": "w", "max": 0}
        )
        assert response.status_code == 422


async def test_a_python_worker_never_runs_an_external_job() -> None:
    async with api_client(external_app()) as client:
        job_id = await enqueue(client)
        # The node's own workers consume `default`; the job waits for a processor.
        count = await post(client, "/api/demo.count/enqueue", {"content": {"n": 0}}, 202)
        await finished(client, count["id"])
        assert (await status(client, job_id))["state"] == "queued"


async def test_failure_reported_and_retried_when_the_kind_allows() -> None:
    settings = {"kinds": {KIND: {"retries": 1, "retry_delay": 0.05}}}
    async with api_client(external_app(**settings)) as client:
        job_id = await enqueue(client)
        [item] = await take(client)
        error = {"errorId": "upstream.down", "bizMsg": "try later", "techMsg": "503 from upstream"}
        await post(
            client,
            f"/api/workers/jobs/{job_id}/fail",
            {"token": item["token"], "error": error, "retryable": True},
            200,
        )
        waiting = await status(client, job_id)
        assert waiting["state"] == "queued"
        assert waiting["error"]["errorId"] == "upstream.down"
        assert waiting["notBefore"] is not None
        [again] = await take(client, wait=5)
        assert again["job"]["attempt"] == 2
        assert again["token"] != item["token"]
        # The first attempt's token is fenced out.
        stale = await client.post(
            f"/api/workers/jobs/{job_id}/fail", json={"token": item["token"], "retryable": True}
        )
        assert stale.status_code == 409
        assert stale.json()["error"]["code"] == "lease_lost"
        await post(
            client,
            f"/api/workers/jobs/{job_id}/fail",
            {"token": again["token"], "error": error, "retryable": True},
            200,
        )
        failed = await status(client, job_id)
        assert failed["state"] == "failed"  # no retries left
        assert failed["error"]["bizMsg"] == "try later"


async def test_failure_without_retries_fails_for_good() -> None:
    async with api_client(external_app()) as client:
        job_id = await enqueue(client)
        [item] = await take(client)
        await post(
            client,
            f"/api/workers/jobs/{job_id}/fail",
            {"token": item["token"], "error": {"techMsg": "boom"}, "retryable": True},
            200,
        )
        failed = await status(client, job_id)
        assert failed["state"] == "failed"
        assert failed["error"]["techMsg"] == "boom"
        assert failed["error"]["errorId"] == "retryable"


async def test_stop_reaches_the_processor_which_confirms_it() -> None:
    async with api_client(external_app()) as client:
        job_id = await enqueue(client)
        [item] = await take(client)
        token = item["token"]
        early = await client.post(f"/api/workers/jobs/{job_id}/stopped", json={"token": token})
        assert early.status_code == 409
        assert early.json()["error"]["code"] == "not_stopping"
        stop = await client.post(f"/api/jobs/{job_id}/stop")
        assert stop.status_code == 202
        stopping = await status(client, job_id)
        assert stopping["state"] == "running"
        assert stopping["stopRequested"] is True
        answer = await post(client, f"/api/workers/jobs/{job_id}/progress", {"token": token}, 200)
        assert answer["stopRequested"] is True
        await post(client, f"/api/workers/jobs/{job_id}/stopped", {"token": token}, 200)
        assert (await status(client, job_id))["state"] == "stopped"


async def test_a_lapsed_lease_loses_the_job_to_another_processor() -> None:
    async with api_client(external_app(lease=0.5)) as client:
        job_id = await enqueue(client)
        [first] = await take(client)
        # The processor vanishes: no heartbeat. The sweep takes the job back.
        queued = await wait_until(
            lambda: status(client, job_id), lambda s: s["state"] == "queued", timeout=10
        )
        assert queued["error"]["errorId"] == "lost"
        [second] = await take(client, wait=5)
        assert second["job"]["attempt"] == 2
        late = await client.put(
            f"/api/workers/jobs/{job_id}/result",
            params={"token": first["token"]},
            content=b"{}",
            headers={"content-type": "application/json"},
        )
        assert late.status_code == 409
        assert late.json()["error"]["code"] == "lease_lost"
        assert (await status(client, job_id))["state"] == "running"
        await post(client, f"/api/workers/jobs/{job_id}/progress", {"token": second["token"]}, 200)


async def test_a_lapsed_lease_is_refused_before_the_sweep_takes_the_job_back() -> None:
    app = external_app(lease=0.5, sweep_interval=30)
    store = app.state.service.store
    async with api_client(app) as client:
        job_id = await enqueue(client)
        [item] = await take(client)
        # No sweep comes: the token is refused on the lapsed lease alone.
        await wait_until(
            lambda: store.lease_of(job_id), lambda until: until is not None and until < utcnow()
        )
        late = await client.post(
            f"/api/workers/jobs/{job_id}/progress", json={"token": item["token"], "percent": 5}
        )
        assert late.status_code == 409
        assert late.json()["error"]["code"] == "lease_lost"
        assert (await status(client, job_id))["progress"]["percent"] is None


async def test_a_stop_requested_job_whose_lease_lapses_is_stopped() -> None:
    async with api_client(external_app(lease=0.5)) as client:
        job_id = await enqueue(client)
        await take(client)
        assert (await client.post(f"/api/jobs/{job_id}/stop")).status_code == 202
        stopped = await wait_until(
            lambda: status(client, job_id), lambda s: s["state"] != "running", timeout=10
        )
        assert stopped["state"] == "stopped"


async def test_a_forged_token_changes_nothing() -> None:
    async with api_client(external_app()) as client:
        job_id = await enqueue(client)
        [item] = await take(client)
        forged = "1." + "0" * 32
        response = await client.post(
            f"/api/workers/jobs/{job_id}/progress", json={"token": forged, "percent": 99}
        )
        assert response.status_code == 409
        assert response.json()["error"]["code"] == "lease_lost"
        other = await enqueue(client)
        # A token is its job's only.
        response = await client.post(
            f"/api/workers/jobs/{other}/progress", json={"token": item["token"]}
        )
        assert response.status_code == 409


async def test_a_result_without_a_body_is_no_result() -> None:
    async with api_client(external_app()) as client:
        job_id = await enqueue(client)
        [item] = await take(client)
        response = await client.put(
            f"/api/workers/jobs/{job_id}/result", params={"token": item["token"]}
        )
        assert response.status_code == 200
        assert (await client.get(f"/api/jobs/{job_id}/result")).status_code == 204
        missing = await client.put(f"/api/workers/jobs/{job_id}/result")
        assert missing.status_code == 422


async def test_external_kinds_cannot_shadow_python_kinds() -> None:
    from asyncproc.errors import ConfigError

    with pytest.raises(ConfigError, match="external_kinds"):
        demo_app(external_kinds=["demo.count"])


async def test_the_python_processor_runs_jobs_with_progress_results_errors_and_stop() -> None:
    from asyncproc.client import ExternalJob, Processor
    from asyncproc.errors import JobError

    async def work(job: ExternalJob) -> Any:
        mode = job.content["mode"]
        await job.progress(percent=50, biz_step=mode)
        if mode == "fail":
            raise JobError("cannot render", tech_msg="no template", error_id="render.failed")
        if mode == "crash":
            raise RuntimeError("boom")
        if mode == "hang":
            await anyio.sleep(60)
        return {"mode": mode}

    app = external_app(lease=0.6)
    store = app.state.service.store
    async with (
        live_server(app) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        processor = Processor(url, [KIND], work, concurrency=3, wait=0.5)
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(processor.run)
            ok = await enqueue(client, {"mode": "ok"})
            fail = await enqueue(client, {"mode": "fail"})
            crash = await enqueue(client, {"mode": "crash"})
            hang = await enqueue(client, {"mode": "hang"})
            done = await finished(client, ok)
            assert done["state"] == "succeeded"
            assert (await client.get(f"/api/jobs/{ok}/result")).json() == {"mode": "ok"}
            failed = await finished(client, fail)
            assert failed["error"]["errorId"] == "render.failed"
            assert failed["error"]["bizMsg"] == "cannot render"
            crashed = await finished(client, crash)
            assert crashed["error"]["errorId"] == "unhandled"
            assert crashed["error"]["techMsg"] == "boom"
            running = await wait_until(
                lambda: status(client, hang),
                lambda s: s["progress"]["bizStep"] == "hang",
            )
            # Heartbeats keep the lease: renewed until it outlives several lease lengths.
            first = await store.lease_of(hang)
            assert first is not None
            await wait_until(
                lambda: store.lease_of(hang),
                lambda until: until is not None and until >= first + timedelta(seconds=1.8),
            )
            assert (await status(client, hang))["state"] == "running"
            assert running["attempt"] == 1
            assert (await client.post(f"/api/jobs/{hang}/stop")).status_code == 202
            stopped = await finished(client, hang)
            assert stopped["state"] == "stopped"
            assert stopped["attempt"] == 1
            tasks.cancel_scope.cancel()
        await processor.aclose()


async def test_schedules_and_event_triggers_start_external_jobs() -> None:
    trigger = {"name": "render-on-event", "kind": KIND, "event": "render", "id_field": "id"}
    async with api_client(external_app(triggers=[trigger])) as client:
        put = await client.put(
            "/api/schedules/every-second", json={"kind": KIND, "content": {"rows": 1}, "every": 1}
        )
        assert put.status_code == 201, put.text
        [scheduled] = await take(client, wait=10)
        assert scheduled["job"]["trigger"] == {"type": "schedule", "name": "every-second"}
        assert scheduled["content"] == {"rows": 1}
        await client.post("/api/schedules/every-second/pause")
        fired = await post(client, "/api/events/render", {"id": "e-1", "rows": 2}, 200)
        [made] = fired["items"]
        assert made["outcome"] == "created"
        taken = await take(client, count=5, wait=5)
        by_id = {item["job"]["id"]: item for item in taken}
        assert made["status"]["id"] in by_id
        assert by_id[made["status"]["id"]]["job"]["trigger"]["type"] == "event"


async def test_a_replacing_job_waits_for_the_key_holder_to_end() -> None:
    settings = {"kinds": {KIND: {"unique": "active", "on_conflict": "replace"}}}
    async with api_client(external_app(**settings)) as client:
        holder = await enqueue(client, key="order-7")
        [held] = await take(client)
        replacement = await enqueue(client, key="order-7")
        stopping = await status(client, holder)
        assert stopping["stopRequested"] is True
        # The replacement is not handed out while the holder still runs.
        assert await take(client, wait=0.5) == []
        assert (await status(client, replacement))["state"] == "queued"
        await post(client, f"/api/workers/jobs/{holder}/stopped", {"token": held["token"]}, 200)
        [taken] = await take(client, wait=10)
        assert taken["job"]["id"] == replacement
        key = (await client.get(f"/api/keys/{KIND}/order-7")).json()
        assert key["holder"]["id"] == replacement


async def test_a_queued_external_job_stops_at_once_and_is_never_handed_out() -> None:
    async with api_client(external_app()) as client:
        job_id = await enqueue(client)
        stop = await client.post(f"/api/jobs/{job_id}/stop")
        assert stop.status_code == 200
        assert stop.json()["state"] == "stopped"
        assert await take(client, wait=0.3) == []
