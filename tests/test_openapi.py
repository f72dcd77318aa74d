"""`/openapi.json` is a valid OpenAPI 3.1 document of every route and kind."""

from __future__ import annotations

from typing import Any

import pytest
from openapi_spec_validator import validate

from asyncproc.config import load_settings
from asyncproc.server import create_app
from tests.support import api_client

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
