"""`/openapi.json` is a valid OpenAPI 3.1 document of every route and kind."""

from __future__ import annotations

from typing import Any

import pytest
from openapi_spec_validator import validate

from asyncproc.config import load_settings
from asyncproc.server import create_app
from tests.support import api_client, job_finished, post_json

pytestmark = pytest.mark.anyio


async def test_openapi_is_valid_and_complete() -> None:
    async with api_client(create_app(load_settings(environ={}))) as client:
        document = (await client.get("/openapi.json")).json()
        kinds = [k["kind"] for k in (await client.get("/api/kinds")).json()]
    validate(document)
    assert document["openapi"].startswith("3.1")
    paths = document["paths"]
    for kind in kinds:
        for call in ("enqueue", "progress", "stop", "result", "release"):
            assert f"/api/{kind}/{call}" in paths
    for path in (
        "/api/jobs",
        "/api/jobs/{id}",
        "/api/jobs/{id}/stop",
        "/api/jobs/{id}/result",
        "/api/jobs/{id}/events",
        "/api/kinds",
        "/health",
        "/openapi.json",
        "/",
    ):
        assert path in paths
    schemas = document["components"]["schemas"]
    assert "JobStatus" in schemas
    count_body = paths["/api/demo.count/enqueue"]["post"]["requestBody"]["content"]
    enqueue_schema = resolved(schemas, count_body["application/json"]["schema"])
    count_schema = resolved(schemas, enqueue_schema["properties"]["content"])
    assert count_schema["properties"]["n"]["minimum"] == 0


def resolved(schemas: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    """`schema`, or the component its `$ref` names."""
    while "$ref" in schema:
        schema = schemas[schema["$ref"].rsplit("/", 1)[1]]
    return schema


async def test_the_document_holds_the_constraints_the_server_checks() -> None:
    async with api_client(create_app(load_settings(environ={}))) as client:
        document = (await client.get("/openapi.json")).json()
    schemas = document["components"]["schemas"]
    paths = document["paths"]
    # Ids and keys have their lengths, in bodies and in paths.
    assert resolved(schemas, schemas["IdRequest"]["properties"]["id"]) == {
        "type": "string",
        "minLength": 1,
        "maxLength": 128,
    }
    key = resolved(schemas, schemas["ReleaseRequest"]["properties"]["key"])
    assert (key["minLength"], key["maxLength"]) == (1, 256)
    key_param = paths["/api/keys/{kind}/{key}"]["get"]["parameters"][1]
    assert (key_param["schema"]["minLength"], key_param["schema"]["maxLength"]) == (1, 256)
    # A state is one of the five, in the status and in the list's filter.
    states = ["failed", "queued", "running", "stopped", "succeeded"]
    assert resolved(schemas, schemas["JobStatus"]["properties"]["state"])["enum"] == states
    state_param = paths["/api/jobs"]["get"]["parameters"][1]
    assert resolved(schemas, state_param["schema"])["enum"] == states
    # The SSE route is an event stream whose events carry the status as JSON.
    events = paths["/api/jobs/{id}/events"]["get"]["responses"]["200"]["content"]
    assert list(events) == ["text/event-stream"]
    status_event = events["text/event-stream"]["schema"]["oneOf"][0]["properties"]["data"]
    assert status_event["contentSchema"] == {"$ref": "#/components/schemas/JobStatus"}
    # The kinds' content schemas are in the document as in /api/kinds.
    body = paths["/api/demo.count/enqueue"]["post"]["requestBody"]["content"]["application/json"]
    enqueue = resolved(schemas, body["schema"])
    assert enqueue["required"] == ["content"]
    assert "anyOf" in enqueue["properties"]["requestId"]  # null is taken for "not given"


async def test_a_number_with_no_fraction_is_an_integer() -> None:
    async with api_client(create_app(load_settings(environ={}))) as client:
        job = await post_json(client, "/api/demo.count/enqueue", {"content": {"n": 2.0}}, 202)
        done = await job_finished(client, job["id"])
        assert done["state"] == "succeeded"
        assert (await client.get(f"/api/jobs/{job['id']}/result")).json() == {"counted": 2}
        since = float(done["version"])
        await post_json(client, "/api/demo.count/progress", {"id": job["id"], "since": since}, 200)
        answer = await client.get(f"/api/jobs/{job['id']}", params={"since": "1.0"})
        assert answer.status_code == 200
        assert (await client.get("/api/jobs", params={"limit": "1.0"})).status_code == 200
        # A fraction is still no integer.
        await post_json(client, "/api/demo.count/enqueue", {"content": {"n": 2.5}}, 422)
        assert (await client.get("/api/jobs", params={"limit": "1.5"})).status_code == 422


async def test_a_query_value_is_never_null() -> None:
    async with api_client(create_app(load_settings(environ={}))) as client:
        for params in ({"limit": "null"}, {"state": "null"}, {"limit": "0"}):
            answer = await client.get("/api/jobs", params=params)
            assert answer.status_code == 422, params
            assert answer.json()["error"]["code"] == "invalid"
        assert (await client.get("/api/jobs", params={"limit": ""})).status_code == 200


async def test_a_start_too_far_away_is_refused_not_a_server_error() -> None:
    async with api_client(create_app(load_settings(environ={}))) as client:
        for far in ({"delay": 1e308}, {"notBefore": "9999-12-31T23:59:59Z"}):
            answer = await client.post("/api/demo.count/enqueue", json={"content": {"n": 1}, **far})
            assert answer.status_code == 422, (far, answer.text)
        soon = {"content": {"n": 1}, "delay": 3000 * 86400}
        await post_json(client, "/api/demo.count/enqueue", soon, 202)
