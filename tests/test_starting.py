"""Starting jobs through the API (API.md sections 3, 6, 10, 11) on the memory backends:
how a job started, key conflict policies, the key's context, batches, selections."""

from __future__ import annotations

import itertools
import logging
from collections.abc import AsyncIterator
from typing import Any

import anyio
import anyio.lowlevel
import httpx
import msgspec
import pytest

from asyncproc import JobContext, Registry, RetryableJobError
from asyncproc.config import load_settings
from asyncproc.errors import ConfigError
from tests.support import api_client, demo_app, wait_until
from tests.support import job_finished as finished
from tests.support import job_status as status
from tests.support import post_json as post

pytestmark = pytest.mark.anyio

test_kinds = Registry()


class Params(msgspec.Struct):
    count: int
    crash_after: int | None = None


@test_kinds.selection("test.select", target="demo.keyed", content=Params, retries=1)
async def select(ctx: JobContext, params: Params) -> AsyncIterator[tuple[str, dict[str, Any]]]:
    """Yields `count` keys; on attempt 1 crashes (retryably) after `crash_after` items."""
    for i in range(1, params.count + 1):
        if ctx.attempt == 1 and params.crash_after is not None and i > params.crash_after:
            # Let the items before the crash reach the store first, as a real crash would.
            raise RetryableJobError("crashed mid-selection")
        yield f"s-{i}", {"seconds": 0}


@test_kinds.selection(
    "test.plain-select", target="demo.once", content=Params, key=lambda p: f"plain-{p.count}"
)
def plain_select(ctx: JobContext, params: Params) -> list[tuple[str, dict[str, Any]]]:
    """A plain (not async) generator of items, with a key of its own choosing."""
    return [(f"p-{i}", {}) for i in range(params.count)]


def make_app(**overrides: Any) -> Any:
    return demo_app(test_kinds, **overrides)


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with api_client(make_app()) as client:
        yield client


# -- how a job started ----------------------------------------------------------------


async def test_a_job_enqueued_by_hand_says_so(client: httpx.AsyncClient) -> None:
    job = await post(client, "/api/demo.count/enqueue", {"content": {"n": 0}}, 202)
    assert job["trigger"] == {"type": "api", "name": None}
    assert job["parentId"] is None
    assert (job["notBefore"], job["owner"], job["compensationId"]) == (None, None, None)
    assert job["steps"] == []


# -- conflict policies ------------------------------------------------------------------


async def test_reject_is_the_default_and_names_the_holder(client: httpx.AsyncClient) -> None:
    first = await post(
        client, "/api/demo.keyed/enqueue", {"content": {"seconds": 30}, "key": "a"}, 202
    )
    refused = await post(
        client, "/api/demo.keyed/enqueue", {"content": {"seconds": 30}, "key": "a"}, 409
    )
    assert refused["error"]["code"] == "key_conflict"
    assert refused["error"]["jobId"] == first["id"]
    await post(client, f"/api/jobs/{first['id']}/stop", None, 202)


async def test_existing_answers_with_the_holder(client: httpx.AsyncClient) -> None:
    body = {"content": {"seconds": 30}, "key": "b", "onConflict": "existing"}
    first = await post(client, "/api/demo.keyed/enqueue", body, 202)
    again = await post(client, "/api/demo.keyed/enqueue", body, 200)
    assert again["id"] == first["id"]
    page = (await client.get("/api/jobs", params={"kind": "demo.keyed", "key": "b"})).json()
    assert [job["id"] for job in page["items"]] == [first["id"]]
    await client.post(f"/api/jobs/{first['id']}/stop")


async def test_replace_stops_a_running_holder_before_the_new_job_runs(
    client: httpx.AsyncClient,
) -> None:
    first = await post(
        client, "/api/demo.keyed/enqueue", {"content": {"seconds": 30}, "key": "c"}, 202
    )
    await wait_until(lambda: status(client, first["id"]), lambda s: s["state"] == "running")
    body = {"content": {"seconds": 0}, "key": "c", "onConflict": "replace"}
    second = await post(client, "/api/demo.keyed/enqueue", body, 202)
    old = await finished(client, first["id"])
    new = await finished(client, second["id"])
    assert (old["state"], new["state"]) == ("stopped", "succeeded")
    # The new job started only once the old one had ended.
    assert new["startedAt"] >= old["finishedAt"]


async def test_replace_stops_a_queued_holder_at_once(client: httpx.AsyncClient) -> None:
    # demo.count runs no key rule: use a kind with one through [kinds] config.
    app = make_app(concurrency=1, kinds={"demo.count": {"unique": "active"}})
    async with api_client(app) as other:
        blocker = await post(other, "/api/demo.count/enqueue", {"content": {"n": 300}}, 202)
        queued = await post(
            other, "/api/demo.count/enqueue", {"content": {"n": 1}, "key": "q"}, 202
        )
        body = {"content": {"n": 0}, "key": "q", "onConflict": "replace"}
        replacing = await post(other, "/api/demo.count/enqueue", body, 202)
        assert (await status(other, queued["id"]))["state"] == "stopped"
        await post(other, f"/api/jobs/{blocker['id']}/stop", None, 202)
        assert (await finished(other, replacing["id"]))["state"] == "succeeded"


async def test_replace_under_once_releases_a_succeeded_holder(client: httpx.AsyncClient) -> None:
    first = await post(client, "/api/demo.once/enqueue", {"content": {}, "key": "d"}, 202)
    assert (await finished(client, first["id"]))["state"] == "succeeded"
    await post(client, "/api/demo.once/enqueue", {"content": {}, "key": "d"}, 409)
    body = {"content": {}, "key": "d", "onConflict": "replace"}
    second = await post(client, "/api/demo.once/enqueue", body, 202)
    assert (await finished(client, second["id"]))["state"] == "succeeded"


async def test_a_bad_policy_is_422(client: httpx.AsyncClient) -> None:
    body = {"content": {}, "key": "e", "onConflict": "sometimes"}
    answer = await post(client, "/api/demo.keyed/enqueue", body, 422)
    assert "onConflict" in answer["error"]["message"]


async def test_the_kind_policy_comes_from_config() -> None:
    app = make_app(kinds={"demo.keyed": {"on_conflict": "existing"}})
    async with api_client(app) as client:
        body = {"content": {"seconds": 30}, "key": "f"}
        first = await post(client, "/api/demo.keyed/enqueue", body, 202)
        assert (await post(client, "/api/demo.keyed/enqueue", body, 200))["id"] == first["id"]
        await client.post(f"/api/jobs/{first['id']}/stop")


# -- the key's context ----------------------------------------------------------------------


async def test_key_context_shows_the_holder_and_recent_jobs(client: httpx.AsyncClient) -> None:
    empty = (await client.get("/api/keys/demo.keyed/never")).json()
    assert empty == {
        "kind": "demo.keyed",
        "key": "never",
        "rule": "active",
        "holder": None,
        "jobs": [],
    }
    done = await post(client, "/api/demo.keyed/enqueue", {"content": {}, "key": "g"}, 202)
    await finished(client, done["id"])
    holder = await post(
        client, "/api/demo.keyed/enqueue", {"content": {"seconds": 30}, "key": "g"}, 202
    )
    context = (await client.get("/api/keys/demo.keyed/g")).json()
    assert context["rule"] == "active"
    assert context["holder"]["id"] == holder["id"]
    assert [job["id"] for job in context["jobs"]] == [holder["id"], done["id"]]
    await client.post(f"/api/jobs/{holder['id']}/stop")
    assert (await client.get("/api/keys/no.such/g")).status_code == 404
    assert (await client.get("/api/keys/demo.keyed/" + "x" * 257)).status_code == 422


# -- batches ------------------------------------------------------------------------------------


async def test_batch_gives_one_outcome_per_item_in_order(client: httpx.AsyncClient) -> None:
    known = await post(
        client, "/api/demo.count/enqueue", {"content": {"n": 0}, "requestId": "known-1"}, 202
    )
    body = {
        "items": [
            {"content": {"n": 0}},
            {"content": {"n": "ten"}},
            {"content": {"n": 0}, "requestId": "known-1"},
            {"requestId": "no-content"},
            {"content": {"n": 1, "delay": 0}, "requestId": "b-2"},
        ]
    }
    answer = await post(client, "/api/demo.count/enqueue-batch", body, 200)
    outcomes = [item["outcome"] for item in answer["items"]]
    assert outcomes == ["created", "refused", "existing", "refused", "created"]
    created = answer["items"][0]
    assert created["error"] is None
    assert created["status"]["trigger"] == {"type": "batch", "name": None}
    bad = answer["items"][1]
    assert bad["status"] is None
    assert bad["error"]["code"] == "invalid_content"
    assert answer["items"][2]["status"]["id"] == known["id"]
    assert answer["items"][3]["error"]["code"] == "invalid"
    for item in (answer["items"][0], answer["items"][4]):
        assert (await finished(client, item["status"]["id"]))["state"] == "succeeded"


async def test_batch_by_keys_applies_the_key_rule_per_item(client: httpx.AsyncClient) -> None:
    holder = await post(
        client, "/api/demo.keyed/enqueue", {"content": {"seconds": 30}, "key": "k2"}, 202
    )
    body = {"keys": ["k1", "k2", "k3", "k1"], "content": {"seconds": 0}}
    answer = await post(client, "/api/demo.keyed/enqueue-batch", body, 200)
    outcomes = [item["outcome"] for item in answer["items"]]
    # The same key twice in one batch: the key rule holds inside a batch too.
    assert outcomes == ["created", "refused", "created", "refused"]
    assert answer["items"][1]["error"] == {
        "code": "key_conflict",
        "message": answer["items"][1]["error"]["message"],
        "jobId": holder["id"],
    }
    existing = await post(
        client, "/api/demo.keyed/enqueue-batch", {**body, "onConflict": "existing"}, 200
    )
    assert existing["items"][1] == {
        "outcome": "existing",
        "status": existing["items"][1]["status"],
        "error": None,
    }
    assert existing["items"][1]["status"]["id"] == holder["id"]
    await client.post(f"/api/jobs/{holder['id']}/stop")


@pytest.mark.parametrize(
    ("body", "expect"),
    [
        ({"items": []}, 422),
        ({"items": [{"content": {}}] * 1001}, 422),
        ({"items": [{"content": {}}], "keys": ["a"], "content": {}}, 422),
        ({"keys": ["a"]}, 422),
        ({}, 422),
        ([1, 2], 400),
    ],
)
async def test_a_bad_batch_queues_nothing(
    client: httpx.AsyncClient, body: Any, expect: int
) -> None:
    await post(client, "/api/demo.count/enqueue-batch", body, expect)
    assert (await client.get("/api/jobs")).json()["items"] == []


async def test_a_batch_of_a_thousand(client: httpx.AsyncClient) -> None:
    body = {"keys": [f"many-{i}" for i in range(1000)], "content": {"seconds": 0}}
    answer = await post(client, "/api/demo.keyed/enqueue-batch", body, 200)
    assert [item["outcome"] for item in answer["items"]] == ["created"] * 1000
    assert (await client.post("/api/nope/enqueue-batch", json=body)).status_code == 404


# -- selections -----------------------------------------------------------------------------------


async def children(client: httpx.AsyncClient, parent: str) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        params = {"parent": parent, "limit": 200, **({"cursor": cursor} if cursor else {})}
        page = (await client.get("/api/jobs", params=params)).json()
        items += page["items"]
        cursor = page["next"]
        if cursor is None:
            return items


async def test_a_selection_starts_one_job_per_item(client: httpx.AsyncClient) -> None:
    job = await post(client, "/api/demo.select/enqueue", {"content": {"count": 250}}, 202)
    assert job["key"] == "demo.select"  # its own key: two runs never overlap
    done = await finished(client, job["id"])
    assert done["state"] == "succeeded"
    assert done["progress"]["percent"] == 100.0
    result = (await client.get(f"/api/jobs/{job['id']}/result")).json()
    assert result == {"created": 250, "existing": 0, "refused": 0}
    started = await children(client, job["id"])
    assert len(started) == 250
    assert {child["key"] for child in started} == {f"k-{i}" for i in range(1, 251)}
    assert all(
        child["trigger"] == {"type": "selection", "name": "demo.select"} for child in started
    )
    assert all(child["parentId"] == job["id"] for child in started)


async def test_a_selection_run_again_starts_no_item_twice(client: httpx.AsyncClient) -> None:
    job = await post(
        client, "/api/test.select/enqueue", {"content": {"count": 150, "crash_after": 120}}, 202
    )
    done = await finished(client, job["id"])
    assert (done["state"], done["attempt"]) == ("succeeded", 2)
    result = (await client.get(f"/api/jobs/{job['id']}/result")).json()
    # Attempt 1 stored the first batch of 100 before it crashed; attempt 2 found them.
    assert result == {"created": 50, "existing": 100, "refused": 0}
    assert len(await children(client, job["id"])) == 150


async def test_two_runs_of_one_selection_never_overlap(client: httpx.AsyncClient) -> None:
    first = await post(client, "/api/demo.select/enqueue", {"content": {"count": 10000}}, 202)
    second = await post(client, "/api/demo.select/enqueue", {"content": {"count": 1}}, 409)
    assert second["error"]["jobId"] == first["id"]
    await client.post(f"/api/jobs/{first['id']}/stop")
    assert (await finished(client, first["id"]))["state"] == "stopped"


async def test_a_plain_generator_selection_with_its_own_key(client: httpx.AsyncClient) -> None:
    job = await post(client, "/api/test.plain-select/enqueue", {"content": {"count": 3}}, 202)
    assert job["key"] == "plain-3"
    await finished(client, job["id"])
    result = (await client.get(f"/api/jobs/{job['id']}/result")).json()
    assert result == {"created": 3, "existing": 0, "refused": 0}


# -- configuration ----------------------------------------------------------------------------------


async def test_kind_overrides_from_config() -> None:
    app = make_app(kinds={"demo.count": {"processing_timeout": "300ms", "retention": "1s"}})
    async with api_client(app) as client:
        job = await post(client, "/api/demo.count/enqueue", {"content": {"n": 100}}, 202)
        done = await finished(client, job["id"])
        assert (done["state"], done["error"]["errorId"]) == ("failed", "timeout")


@pytest.mark.parametrize(
    ("kinds", "key"),
    [
        ({"no.such": {"retries": 1}}, "kinds.no.such"),
        ({"demo.count": {"retries": -1}}, "kinds.demo.count.retries"),
        ({"demo.count": {"rate_limit": "fast"}}, "kinds.demo.count.rate_limit"),
        ({"demo.count": {"unique": "twice"}}, "kinds.demo.count.unique"),
        ({"demo.count": {"on_conflict": "maybe"}}, "kinds.demo.count.on_conflict"),
        ({"demo.count": {"retry_delay": "soon"}}, "kinds.demo.count.retry_delay"),
    ],
)
def test_bad_kind_tables_name_the_key(kinds: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        make_app(kinds=kinds)
    assert caught.value.key == key


def test_an_unknown_kind_option_is_refused(tmp_path: Any) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[kinds."demo.count"]\ncolour = "red"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(path, environ={})
    assert "colour" in str(caught.value)


def test_unknown_variables_are_reported(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="asyncproc.config"):
        load_settings(environ={"ASYNCPROC_CONCURENCY": "4", "ASYNCPROC_PORT": "8001"})
    assert "ASYNCPROC_CONCURENCY" in caplog.text
    assert "ASYNCPROC_PORT" not in caplog.text


async def test_stop_while_waiting_for_the_replaced_holder(client: httpx.AsyncClient) -> None:
    # A blocking-ish holder: demo.keyed honours stop quickly, so hold it with many replaces.
    first = await post(
        client, "/api/demo.keyed/enqueue", {"content": {"seconds": 30}, "key": "w"}, 202
    )
    await wait_until(lambda: status(client, first["id"]), lambda s: s["state"] == "running")
    ids = []
    for _ in range(5):
        body = {"content": {"seconds": 0.2}, "key": "w", "onConflict": "replace"}
        ids.append((await post(client, "/api/demo.keyed/enqueue", body, 202))["id"])
        await anyio.lowlevel.checkpoint()
    finals = [await finished(client, job_id) for job_id in [first["id"], *ids]]
    assert [job["state"] for job in finals][-1] == "succeeded"
    ran = sorted(
        (job["startedAt"], job["finishedAt"]) for job in finals if job["startedAt"] is not None
    )
    # No two of them ran at the same time.
    for (_, end), (start, _) in itertools.pairwise(ran):
        assert start >= end
