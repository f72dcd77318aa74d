"""Status messages on the callback exchange (API.md section 7), through a real app."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import aiormq
import httpx
import msgspec
import pytest

from asyncproc.backends.memory import MemoryStateStore
from asyncproc.backends.rabbitmq import RabbitMQQueue
from asyncproc.config import load_settings
from asyncproc.model import Job, JobState
from asyncproc.registry import Registry, load_plugins
from asyncproc.server import create_app
from tests.support import live_server, wait_until

pytestmark = [pytest.mark.rabbitmq, pytest.mark.anyio]


class Heard(msgspec.Struct):
    """One message read off the exchange."""

    routing_key: str
    content_type: str | None
    status: dict[str, Any]


@asynccontextmanager
async def serving(
    amqp_url: str, prefix: str, registry: Registry | None = None
) -> AsyncIterator[tuple[httpx.AsyncClient, list[Heard]]]:
    """An app (with `registry`'s kinds and hooks) publishing to a fresh callback exchange,
    and what a queue bound to it ("#") hears."""
    exchange = f"{prefix}events"
    settings = load_settings(
        environ={}, callback_exchange=exchange, amqp_url=amqp_url, key_prefix=prefix
    )
    queue = RabbitMQQueue(amqp_url, prefix=prefix)
    app = create_app(settings, registry=registry, store=MemoryStateStore(), queue=queue)
    heard: list[Heard] = []

    def on_message(message: aiormq.abc.DeliveredMessage) -> None:
        heard.append(
            Heard(
                routing_key=message.routing_key or "",
                content_type=message.header.properties.content_type,
                status=msgspec.json.decode(message.body),
            )
        )

    try:
        async with live_server(app) as base_url, aiormq.connect(amqp_url) as connection:
            # The app declared the exchange at start-up.
            channel = await connection.channel()
            declared = await channel.queue_declare(exclusive=True, auto_delete=True)
            assert declared.queue is not None
            await channel.queue_bind(declared.queue, exchange, routing_key="#")
            await channel.basic_consume(declared.queue, on_message, no_ack=True)
            async with httpx.AsyncClient(base_url=base_url, timeout=30) as client:
                yield client, heard
    finally:
        async with RabbitMQQueue(amqp_url, prefix=prefix) as cleanup:
            await cleanup.start()
            await cleanup.delete(["default"])
            async with aiormq.connect(amqp_url) as connection:
                channel = await connection.channel()
                await channel.exchange_delete(exchange)


@pytest.fixture
async def served(
    amqp_url: str, unique_prefix: str, anyio_backend: str
) -> AsyncIterator[tuple[httpx.AsyncClient, list[Heard]]]:
    """The demo app on a fresh callback exchange, and what a queue bound to it hears."""
    async with serving(amqp_url, unique_prefix) as served:
        yield served


async def finished(heard: list[Heard], job_id: str) -> list[dict[str, Any]]:
    """The statuses heard for `job_id` once one of them is terminal (fails after 10 s)."""

    async def statuses() -> list[dict[str, Any]]:
        return [h.status for h in heard if h.status["id"] == job_id]

    return await wait_until(
        statuses, lambda got: any(s["state"] in {"succeeded", "failed", "stopped"} for s in got)
    )


async def test_every_state_and_biz_step_change_is_published_in_order(
    served: tuple[httpx.AsyncClient, list[Heard]],
) -> None:
    client, heard = served
    silent = await client.post("/api/demo.count/enqueue", json={"content": {"n": 1, "delay": 0}})
    assert silent.status_code == 202
    answer = await client.post(
        "/api/demo.count/enqueue",
        json={"content": {"n": 3, "delay": 0.01}, "callbackRouting": "orders.42"},
    )
    assert answer.status_code == 202
    job_id = answer.json()["id"]
    statuses = await finished(heard, job_id)
    steps = [(s["state"], s["progress"]["bizStep"]) for s in statuses]
    assert steps == [
        ("queued", None),
        ("running", None),
        ("running", "counting"),
        ("succeeded", "counting"),
    ]
    versions = [s["version"] for s in statuses]
    assert versions == sorted(set(versions))
    final = await client.get(f"/api/jobs/{job_id}")
    assert statuses[-1] == final.json()
    assert {(h.routing_key, h.content_type) for h in heard} == {("orders.42", "application/json")}
    # The job without a callbackRouting published nothing.
    assert {h.status["id"] for h in heard} == {job_id}


async def test_failure_is_published_without_the_traceback(
    served: tuple[httpx.AsyncClient, list[Heard]],
) -> None:
    client, heard = served
    answer = await client.post(
        "/api/demo.fail/enqueue",
        json={"content": {"mode": "unhandled", "message": "boom"}, "callbackRouting": "fails"},
    )
    job_id = answer.json()["id"]
    statuses = await finished(heard, job_id)
    assert [s["state"] for s in statuses] == ["queued", "running", "failed"]
    error = statuses[-1]["error"]
    assert (error["errorId"], error["techMsg"], error["techInfo"]) == ("unhandled", "boom", None)


async def test_a_plugin_gives_its_kind_a_callback_message_of_its_own(
    amqp_url: str, unique_prefix: str
) -> None:
    # The hook layer's callback shapes: demo.echo's changes are told in this plugin's
    # words (and only its finish), demo.count's with the status as ever.
    async def shape(before: Job | None, after: Job) -> bytes | None:
        if after.state is not JobState.SUCCEEDED:
            return None
        return msgspec.json.encode({"id": after.id, "finishedWith": after.result_mime})

    registry = load_plugins(["asyncproc.plugins.demo"])
    registry.hooks.callback_shapes["demo.echo"] = shape
    async with serving(amqp_url, unique_prefix, registry) as (client, heard):
        body = {"content": {"a": 1}, "callbackRouting": "echoes"}
        echo = (await client.post("/api/demo.echo/enqueue", json=body)).json()["id"]
        body = {"content": {"n": 0}, "callbackRouting": "counts"}
        count = (await client.post("/api/demo.count/enqueue", json=body)).json()["id"]
        statuses = await finished(heard, count)
        assert statuses[-1]["state"] == "succeeded"

        async def echoes() -> list[Heard]:
            return [h for h in heard if h.routing_key == "echoes"]

        told = await wait_until(echoes, lambda got: len(got) >= 1)
        assert [h.status for h in told] == [{"id": echo, "finishedWith": "application/json"}]
