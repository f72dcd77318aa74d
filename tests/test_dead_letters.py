"""Dead letters (API.md section 13): jobs lost too often, compensations that failed
for good and trigger messages that could not become jobs are listed; requeue runs
them again, delete forgets them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import aiormq
import anyio
import httpx
import msgspec
import pytest
from pamqp import commands as spec
from starlette.applications import Starlette

from asyncproc import JobContext, JobError, Registry
from asyncproc.backends.memory import MemoryQueue
from asyncproc.config import load_settings
from asyncproc.lifecycle import Start
from asyncproc.plugins.dead_letter_book import PAYLOAD_MAX, DeadLetterBook
from asyncproc.plugins.triggers import request_id
from asyncproc.registry import Compensation
from asyncproc.server import create_app
from asyncproc.service import EnqueueRequest, JobService
from tests.support import api_client, job_finished, live_server, post_json, wait_until

pytestmark = pytest.mark.anyio

kinds = Registry()


class Nap(msgspec.Struct):
    seconds: float = 0.0


@kinds.job("nap", content=Nap)
async def nap(ctx: JobContext, content: Nap) -> dict[str, int]:
    """Sleeps `seconds`; answers the attempt it ran on."""
    await anyio.sleep(content.seconds)
    return {"attempt": ctx.attempt}


async def undo(ctx: JobContext, compensation: Compensation) -> None:
    """A compensation that cannot undo anything."""
    raise JobError("cannot undo", tech_msg="the ledger is closed", error_id="undo_failed")


@kinds.job("saga", content=Nap, compensate=undo)
async def saga(ctx: JobContext, content: Nap) -> None:
    """Fails for good, so its compensation runs."""
    raise JobError("booking failed", error_id="booking_failed")


def make_app(**settings: Any) -> Starlette:
    return create_app(load_settings(environ={}, max_deliveries=1, **settings), registry=kinds)


async def dead_letters(client: httpx.AsyncClient, **params: Any) -> dict[str, Any]:
    response = await client.get("/api/dead-letters", params=params)
    assert response.status_code == 200, response.text
    page: dict[str, Any] = response.json()
    return page


async def listed(client: httpx.AsyncClient, count: int) -> list[dict[str, Any]]:
    """The dead letters once there are `count` of them."""
    page = await wait_until(lambda: dead_letters(client), lambda p: len(p["items"]) >= count)
    items: list[dict[str, Any]] = page["items"]
    return items


async def lose_job(service: JobService, kind: str = "nap", key: str | None = None) -> str:
    """A job whose worker was lost (running, its message back in the queue): with
    `max_deliveries = 1` the worker fails it as `dead_letter`. Its id."""
    content = msgspec.Raw(msgspec.json.encode({"seconds": 0}))
    request = EnqueueRequest(content=content, key=key)
    job, _ = await service.enqueue(kind, request, publish=False)
    await service.transition(job.id, Start())
    queue = service.queue
    assert isinstance(queue, MemoryQueue)
    queue.put_back(job.id, "default")
    return job.id


async def test_a_job_lost_too_often_is_listed_and_requeue_runs_it_again() -> None:
    app = make_app()
    async with api_client(app) as client:
        job_id = await lose_job(app.state.service)
        failed = await job_finished(client, job_id)
        assert failed["error"]["errorId"] == "dead_letter"
        [letter] = await listed(client, 1)
        assert letter["source"] == "job"
        assert letter["jobId"] == job_id
        assert letter["trigger"] is None
        assert "dead_letter" in letter["reason"]
        assert letter["at"] == failed["finishedAt"]
        assert msgspec.json.decode(letter["payload"]) == {"seconds": 0}
        assert len(letter["id"]) == 32

        response = await client.post(f"/api/dead-letters/{letter['id']}/requeue")
        assert response.status_code == 202, response.text
        again = response.json()
        assert again["id"] == job_id
        assert again["state"] in {"queued", "running", "succeeded"}
        assert response.headers["location"] == f"/api/jobs/{job_id}"
        done = await job_finished(client, job_id)
        assert done["state"] == "succeeded"
        assert done["attempt"] == 2  # the lost attempt still counts
        assert (await client.get(f"/api/jobs/{job_id}/result")).json() == {"attempt": 2}
        assert (await dead_letters(client))["items"] == []
        # Requeued means gone from the list: a second requeue finds nothing.
        again_response = await client.post(f"/api/dead-letters/{letter['id']}/requeue")
        assert again_response.status_code == 404


@kinds.job("keyed-nap", content=Nap, unique="active")
async def keyed_nap(ctx: JobContext, content: Nap) -> None:
    """One per key; sleeps `seconds`."""
    await anyio.sleep(content.seconds)


async def test_a_keyed_dead_letter_takes_its_key_again_or_is_refused() -> None:
    app = make_app()
    async with api_client(app) as client:
        job_id = await lose_job(app.state.service, "keyed-nap", key="k")
        [letter] = await listed(client, 1)
        # Another job took the free key: the requeue is refused, naming it.
        other = await post_json(
            client, "/api/keyed-nap/enqueue", {"content": {"seconds": 30}, "key": "k"}, 202
        )
        response = await client.post(f"/api/dead-letters/{letter['id']}/requeue")
        assert response.status_code == 409, response.text
        assert response.json()["error"]["jobId"] == other["id"]
        assert (await dead_letters(client))["items"] != []
        # Once it has ended, the requeue takes the key again: a new job for it is refused.
        await client.post(f"/api/jobs/{other['id']}/stop")
        await job_finished(client, other["id"])
        response = await client.post(f"/api/dead-letters/{letter['id']}/requeue")
        assert response.status_code == 202, response.text
        holder = (await client.get("/api/keys/keyed-nap/k")).json()["holder"]
        assert holder is None or holder["id"] == job_id
        assert (await job_finished(client, job_id))["state"] == "succeeded"


async def test_delete_forgets_a_dead_letter_and_the_job_stays_failed() -> None:
    app = make_app()
    async with api_client(app) as client:
        job_id = await lose_job(app.state.service)
        [letter] = await listed(client, 1)
        response = await client.delete(f"/api/dead-letters/{letter['id']}")
        assert response.status_code == 204
        assert (await dead_letters(client))["items"] == []
        assert (await job_finished(client, job_id))["state"] == "failed"
        again = await client.delete(f"/api/dead-letters/{letter['id']}")
        assert again.status_code == 404
        assert again.json()["error"]["code"] == "not_found"


async def test_unknown_dead_letters_answer_404() -> None:
    async with api_client(make_app()) as client:
        for response in (
            await client.post("/api/dead-letters/nope/requeue"),
            await client.delete("/api/dead-letters/nope"),
        ):
            assert response.status_code == 404
            assert response.json()["error"]["code"] == "not_found"


async def test_a_compensation_that_fails_for_good_is_a_dead_letter() -> None:
    async with api_client(make_app()) as client:
        job = await post_json(client, "/api/saga/enqueue", {"content": {}}, 202)
        failed = await job_finished(client, job["id"])
        undo_id = failed["compensationId"]
        assert undo_id is not None
        undone = await job_finished(client, undo_id)
        assert undone["state"] == "failed"
        [letter] = await listed(client, 1)
        assert letter["source"] == "job"
        assert letter["jobId"] == undo_id
        assert letter["reason"] == "undo_failed: the ledger is closed"
        # The saga's own failure is not a dead letter: its compensation answers for it.
        assert all(item["jobId"] != job["id"] for item in (await dead_letters(client))["items"])


async def test_a_failed_compensation_can_be_requeued() -> None:
    async with api_client(make_app()) as client:
        job = await post_json(client, "/api/saga/enqueue", {"content": {}}, 202)
        undo_id = (await job_finished(client, job["id"]))["compensationId"]
        await job_finished(client, undo_id)
        [letter] = await listed(client, 1)
        response = await client.post(f"/api/dead-letters/{letter['id']}/requeue")
    # Asserted once the server is down: a failure inside would leave its socket open.
    assert response.status_code == 202, response.text
    assert response.json()["id"] == undo_id


async def test_pages_are_newest_first_and_hold_each_letter_once() -> None:
    app = make_app()
    book = DeadLetterBook(app.state.service.store)
    async with api_client(app) as client:
        made = [
            (await book.record_message("orders", f'{{"n": {i}}}'.encode(), f"refused {i}")).id
            for i in range(7)
        ]
        seen: list[dict[str, Any]] = []
        page = await dead_letters(client, limit=3)
        pages = 1
        while True:
            assert len(page["items"]) <= 3
            seen += page["items"]
            if page["next"] is None:
                break
            page = await dead_letters(client, limit=3, cursor=page["next"])
            pages += 1
        assert pages == 3
        assert sorted(letter["id"] for letter in seen) == sorted(made)
        order = [(datetime.fromisoformat(letter["at"]), letter["id"]) for letter in seen]
        assert order == sorted(order, reverse=True)
        assert {letter["source"] for letter in seen} == {"trigger"}

        bad = await client.get("/api/dead-letters", params={"cursor": "not-a-cursor"})
        assert bad.status_code == 400
        too_few = await client.get("/api/dead-letters", params={"limit": 0})
        assert too_few.status_code == 422
        assert (
            too_few.json()["error"]["message"] == "limit: expected an integer of 1 or more, got 0"
        )


async def test_a_big_message_shows_its_first_64_kib() -> None:
    app = make_app()
    book = DeadLetterBook(app.state.service.store)
    body = b'{"blob": "' + "é".encode() * PAYLOAD_MAX + b'"}'
    letter = await book.record_message("orders", body, "refused", message_id="m-1")
    async with api_client(app) as client:
        [shown] = (await dead_letters(client))["items"]
    assert shown["id"] == letter.id
    payload = shown["payload"]
    assert len(payload.encode()) <= PAYLOAD_MAX
    assert body.decode().startswith(payload)
    stored = await book.get(letter.id)
    assert stored is not None
    assert stored.message_body() == body  # kept whole for a requeue


# -- trigger messages (RabbitMQ) ----------------------------------------------------------


class Broker:
    """The app's client, a channel to publish on, and the names of one test."""

    def __init__(self, client: httpx.AsyncClient, channel: Any, prefix: str) -> None:
        self.client = client
        self.channel = channel
        self.queue = f"{prefix}orders"
        self.dead = f"{prefix}triggers.dead"

    async def send(self, body: bytes, message_id: str) -> None:
        await self.channel.basic_publish(
            body,
            routing_key=self.queue,
            properties=spec.Basic.Properties(delivery_mode=2, message_id=message_id),
        )


@pytest.fixture
async def broker(amqp_url: str, unique_prefix: str) -> AsyncIterator[Broker]:
    """A memory node whose trigger `orders` starts `demo.keyed` jobs (one per key)."""
    trigger = {
        "name": "orders",
        "kind": "demo.keyed",
        "queue": f"{unique_prefix}orders",
        "key_field": "orderId",
        "content_field": "hold",
    }
    settings = load_settings(
        environ={}, triggers=[trigger], amqp_url=amqp_url, key_prefix=unique_prefix
    )
    app = create_app(settings)
    try:
        async with live_server(app) as base_url, aiormq.connect(amqp_url) as connection:
            channel = await connection.channel()
            async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
                yield Broker(client, channel, unique_prefix)
    finally:
        async with aiormq.connect(amqp_url) as connection:
            channel = await connection.channel()
            await channel.queue_delete(f"{unique_prefix}orders")
            await channel.queue_delete(f"{unique_prefix}triggers.dead")


@pytest.mark.rabbitmq
async def test_a_refused_message_is_listed_and_requeue_offers_it_again(broker: Broker) -> None:
    client = broker.client
    holder = b'{"orderId": "42", "hold": {"seconds": 30}}'
    second = b'{"orderId": "42", "hold": {"seconds": 0}}'
    await broker.send(holder, "m-1")
    await broker.send(second, "m-2")  # key 42 is held: refused, dead-lettered
    await broker.send(b"not json {", "m-3")
    letters = await listed(client, 2)
    by_payload = {letter["payload"]: letter for letter in letters}
    refused = by_payload[second.decode()]
    assert refused["source"] == "trigger"
    assert refused["trigger"] == "orders"
    assert refused["jobId"] is None
    assert "key_conflict" in refused["reason"]
    garbage = by_payload["not json {"]
    assert "not JSON" in garbage["reason"]
    # RabbitMQ's dead-letter queue still gets them too.
    declared = await broker.channel.queue_declare(broker.dead, passive=True)
    assert declared.message_count == 2

    # Still not JSON: refused again, and it stays listed.
    response = await client.post(f"/api/dead-letters/{garbage['id']}/requeue")
    assert response.status_code == 409
    assert "not JSON" in response.json()["error"]["message"]

    # Once the key is free the refused message makes its job.
    await post_json(client, f"/api/jobs/{request_id('orders', 'm-1')}/stop", {}, 202)
    await wait_until(
        lambda: client.get(f"/api/jobs/{request_id('orders', 'm-1')}"),
        lambda r: r.json()["state"] == "stopped",
    )
    response = await client.post(f"/api/dead-letters/{refused['id']}/requeue")
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["id"] == request_id("orders", "m-2")
    assert job["trigger"] == {"type": "message", "name": "orders"}
    assert job["key"] == "42"
    assert (await job_finished(client, job["id"]))["state"] == "succeeded"
    remaining = (await dead_letters(client))["items"]
    assert [letter["id"] for letter in remaining] == [garbage["id"]]
