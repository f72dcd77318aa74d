"""`/openapi.json` is a valid OpenAPI 3.1 document of every route and kind."""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
import pytest
from openapi_spec_validator import validate
from starlette.requests import Request
from starlette.responses import Response

from asyncproc.api import decode_body, json_response, read_body
from asyncproc.apidoc import Answer, ErrorBody, Operation, Param
from asyncproc.config import load_settings
from asyncproc.registry import Registry
from asyncproc.server import create_app
from tests.support import api_client, demo_app, job_finished, post_json

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
    state_schema, empty = state_param["schema"]["anyOf"]
    assert resolved(schemas, state_schema)["enum"] == states
    assert empty == {"const": ""}  # `?state=` lists every state
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
        too_far = (
            {"delay": 1e308},
            {"notBefore": "9999-12-31T23:59:59Z"},
            {"notBefore": "9000-01-01T00:00:00+01:00"},
        )
        for far in too_far:
            answer = await client.post("/api/demo.count/enqueue", json={"content": {"n": 1}, **far})
            assert answer.status_code == 422, (far, answer.text)
        for far_but_fine in ({"delay": 3000 * 86400}, {"notBefore": "8999-12-31T23:59:59-23:59"}):
            await post_json(
                client, "/api/demo.count/enqueue", {"content": {"n": 1}, **far_but_fine}, 202
            )


def _things_plugin() -> Registry:
    """A plugin with one documented route of its own and an answer every call may give."""
    registry = Registry()
    limit = Param("limit", "query", Annotated[int, msgspec.Meta(ge=1, le=10)] | None, "How many")

    class Thing(msgspec.Struct):
        """A thing."""

        name: Annotated[str, msgspec.Meta(min_length=1)]

    @registry.route("/api/things", methods=["POST"])
    async def things(request: Request) -> Response:
        body = decode_body(await read_body(request), Thing)
        return json_response([body] * (limit.read(request) or 1))

    registry.document(
        Operation(
            "POST",
            "/api/things",
            "Some things",
            "things",
            {200: Answer("The things", list[Thing])},
            [limit],
            body=Thing,
        )
    )
    registry.hooks.openapi_answers[401] = Answer("No token", ErrorBody)
    return registry


async def test_a_plugin_documents_its_routes_with_the_types_its_handler_reads() -> None:
    async with api_client(demo_app(_things_plugin())) as client:
        document = (await client.get("/openapi.json")).json()
        assert (await client.post("/api/things?limit=2", json={"name": "a"})).json() == [
            {"name": "a"},
            {"name": "a"},
        ]
        refused = await client.post("/api/things?limit=11", json={"name": "a"})
        assert refused.status_code == 422
        assert "limit" in refused.json()["error"]["message"]
        assert (await client.post("/api/things", json={"name": ""})).status_code == 422
    validate(document)
    things = document["paths"]["/api/things"]["post"]
    assert things["parameters"] == [
        {
            "name": "limit",
            "in": "query",
            "required": False,
            "schema": {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 10}, {"const": ""}]},
            "description": "How many (empty: as if not given)",
        }
    ]
    thing = document["components"]["schemas"]["Thing"]
    assert thing["properties"]["name"] == {"type": "string", "minLength": 1}
    assert set(things["responses"]) >= {"200", "401", "400", "415", "422"}
    # The node's common answers go to every call but the page's and /health.
    assert "401" in document["paths"]["/api/jobs"]["get"]["responses"]
    assert "401" not in document["paths"]["/"]["get"]["responses"]
    assert "401" not in document["paths"]["/health"]["get"]["responses"]
