"""Starting jobs on the cluster backends (Redis state, RabbitMQ queue) in one `all` node:
conflict policies, the key's context, batches and selections behave as on memory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from asyncproc.backends.rabbitmq import RabbitMQQueue
from asyncproc.config import load_settings
from asyncproc.server import create_app
from tests.contract import delete_prefix
from tests.support import api_client, wait_until
from tests.support import job_finished as finished
from tests.support import job_status as status
from tests.support import post_json as post

pytestmark = [pytest.mark.anyio, pytest.mark.redis, pytest.mark.rabbitmq]


@pytest.fixture
async def client(
    redis_url: str, amqp_url: str, unique_prefix: str
) -> AsyncIterator[httpx.AsyncClient]:
    settings = load_settings(
        environ={},
        state="redis",
        queue="rabbitmq",
        redis_url=redis_url,
        amqp_url=amqp_url,
        key_prefix=unique_prefix,
        sweep_interval=0.1,
        scheduler=False,
        shutdown_grace=0.2,
    )
    try:
        async with api_client(create_app(settings)) as http:
            yield http
    finally:
        await delete_prefix(redis_url, unique_prefix)
        queue = RabbitMQQueue(amqp_url, prefix=unique_prefix)
        await queue.delete(["default"])
        await queue.aclose()


async def test_conflict_policies_and_the_key_context(client: httpx.AsyncClient) -> None:
    body: dict[str, Any] = {"content": {"seconds": 30}, "key": "k"}
    first = await post(client, "/api/demo.keyed/enqueue", body, 202)
    refused = await post(client, "/api/demo.keyed/enqueue", body, 409)
    assert refused["error"]["jobId"] == first["id"]
    same = await post(client, "/api/demo.keyed/enqueue", {**body, "onConflict": "existing"}, 200)
    assert same["id"] == first["id"]
    await wait_until(lambda: status(client, first["id"]), lambda s: s["state"] == "running")
    replace = {"content": {"seconds": 0}, "key": "k", "onConflict": "replace"}
    second = await post(client, "/api/demo.keyed/enqueue", replace, 202)
    old, new = await finished(client, first["id"]), await finished(client, second["id"])
    assert (old["state"], new["state"]) == ("stopped", "succeeded")
    assert new["startedAt"] >= old["finishedAt"]
    context = (await client.get("/api/keys/demo.keyed/k")).json()
    assert context["holder"] is None
    assert [job["id"] for job in context["jobs"]] == [second["id"], first["id"]]


async def test_a_batch_by_keys(client: httpx.AsyncClient) -> None:
    keys = [f"b-{i}" for i in range(300)]
    answer = await post(
        client, "/api/demo.keyed/enqueue-batch", {"keys": [*keys, "b-0"], "content": {}}, 200
    )
    outcomes = [item["outcome"] for item in answer["items"]]
    assert outcomes.count("created") == 300
    assert outcomes[-1] == "refused"  # b-0 again, in the same batch: b-0 holds its key
    ids = [item["status"]["id"] for item in answer["items"][:300]]
    for job_id in ids[:10]:
        assert (await finished(client, job_id))["trigger"]["type"] == "batch"


async def test_a_selection(client: httpx.AsyncClient) -> None:
    job = await post(client, "/api/demo.select/enqueue", {"content": {"count": 120}}, 202)
    assert (await finished(client, job["id"]))["state"] == "succeeded"
    result = (await client.get(f"/api/jobs/{job['id']}/result")).json()
    assert result == {"created": 120, "existing": 0, "refused": 0}
    seen: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {"parent": job["id"], "limit": 50, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/api/jobs", params=params)).json()
        seen += page["items"]
        if (cursor := page["next"]) is None:
            break
    assert len({child["id"] for child in seen}) == 120
    assert all(child["parentId"] == job["id"] for child in seen)
