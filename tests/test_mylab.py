"""MyLab.AsyncProcessor API v2 (API.md section 14) on the memory backends: MyLab's
scenarios through its client and processor routes, every answer checked against the
schema of its operation (tests/mylab_schemas.py)."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate

from asyncproc.config import load_settings
from asyncproc.errors import ConfigError
from asyncproc.server import create_app
from tests.mylab_schemas import REQUEST_DETAILS, REQUEST_STATUS, checked
from tests.support import api_client, demo_app, wait_until

pytestmark = pytest.mark.anyio

KIND = "mylab.req"


def mylab_app(**overrides: Any) -> Any:
    """The demo app serving MyLab's API over the external kind `mylab.req`."""
    settings: dict[str, Any] = {
        "external_kinds": [KIND],
        "mylab": True,
        "mylab_kind": KIND,
        **overrides,
    }
    return demo_app(**settings)


async def create(client: httpx.AsyncClient, content: Any = None, **more: Any) -> str:
    """POST /requests; the id it answers (text/plain)."""
    body = {"content": content if content is not None else {"value1": "foo"}, **more}
    answer = await client.post("/requests", json=body)
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"].startswith("text/plain")
    return answer.text


async def status(client: httpx.AsyncClient, req_id: str, prefix: str = "") -> dict[str, Any]:
    """GET /requests/{id}/status, checked against RequestStatus."""
    answer = await client.get(f"{prefix}/requests/{req_id}/status")
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = checked(answer.json(), REQUEST_STATUS)
    return body


async def details(client: httpx.AsyncClient, req_id: str, include: str) -> dict[str, Any]:
    """GET /requests/{id}?include_resp=, checked against RequestDetails."""
    answer = await client.get(f"/requests/{req_id}", params={"include_resp": include})
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = checked(answer.json(), REQUEST_DETAILS)
    return body


async def call(
    client: httpx.AsyncClient, method: str, path: str, expect: int = 200, **kwargs: Any
) -> httpx.Response:
    """A processor call, asserting its status code."""
    answer = await client.request(method, path, **kwargs)
    assert answer.status_code == expect, answer.text
    return answer


async def processing(client: httpx.AsyncClient, req_id: str, expect: int = 200) -> None:
    await call(client, "POST", f"/requests/{req_id}/status/step/processing", expect)


async def test_predefined_request_id_is_kept_and_a_repeat_answers_it() -> None:
    async with api_client(mylab_app()) as client:
        req_id = "54f5d4d35d47497a92386e46acc6d3be"
        assert await create(client, {"value1": "foo"}, requestId=req_id) == req_id
        assert await create(client, {"value1": "other"}, requestId=req_id) == req_id
        assert await status(client, req_id) == {"processStep": "pending", "successful": False}
        job = (await client.get(f"/api/jobs/{req_id}")).json()
        assert (job["kind"], job["state"]) == (KIND, "queued")
        # Generated ids are 32 hex digits, as MyLab's.
        generated = await create(client)
        assert len(generated) == 32
        assert set(generated) <= set("0123456789abcdef")


async def test_biz_step_as_text_or_json_string_shows_while_processing() -> None:
    async with api_client(mylab_app()) as client:
        req_id = await create(client)
        await processing(client, req_id)
        assert await status(client, req_id) == {"processStep": "processing", "successful": False}
        await processing(client, req_id)  # a redelivered message says it again: no change
        put = f"/requests/{req_id}/status/biz-step"
        await call(client, "PUT", put, content=b"foo-step", headers={"content-type": "text/plain"})
        assert (await status(client, req_id))["bizStep"] == "foo-step"
        await call(client, "PUT", put, json="bar-step")  # the SDK sends a JSON string
        assert await status(client, req_id) == {
            "processStep": "processing",
            "bizStep": "bar-step",
            "successful": False,
        }
        await call(client, "PUT", put, 415, content=b"x", headers={"content-type": "text/csv"})
        await call(client, "PUT", put, 422, json={"not": "a string"})


async def test_object_result() -> None:
    app = mylab_app()
    async with api_client(app) as client:
        req_id = await create(client, {"value1": "foo", "value2": 10, "command": "concat"})
        await processing(client, req_id)
        await call(client, "PUT", f"/requests/{req_id}/result", json="foo-10")
        assert await status(client, req_id) == {
            "processStep": "completed",
            "successful": True,
            "resultSize": 8,
            "resultMime": "application/json",
        }
        result = await client.get(f"/requests/{req_id}/result")
        assert result.status_code == 200
        assert result.headers["content-type"].startswith("application/json")
        assert result.json() == "foo-10"
        full = await details(client, req_id, "true")
        assert (full["id"], full["resObj"], full["status"]["successful"]) == (
            req_id,
            "foo-10",
            True,
        )
        assert "resObj" not in await details(client, req_id, "false")
        # And the job API sees the same job.
        job = (await client.get(f"/api/jobs/{req_id}")).json()
        assert (job["state"], job["resultMime"]) == ("succeeded", "application/json")
        # The job's message for `take` processors was spare: the node drained it.
        queue = app.state.service.queue
        await wait_until(lambda: queue.depth(f"ext.{KIND}"), lambda n: n == 0)


async def test_binary_result() -> None:
    async with api_client(mylab_app()) as client:
        req_id = await create(client, {"value1": "foo", "command": "str-to-bin"})
        await processing(client, req_id)
        await call(
            client,
            "PUT",
            f"/requests/{req_id}/result",
            content=b"foo\x00\xff",
            headers={"content-type": "application/octet-stream"},
        )
        got = await status(client, req_id)
        assert (got["resultSize"], got["resultMime"]) == (5, "application/octet-stream")
        result = await client.get(f"/requests/{req_id}/result")
        assert result.headers["content-type"] == "application/octet-stream"
        assert result.content == b"foo\x00\xff"
        full = await details(client, req_id, "True")
        assert base64.b64decode(full["resBin"]) == b"foo\x00\xff"
        assert "resObj" not in full


async def test_completed_without_result_and_result_not_ready() -> None:
    async with api_client(mylab_app()) as client:
        req_id = await create(client)
        assert (await client.get(f"/requests/{req_id}/result")).status_code == 400  # pending
        await processing(client, req_id)
        assert (await client.get(f"/requests/{req_id}/result")).status_code == 400  # processing
        await call(client, "POST", f"/requests/{req_id}/status/step/completed")
        assert await status(client, req_id) == {"processStep": "completed", "successful": True}
        not_ready = await client.get(f"/requests/{req_id}/result")
        assert not_ready.status_code == 400
        assert not_ready.json()["error"]["code"] == "result_not_ready"
        assert await details(client, req_id, "true") == {
            "id": req_id,
            "status": {"processStep": "completed", "successful": True},
        }


async def test_reported_and_processing_errors() -> None:
    async with api_client(mylab_app()) as client:
        reported = await create(client, {"command": "reported-error"})
        await processing(client, reported)
        error = {"bizMgs": "foo", "techMgs": "bar", "techInfo": "at Foo.Bar()"}
        await call(client, "PUT", f"/requests/{reported}/status/error", json=error)
        assert await status(client, reported) == {
            "processStep": "completed",
            "successful": False,
            # techInfo only with expose_tech_info; the default errorId names the source.
            "error": {"bizMgs": "foo", "techMgs": "bar", "errorId": "processing_error"},
        }
        assert (await client.get(f"/requests/{reported}/result")).status_code == 400

        # What MyLab's SDK sends for an exception of the processing logic (no bizMgs),
        # here reported while the request was still pending.
        unhandled = await create(client, {"command": "unhandled-exception"})
        error = {"techMgs": "foo", "techInfo": "System.Exception: foo", "errorId": "my:err"}
        await call(client, "PUT", f"/requests/{unhandled}/status/error", json=error)
        assert (await status(client, unhandled))["error"] == {"techMgs": "foo", "errorId": "my:err"}
        job = (await client.get(f"/api/jobs/{unhandled}")).json()
        assert job["state"] == "failed"
        assert job["error"]["techMsg"] == "foo"

        bad = await create(client)
        await call(client, "PUT", f"/requests/{bad}/status/error", 400, json=["no"])
        await call(client, "PUT", f"/requests/{bad}/status/error", 422, json={"bizMgs": 1})


async def test_tech_info_follows_expose_tech_info() -> None:
    async with api_client(mylab_app(expose_tech_info=True)) as client:
        req_id = await create(client)
        error = {"techMgs": "foo", "techInfo": "trace"}
        await call(client, "PUT", f"/requests/{req_id}/status/error", json=error)
        assert (await status(client, req_id))["error"] == {
            "techMgs": "foo",
            "techInfo": "trace",
            "errorId": "processing_error",
        }


async def test_request_expiry_completes_with_timeout_and_refuses_its_processor() -> None:
    async with api_client(mylab_app(processing_timeout=0.3)) as client:
        expired = await create(client)
        late = await wait_until(
            lambda: status(client, expired), lambda s: s["processStep"] == "completed"
        )
        assert late["successful"] is False
        assert late["error"]["errorId"] == "timeout"
        # A processor that gets the message now is told the request is over.
        answer = await call(client, "POST", f"/requests/{expired}/status/step/processing", 409)
        assert answer.json()["error"]["code"] == "request_completed"


async def test_a_stopped_request_completes_and_its_processor_is_refused() -> None:
    async with api_client(mylab_app()) as client:
        req_id = await create(client)
        await processing(client, req_id)
        stop = await client.post(f"/api/jobs/{req_id}/stop")
        assert stop.status_code in {200, 202}
        # No lease holder runs it: it stops at once.
        stopped = await wait_until(
            lambda: status(client, req_id), lambda s: s["processStep"] == "completed"
        )
        assert stopped == {
            "processStep": "completed",
            "successful": False,
            "error": {"bizMgs": "The request was stopped.", "errorId": "stopped"},
        }
        for method, path, kwargs in [
            ("PUT", "status/biz-step", {"json": "step"}),
            ("PUT", "result", {"json": 1}),
            ("PUT", "status/error", {"json": {"techMgs": "x"}}),
            ("POST", "status/step/completed", {}),
            ("POST", "status/step/processing", {}),
        ]:
            answer = await call(client, method, f"/requests/{req_id}/{path}", 409, **kwargs)
            assert answer.json()["error"]["state"] == "stopped"
        assert (await client.get(f"/api/jobs/{req_id}")).json()["state"] == "stopped"


async def test_a_queued_request_stopped_completes_unsuccessfully() -> None:
    async with api_client(mylab_app()) as client:
        req_id = await create(client)
        assert (await client.post(f"/api/jobs/{req_id}/stop")).status_code == 200
        assert (await status(client, req_id))["error"]["errorId"] == "stopped"


async def test_unknown_ids_other_kinds_and_bad_input() -> None:
    async with api_client(mylab_app()) as client:
        other = (await client.post("/api/demo.echo/enqueue", json={"content": {}})).json()["id"]
        for req_id in ("0" * 32, other):
            for method, path in [
                ("GET", ""),
                ("GET", "/status"),
                ("GET", "/result"),
                ("POST", "/status/step/processing"),
                ("POST", "/status/step/completed"),
            ]:
                answer = await client.request(method, f"/requests/{req_id}{path}")
                assert answer.status_code == 404, (method, path, answer.text)
            put = await client.put(f"/requests/{req_id}/result", json=1)
            assert put.status_code == 404
        text = await client.post("/requests", content=b"{}", headers={"content-type": "text/plain"})
        assert text.status_code == 415
        assert (await client.post("/requests", json={"requestId": "x"})).status_code == 400
        bad_id = await client.post("/requests", json={"content": {}, "requestId": "a b"})
        assert bad_id.status_code == 422
        garbage = await client.post(
            "/requests", content=b"{", headers={"content-type": "application/json"}
        )
        assert garbage.status_code == 400
        req_id = await create(client)
        csv = await client.put(
            f"/requests/{req_id}/result", content=b"a,b", headers={"content-type": "text/csv"}
        )
        assert csv.status_code == 415
        invalid = await client.put(
            f"/requests/{req_id}/result", content=b"{", headers={"content-type": "application/json"}
        )
        assert invalid.status_code == 400
        assert (await client.get(f"/requests/{req_id}?include_resp=maybe")).status_code == 422
        assert (await status(client, req_id))["processStep"] == "pending"


async def test_the_v2_paths_answer_the_same() -> None:
    async with api_client(mylab_app()) as client:
        answer = await client.post("/v2/requests", json={"content": {"a": 1}})
        req_id = answer.text
        await call(client, "POST", f"/v2/requests/{req_id}/status/step/processing")
        await call(client, "PUT", f"/v2/requests/{req_id}/status/biz-step", json="step")
        await call(client, "PUT", f"/v2/requests/{req_id}/result", json={"ok": True})
        got = await status(client, req_id, prefix="/v2")
        assert (got["processStep"], got["bizStep"], got["successful"]) == (
            "completed",
            "step",
            True,
        )
        assert (await client.get(f"/v2/requests/{req_id}/result")).json() == {"ok": True}
        full = (await client.get(f"/v2/requests/{req_id}?include_resp=true")).json()
        assert checked(full, REQUEST_DETAILS)["resObj"] == {"ok": True}


async def test_a_python_kind_serves_clients_and_refuses_processors() -> None:
    async with api_client(demo_app(mylab=True, mylab_kind="demo.echo")) as client:
        req_id = await create(client, {"value": 1})
        done = await wait_until(
            lambda: status(client, req_id), lambda s: s["processStep"] == "completed"
        )
        assert (done["successful"], done["resultMime"]) == (True, "application/json")
        assert (await details(client, req_id, "true"))["resObj"]["content"] == {"value": 1}
        refused = await call(client, "POST", f"/requests/{req_id}/status/step/processing", 409)
        assert refused.json()["error"]["code"] == "not_external"


async def test_openapi_documents_the_mylab_routes() -> None:
    async with api_client(mylab_app()) as client:
        document = (await client.get("/openapi.json")).json()
    validate(document)
    for prefix in ("/requests", "/v2/requests"):
        assert set(document["paths"][prefix + "/{id}/result"]) == {"get", "put"}
        assert prefix + "/{id}/status/step/completed" in document["paths"]
    assert "RequestStatus" in document["components"]["schemas"]


async def test_routes_are_served_only_with_mylab() -> None:
    async with api_client(demo_app()) as client:
        answer = await client.post("/requests", json={"content": {}})
        assert answer.status_code == 404


def test_settings_are_checked_at_start_up() -> None:
    with pytest.raises(ConfigError) as missing:
        load_settings(environ={"ASYNCPROC_MYLAB": "true"})
    assert missing.value.key == "mylab_kind"
    with pytest.raises(ConfigError) as unknown:
        create_app(load_settings(environ={}, mylab=True, mylab_kind="nope"))
    assert unknown.value.key == "mylab_kind"
    with pytest.raises(ConfigError) as no_broker:
        create_app(
            load_settings(
                environ={}, mylab=True, mylab_kind="demo.echo", mylab_queue="mylab.requests"
            )
        )
    assert no_broker.value.key == "mylab_queue"


async def test_a_draining_memory_node_refuses_new_requests_on_both_paths() -> None:
    app = mylab_app()
    async with api_client(app) as client:
        app.state.drain.begin()
        for path in ("/requests", "/v2/requests"):
            answer = await client.post(path, json={"content": {}})
            assert answer.status_code == 503, path
            assert answer.json()["error"]["code"] == "shutting_down"
