"""Tokens, scopes and owners (API.md section 15) against a real uvicorn server, memory
backends: 401 without a known token, 403 without the scope, 404 for another owner's
jobs on every route family, lists holding only one's own."""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from asyncproc import tokens
from asyncproc.config import load_settings
from asyncproc.errors import ConfigError
from asyncproc.plugins import auth
from asyncproc.plugins.scopes import required_scope
from tests.support import ROOT, api_client, demo_app, wait_until

pytestmark = pytest.mark.anyio

SECRETS = {
    "alice": "alice-secret-token",
    "bob": "bob-secret-token",
    "reader": "reader-secret-token",
    "ops": "ops-secret-token",
}
SCOPES = {
    "alice": ["submit", "read", "stop"],
    "bob": ["submit", "read", "stop"],
    "reader": ["read"],
    "ops": ["admin"],
}
TOKENS = [
    {"name": name, "hash": auth.hash_token(secret), "scopes": SCOPES[name]}
    for name, secret in SECRETS.items()
]
EVENT_TRIGGER = {"name": "count-event", "kind": "demo.count", "event": "count"}
HOLD = {"n": 600, "delay": 0.05}  # demo.count, about 30 s: still running when checked


def bearer(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {SECRETS[name]}"}


class Callers:
    """One httpx client per token (and one with none), all on the same server."""

    def __init__(self, base: httpx.AsyncClient) -> None:
        self.anonymous = base
        self.by_name = {
            name: httpx.AsyncClient(base_url=base.base_url, headers=bearer(name), timeout=30)
            for name in SECRETS
        }

    def __getitem__(self, name: str) -> httpx.AsyncClient:
        return self.by_name[name]

    async def aclose(self) -> None:
        for client in self.by_name.values():
            await client.aclose()


@asynccontextmanager
async def served(**settings: Any) -> AsyncIterator[Callers]:
    app = demo_app(tokens=TOKENS, triggers=[EVENT_TRIGGER], **settings)
    async with api_client(app) as client:
        callers = Callers(client)
        try:
            yield callers
        finally:
            await callers.aclose()


async def enqueue(client: httpx.AsyncClient, kind: str, body: Any, expect: int = 202) -> Any:
    response = await client.post(f"/api/{kind}/enqueue", json=body)
    assert response.status_code == expect, response.text
    return response.json()


async def state_of(client: httpx.AsyncClient, job_id: str) -> str:
    response = await client.get(f"/api/jobs/{job_id}")
    assert response.status_code == 200, response.text
    state: str = response.json()["state"]
    return state


# (method, path, body) of every route family; `{id}` is a job of alice's.
ROUTES: list[tuple[str, str, Any]] = [
    ("POST", "/api/demo.count/enqueue", {"content": {"n": 1}}),
    ("POST", "/api/demo.count/enqueue-batch", {"items": [{"content": {"n": 1}}]}),
    ("POST", "/api/demo.count/progress", {"id": "{id}"}),
    ("POST", "/api/demo.count/stop", {"id": "{id}"}),
    ("POST", "/api/demo.count/result", {"id": "{id}"}),
    ("POST", "/api/demo.once/release", {"key": "k"}),
    ("GET", "/api/jobs", None),
    ("GET", "/api/jobs/{id}", None),
    ("GET", "/api/jobs/{id}/result", None),
    ("GET", "/api/jobs/{id}/events", None),
    ("POST", "/api/jobs/{id}/stop", None),
    ("GET", "/api/kinds", None),
    ("GET", "/api/keys/demo.keyed/k", None),
    ("GET", "/api/schedules", None),
    ("PUT", "/api/schedules/s", {"kind": "demo.count", "content": {"n": 1}, "every": 60}),
    ("POST", "/api/schedules/s/trigger", None),
    ("GET", "/api/triggers", None),
    ("POST", "/api/events/count", {"n": 1}),
    ("GET", "/api/dead-letters", None),
    ("POST", "/api/workers/take", {"kinds": ["demo.count"], "worker": "w"}),
    ("GET", "/api/no-such-route/at/all", None),
    ("GET", "/metrics", None),
]


def _request(route: tuple[str, str, Any], job_id: str) -> dict[str, Any]:
    method, path, body = route
    request: dict[str, Any] = {"method": method, "url": path.replace("{id}", job_id)}
    if body is not None:
        request["content"] = json.dumps(body).replace("{id}", job_id)
        request["headers"] = {"content-type": "application/json"}
    return request


async def test_every_protected_call_needs_a_known_token() -> None:
    async with served() as callers:
        job = await enqueue(callers["alice"], "demo.count", {"content": HOLD})
        for route in ROUTES:
            for headers in ({}, {"Authorization": "Bearer not-a-token"}, {"Authorization": "x"}):
                request = _request(route, job["id"])
                request["headers"] = {**request.get("headers", {}), **headers}
                response = await callers.anonymous.request(**request)
                assert response.status_code == 401, (route, headers, response.text)
                assert response.headers["www-authenticate"].startswith("Bearer")
                assert response.json()["error"]["code"] == "unauthorized"
        # Nothing was done: alice's job runs, no second job exists.
        assert await state_of(callers["ops"], job["id"]) == "running"
        listed = (await callers["ops"].get("/api/jobs")).json()["items"]
        assert [item["id"] for item in listed] == [job["id"]]
        # The public paths need none.
        for path in ("/health", "/", "/jobs/x", "/static/app.js", "/openapi.json"):
            assert (await callers.anonymous.get(path)).status_code == 200, path


async def test_a_token_without_the_scope_is_forbidden() -> None:
    async with served() as callers:
        job = await enqueue(callers["alice"], "demo.count", {"content": HOLD})
        reader, alice, ops = callers["reader"], callers["alice"], callers["ops"]
        refused = await reader.post("/api/demo.count/enqueue", json={"content": {"n": 1}})
        assert refused.status_code == 403
        assert refused.json()["error"]["code"] == "forbidden"
        assert "insufficient_scope" in refused.headers["www-authenticate"]
        assert (await reader.post(f"/api/jobs/{job['id']}/stop")).status_code == 403
        assert (await reader.post("/api/events/count", json={"n": 1})).status_code == 403
        # Reading is what `read` may do (another owner's job is still hidden: 404).
        assert (await reader.get("/api/kinds")).status_code == 200
        assert (await reader.get("/api/schedules")).status_code == 200
        assert (await reader.get("/api/triggers")).status_code == 200
        assert (await reader.get(f"/api/jobs/{job['id']}")).status_code == 404
        # Operators' calls need `admin`; unknown API paths too (deny by default).
        admin_only = [route for route in ROUTES if required_scope(*route[:2]) == "admin"]
        assert len(admin_only) == 6
        for route in admin_only:
            path = route[1]
            request = _request(route, job["id"])
            forbidden = await alice.request(**request)
            assert forbidden.status_code == 403, (path, forbidden.text)
            allowed = await ops.request(**request)
            assert allowed.status_code != 403, (path, allowed.text)
        assert (await ops.get("/api/no-such-route/at/all")).status_code == 404
        assert await state_of(alice, job["id"]) == "running"


async def test_another_owners_job_is_not_there() -> None:
    async with served() as callers:
        alice, bob, ops = callers["alice"], callers["bob"], callers["ops"]
        job = await enqueue(alice, "demo.count", {"content": HOLD, "key": "k"})
        assert job["owner"] == "alice"
        done = await enqueue(alice, "demo.count", {"content": {"n": 0}})
        await wait_until(lambda: state_of(alice, done["id"]), lambda s: s == "succeeded")
        mine = await enqueue(bob, "demo.count", {"content": {"n": 0}})
        assert mine["owner"] == "bob"
        for job_id in (job["id"], done["id"]):
            for route in ROUTES:
                if "{id}" in json.dumps(route):
                    response = await bob.request(**_request(route, job_id))
                    assert response.status_code == 404, (route, response.text)
                    assert response.json()["error"]["code"] == "job_not_found"
            long_poll = await bob.get(f"/api/jobs/{job_id}", params={"wait": 1})
            assert long_poll.status_code == 404
        listed = (await bob.get("/api/jobs")).json()
        assert [item["id"] for item in listed["items"]] == [mine["id"]]
        assert (await bob.get("/api/jobs", params={"kind": "demo.count"})).json()["items"] == [
            (await bob.get(f"/api/jobs/{mine['id']}")).json()
        ]
        context = (await bob.get("/api/keys/demo.count/k")).json()
        assert (context["holder"], context["jobs"]) == (None, [])
        assert [j["id"] for j in (await alice.get("/api/keys/demo.count/k")).json()["jobs"]] == [
            job["id"]
        ]
        # A `once` key another owner's job holds is not bob's to release.
        once = await enqueue(alice, "demo.once", {"content": {"seconds": 0}, "key": "o"})
        await wait_until(lambda: state_of(alice, once["id"]), lambda s: s == "succeeded")
        release = await bob.post("/api/demo.once/release", json={"key": "o"})
        assert release.json() == {"kind": "demo.once", "key": "o", "released": False}
        again = await enqueue(alice, "demo.once", {"content": {"seconds": 0}, "key": "o"}, 409)
        assert again["error"]["code"] == "key_conflict"
        release = await alice.post("/api/demo.once/release", json={"key": "o"})
        assert release.json()["released"] is True
        # Admin sees every owner's jobs.
        every = (await ops.get("/api/jobs")).json()["items"]
        assert {item["id"] for item in every} == {job["id"], done["id"], mine["id"], once["id"]}
        assert (await ops.get(f"/api/jobs/{job['id']}/result")).status_code == 409
        # Bob's stop attempts changed nothing; alice can stop her own job.
        assert await state_of(alice, job["id"]) == "running"
        assert (await alice.post(f"/api/jobs/{job['id']}/stop")).status_code == 202
        await wait_until(lambda: state_of(alice, job["id"]), lambda s: s == "stopped")


async def test_request_ids_and_keys_of_another_owner_show_nothing_of_it() -> None:
    async with served() as callers:
        alice, bob = callers["alice"], callers["bob"]
        body = {"content": {"seconds": 30}, "key": "order-1", "requestId": "r-1"}
        job = await enqueue(alice, "demo.keyed", body)
        same_id = await enqueue(bob, "demo.keyed", {**body, "key": "other"}, 409)
        assert same_id["error"]["code"] == "request_id_conflict"
        assert set(same_id) == {"error"}
        keyed = {"content": {"seconds": 30}, "key": "order-1"}
        for policy in ("reject", "existing", "replace"):
            refused = await enqueue(bob, "demo.keyed", {**keyed, "onConflict": policy}, 409)
            assert refused["error"]["code"] == "key_conflict", policy
            assert "state" not in refused
        # Alice's own requests behave as without auth.
        assert (await enqueue(alice, "demo.keyed", body, 200))["id"] == job["id"]
        await wait_until(lambda: state_of(alice, job["id"]), lambda s: s == "running")
        assert (await state_of(alice, job["id"])) == "running"  # replace did not stop it
        listed = (await bob.get("/api/jobs")).json()["items"]
        assert listed == []


async def test_batches_events_and_long_polls_with_auth() -> None:
    async with served() as callers:
        alice, bob = callers["alice"], callers["bob"]
        keyed = await enqueue(alice, "demo.keyed", {"content": {"seconds": 30}, "key": "b-1"})
        batch = await bob.post(
            "/api/demo.keyed/enqueue-batch",
            json={"keys": ["b-1", "b-2"], "content": {"seconds": 0}, "onConflict": "existing"},
        )
        assert batch.status_code == 200, batch.text
        first, second = batch.json()["items"]
        assert (first["outcome"], first["status"]) == ("refused", None)
        assert first["error"]["code"] == "key_conflict"
        assert second["outcome"] == "created"
        assert (second["status"]["owner"], second["status"]["trigger"]["type"]) == ("bob", "batch")
        event = await bob.post("/api/events/count", json={"n": 0})
        assert event.status_code == 200, event.text
        assert event.json()["items"][0]["status"]["owner"] == "bob"
        # A long poll on one's own job answers at its next change.
        counting = await enqueue(alice, "demo.count", {"content": {"n": 3, "delay": 0.2}})
        changed = await alice.get(
            f"/api/jobs/{counting['id']}", params={"wait": 10, "since": counting["version"]}
        )
        assert changed.status_code == 200
        assert changed.json()["version"] > counting["version"]
        assert (await alice.get(f"/api/jobs/{keyed['id']}")).json()["owner"] == "alice"


async def test_the_event_stream_with_a_token() -> None:
    async with served() as callers:
        alice = callers["alice"]
        job = await enqueue(alice, "demo.count", {"content": {"n": 3, "delay": 0.1}})
        states = []
        async with alice.stream("GET", f"/api/jobs/{job['id']}/events") as stream:
            assert stream.status_code == 200
            async for line in stream.aiter_lines():
                if line.startswith("data: "):
                    status = json.loads(line[6:])
                    assert status["owner"] == "alice"
                    states.append(status["state"])
        assert states[-1] == "succeeded"
        async with callers["bob"].stream("GET", f"/api/jobs/{job['id']}/events") as other:
            assert other.status_code == 404


async def test_jobs_that_jobs_start_inherit_the_owner_and_schedules_own_none() -> None:
    async with served() as callers:
        alice, bob, ops = callers["alice"], callers["bob"], callers["ops"]
        selection = await enqueue(alice, "demo.select", {"content": {"count": 3, "prefix": "s"}})
        await wait_until(lambda: state_of(alice, selection["id"]), lambda s: s == "succeeded")
        children = (await alice.get("/api/jobs", params={"parent": selection["id"]})).json()
        assert len(children["items"]) == 3
        assert {child["owner"] for child in children["items"]} == {"alice"}
        assert (await bob.get("/api/jobs", params={"parent": selection["id"]})).json() == {
            "items": [],
            "next": None,
        }
        saga = await enqueue(alice, "demo.saga", {"content": {"steps": 2, "failAt": 2}})
        failed = await wait_until(
            lambda: alice.get(f"/api/jobs/{saga['id']}"),
            lambda r: r.json()["state"] == "failed" and r.json()["compensationId"] is not None,
        )
        compensation = await alice.get(f"/api/jobs/{failed.json()['compensationId']}")
        assert compensation.json()["owner"] == "alice"
        put = await ops.put(
            "/api/schedules/s", json={"kind": "demo.count", "content": {"n": 0}, "every": 3600}
        )
        assert put.status_code == 201, put.text
        started = await ops.post("/api/schedules/s/trigger")
        assert started.status_code == 202, started.text
        assert started.json()["owner"] is None
        assert (await alice.get(f"/api/jobs/{started.json()['id']}")).status_code == 404
        assert started.json()["id"] not in {
            j["id"] for j in (await alice.get("/api/jobs")).json()["items"]
        }


async def test_tokens_are_compared_in_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    compared: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(tokens.hmac, "compare_digest", spy)
    async with served() as callers:
        assert (await callers["bob"].get("/api/kinds")).status_code == 200
    presented = hashlib.sha256(SECRETS["bob"].encode()).digest()
    # Every configured hash, not just up to the one that matched.
    assert compared == [
        (presented, bytes.fromhex(token["hash"].removeprefix("sha256:"))) for token in TOKENS
    ]


async def test_without_tokens_auth_is_off_and_a_public_host_is_warned_about(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="asyncproc.auth"):
        demo_app(host="127.0.0.1")
        assert not caplog.records
        demo_app(host="0.0.0.0")
    assert "AUTH IS OFF" in caplog.text
    # Nothing of auth runs when it is off (no cost on the job path).
    hooks = demo_app().state.service.hooks
    assert (hooks.visibility, hooks.list_filters) == ([], [])
    assert auth.own not in hooks.before_enqueue
    assert auth.own in demo_app(tokens=TOKENS).state.service.hooks.before_enqueue
    async with api_client(demo_app()) as client:
        job = await enqueue(client, "demo.count", {"content": {"n": 0}})
        assert job["owner"] is None


@pytest.mark.parametrize(
    ("token", "key"),
    [
        ({"hash": auth.hash_token("x"), "scopes": ["read"]}, "tokens[0].name"),
        ({"name": "a", "hash": "sha256:abc", "scopes": ["read"]}, "tokens[0].hash"),
        ({"name": "a", "hash": "md5:" + "0" * 64, "scopes": ["read"]}, "tokens[0].hash"),
        ({"name": "a", "hash": auth.hash_token("x"), "scopes": []}, "tokens[0].scopes"),
        ({"name": "a", "hash": auth.hash_token("x"), "scopes": ["write"]}, "tokens[0].scopes"),
        ({"name": "a b", "hash": auth.hash_token("x"), "scopes": ["read"]}, "tokens[0].name"),
        ({"name": "a", "hash": auth.hash_token("x"), "scopes": ["read"], "x": 1}, "tokens[0].x"),
    ],
)
def test_bad_tokens_name_the_problem(token: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(environ={}, tokens=[token])
    assert caught.value.key == key


def test_a_bad_token_entry_stops_start_up_with_one_line_and_exit_2(tmp_path: Path) -> None:
    config = tmp_path / "asyncproc.toml"
    config.write_text(
        '[[tokens]]\nname = "alice"\nhash = "sha256:beef"\nscopes = ["read"]\n', encoding="utf-8"
    )
    env = {"ASYNCPROC_CONFIG": str(config), "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "app.py"], env=env, capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "tokens[0].hash" in lines[0]


def test_tokens_declared_twice_are_refused() -> None:
    first = {"name": "a", "hash": auth.hash_token("x"), "scopes": ["read"]}
    with pytest.raises(ConfigError, match="declared twice"):
        load_settings(environ={}, tokens=[first, {**first, "hash": auth.hash_token("y")}])
    with pytest.raises(ConfigError, match="same hash"):
        load_settings(environ={}, tokens=[first, {**first, "name": "b"}])


def test_the_contracts_example_hash() -> None:
    expected = "sha256:e706f2008f191924f4f6d6107fa56e8677a25a416815975bb848eb48e9694416"
    assert auth.hash_token("alice-secret-token") == expected


@pytest.mark.parametrize(
    ("method", "path", "scope"),
    [
        ("GET", "/health", None),
        ("GET", "/openapi.json", None),
        ("GET", "/static/app.js", None),
        ("POST", "/api/jobs/enqueue", "submit"),  # a kind called `jobs`
        ("POST", "/api/schedules/enqueue", "submit"),  # a kind called `schedules`
        ("HEAD", "/api/jobs/x", "read"),
        ("DELETE", "/api/jobs/x", "admin"),
        ("GET", "/api/stats", "read"),
        ("GET", "/api/jobs/x/content", "read"),
        ("GET", "/metrics", "admin"),
        ("POST", "/requests", "submit"),
        ("GET", "/v2/requests/x/status", "read"),
        ("PUT", "/v2/requests/x/status/biz-step", "admin"),
        ("POST", "/api/workers/take", "admin"),
    ],
)
def test_the_scope_table(method: str, path: str, scope: str | None) -> None:
    assert required_scope(method, path) == scope


async def test_an_allowed_origins_page_reads_the_401_and_sends_its_preflight() -> None:
    friend = "https://app.example.com"
    async with served(cors_origins=friend) as callers:
        preflight = await callers.anonymous.options(
            "/api/demo.count/enqueue",
            headers={
                "origin": friend,
                "access-control-request-method": "POST",
                "access-control-request-headers": "authorization, content-type",
            },
        )
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == friend
        refused = await callers.anonymous.post(
            "/api/demo.count/enqueue", json={"content": {"n": 0}}, headers={"origin": friend}
        )
        assert refused.status_code == 401
        # The page of the allowed origin can read why (and ask for a token).
        assert refused.headers["access-control-allow-origin"] == friend
        assert "www-authenticate" in refused.headers["access-control-expose-headers"].lower()


async def test_the_openapi_document_says_which_calls_need_a_token() -> None:
    async with api_client(demo_app(tokens=TOKENS)) as client:
        document = (await client.get("/openapi.json")).json()
    assert document["paths"]
    for path, item in document["paths"].items():
        for method, operation in item.items():
            concrete = re.sub(r"\{[^}]+\}", "x", path)
            protected = required_scope(method.upper(), concrete) is not None
            answers = set(operation["responses"])
            assert ({"401", "403"} <= answers) is protected, (method, path)
            assert ("401" in answers) is protected, (method, path)
