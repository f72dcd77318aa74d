"""What the page reads beside the status: a job's input (`GET /api/jobs/{id}/content`),
the demo kinds' example contents (the New job form starts from them), the overview's URL."""

from __future__ import annotations

import httpx
import msgspec
import pytest

from asyncproc.registry import load_plugins
from tests.support import api_client, demo_app, job_finished, post_json

pytestmark = pytest.mark.anyio


async def test_content_is_the_input_as_enqueued() -> None:
    content = {"n": 2, "delay": 0.01}
    async with api_client(demo_app()) as client:
        job = await post_json(client, "/api/demo.count/enqueue", {"content": content}, 202)
        answer = await client.get(f"/api/jobs/{job['id']}/content")
        assert answer.status_code == 200
        assert answer.headers["content-type"] == "application/json"
        assert answer.json() == content
        # Still there once the job has finished (until its retention ends).
        await job_finished(client, job["id"])
        assert (await client.get(f"/api/jobs/{job['id']}/content")).json() == content


async def test_content_of_an_unknown_job_is_404() -> None:
    async with api_client(demo_app()) as client:
        answer = await client.get("/api/jobs/0123456789abcdef0123456789abcdef/content")
    assert answer.status_code == 404
    assert answer.json()["error"]["code"] == "job_not_found"  # not an unknown route


async def test_content_route_is_in_the_openapi_document() -> None:
    async with api_client(demo_app()) as client:
        paths = (await client.get("/openapi.json")).json()["paths"]
    assert "200" in paths["/api/jobs/{id}/content"]["get"]["responses"]


def test_every_demo_example_is_valid_content() -> None:
    """Submitting the New job form as it opens must start a job, whatever the kind."""
    registry = load_plugins(["asyncproc.plugins.demo"], builtin=())
    offered = {}
    for kind in registry:
        examples = kind.schema().get("examples", [])
        for example in examples:
            kind.decode_content(msgspec.json.encode(example))
        offered[kind.name] = examples
    # The demo kinds a person starts by hand offer one (compensations start themselves).
    by_hand = {"count", "report", "fail", "sleep", "echo", "bytes", "keyed", "once", "select"}
    by_hand |= {"flaky", "saga", "limited"}
    assert all(offered[f"demo.{name}"] for name in by_hand)


async def test_kinds_list_carries_the_examples() -> None:
    async with api_client(demo_app()) as client:
        kinds = {k["kind"]: k for k in (await client.get("/api/kinds")).json()}
    assert kinds["demo.count"]["contentSchema"]["examples"] == [{"n": 30, "delay": 0.1}]


async def test_overview_url_serves_the_page() -> None:
    async with api_client(demo_app()) as client:
        answer: httpx.Response = await client.get("/overview")
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/html")
