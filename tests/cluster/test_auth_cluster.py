"""Tokens and owners on a real cluster: an `api` node and a `worker` node (processes) on
Redis + RabbitMQ, the tokens in a TOML `[[tokens]]` config both read. Another owner's
jobs answer 404 on every call and stay out of lists (the Redis owner index), jobs a
selection starts on the worker inherit its owner, and the event stream works."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest

from tests.cluster import forget_cluster
from tests.support import ROOT, NodeProcess, wait_until
from tests.test_auth import HOLD, ROUTES, SCOPES, SECRETS, TOKENS, _request, bearer, state_of

pytestmark = [pytest.mark.anyio, pytest.mark.cluster, pytest.mark.redis, pytest.mark.rabbitmq]


def tokens_toml() -> str:
    return "".join(
        f'[[tokens]]\nname = "{token["name"]}"\nhash = "{token["hash"]}"\n'
        f"scopes = {json.dumps(SCOPES[str(token['name'])])}\n\n"
        for token in TOKENS
    )


@asynccontextmanager
async def clients(
    redis_url: str, amqp_url: str, prefix: str, tmp_path: Path
) -> AsyncIterator[dict[str, httpx.AsyncClient]]:
    config = tmp_path / "asyncproc.toml"
    config.write_text(tokens_toml(), encoding="utf-8")
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "ASYNCPROC_CONFIG": str(config),
        "ASYNCPROC_STATE": "redis",
        "ASYNCPROC_QUEUE": "rabbitmq",
        "ASYNCPROC_REDIS_URL": redis_url,
        "ASYNCPROC_AMQP_URL": amqp_url,
        "ASYNCPROC_KEY_PREFIX": prefix,
        "ASYNCPROC_SHUTDOWN_GRACE": "1",
        "ASYNCPROC_SCHEDULER": "false",
    }
    api = NodeProcess({**env, "ASYNCPROC_ROLE": "api"}, tmp_path, "api")
    nodes = [api]
    try:
        api.wait_healthy()
        nodes.append(NodeProcess({**env, "ASYNCPROC_ROLE": "worker"}, tmp_path, "worker"))
        nodes[-1].wait_healthy()
        by_name = {
            name: httpx.AsyncClient(base_url=api.url, headers=bearer(name), timeout=30)
            for name in SECRETS
        }
        by_name["anonymous"] = httpx.AsyncClient(base_url=api.url, timeout=30)
        try:
            yield by_name
        finally:
            for client in by_name.values():
                await client.aclose()
    finally:
        for node in nodes:
            node.stop()
        await forget_cluster(redis_url, amqp_url, prefix)


async def test_owners_are_isolated_across_the_cluster(
    redis_url: str, amqp_url: str, unique_prefix: str, tmp_path: Path
) -> None:
    async with clients(redis_url, amqp_url, unique_prefix, tmp_path) as callers:
        alice, bob, ops = callers["alice"], callers["bob"], callers["ops"]
        unknown = await callers["anonymous"].get("/api/jobs")
        assert unknown.status_code == 401
        assert unknown.headers["www-authenticate"].startswith("Bearer")
        assert (await callers["reader"].post("/api/demo.count/enqueue", json={})).status_code == 403

        held = await alice.post("/api/demo.count/enqueue", json={"content": HOLD, "key": "k"})
        assert held.status_code == 202, held.text
        job = held.json()
        assert job["owner"] == "alice"
        await wait_until(lambda: state_of(alice, job["id"]), lambda s: s == "running")
        mine = (await bob.post("/api/demo.count/enqueue", json={"content": {"n": 0}})).json()
        for route in ROUTES:
            if "{id}" in json.dumps(route):
                response = await bob.request(**_request(route, job["id"]))
                assert response.status_code == 404, (route, response.text)
        assert (await bob.get(f"/api/jobs/{job['id']}", params={"wait": 1})).status_code == 404
        listed = (await bob.get("/api/jobs")).json()["items"]
        assert [item["id"] for item in listed] == [mine["id"]]
        assert (await bob.get("/api/keys/demo.count/k")).json()["jobs"] == []

        selection = (
            await alice.post("/api/demo.select/enqueue", json={"content": {"count": 5}})
        ).json()
        states: list[str] = []
        async with alice.stream("GET", f"/api/jobs/{selection['id']}/events") as stream:
            assert stream.status_code == 200
            async for line in stream.aiter_lines():
                if line.startswith("data: "):
                    states.append(json.loads(line[6:])["state"])
        assert states[-1] == "succeeded"
        children = (await alice.get("/api/jobs", params={"parent": selection["id"]})).json()
        assert len(children["items"]) == 5
        assert {child["owner"] for child in children["items"]} == {"alice"}
        assert (await bob.get("/api/jobs", params={"parent": selection["id"]})).json()[
            "items"
        ] == []
        owned = (await alice.get("/api/jobs", params={"kind": "demo.count"})).json()["items"]
        assert [item["id"] for item in owned] == [job["id"]]

        every = {
            item["id"]
            for item in (await ops.get("/api/jobs", params={"limit": 50})).json()["items"]
        }
        assert {job["id"], mine["id"], selection["id"]} <= every
        assert await state_of(alice, job["id"]) == "running"
        assert (await alice.post(f"/api/jobs/{job['id']}/stop")).status_code == 202
        await wait_until(lambda: state_of(alice, job["id"]), lambda s: s == "stopped")
