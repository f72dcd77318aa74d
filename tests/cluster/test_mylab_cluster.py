"""MyLab.AsyncProcessor API v2 on a real node (Redis + RabbitMQ), with a MyLab-style
processor in its own process (tests/mylab_processor.py: httpx + aiormq, no asyncproc)
consuming `mylab_queue`, and MyLab's callback messages read off the callback exchange.
Every answer and message is checked against its schema (tests/mylab_schemas.py)."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiormq
import anyio
import httpx
import pytest

from asyncproc.backends.rabbitmq import RabbitMQQueue
from tests.cluster import forget_cluster
from tests.mylab_schemas import (
    CALLBACK_MESSAGE,
    QUEUE_MESSAGE,
    REQUEST_DETAILS,
    REQUEST_STATUS,
    checked,
)
from tests.support import ROOT, NodeProcess, wait_until

pytestmark = [pytest.mark.anyio, pytest.mark.cluster]

KIND = "mylab.req"


@dataclass
class Setup:
    """The node's client, what the callback queue heard, where the processors write, and
    the processor processes."""

    client: httpx.AsyncClient
    heard: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    seen_path: Path = Path()
    processors: list[subprocess.Popen[bytes]] = field(default_factory=list)
    # Starts one more processor process (it joins `processors`).
    start_processor: Callable[[], subprocess.Popen[bytes]] | None = None


@asynccontextmanager
async def mylab_node(
    redis_url: str, amqp_url: str, prefix: str, tmp_path: Path
) -> AsyncIterator[Setup]:
    """An `api` node serving MyLab's API over the external kind `mylab.req`, a MyLab
    processor process on its queue, and a queue bound to the callback exchange."""
    mylab_queue = f"{prefix}mylab.requests"
    exchange = f"{prefix}callbacks"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "ASYNCPROC_ROLE": "api",
        "ASYNCPROC_STATE": "redis",
        "ASYNCPROC_QUEUE": "rabbitmq",
        "ASYNCPROC_REDIS_URL": redis_url,
        "ASYNCPROC_AMQP_URL": amqp_url,
        "ASYNCPROC_KEY_PREFIX": prefix,
        "ASYNCPROC_EXTERNAL_KINDS": KIND,
        "ASYNCPROC_MYLAB": "true",
        "ASYNCPROC_MYLAB_KIND": KIND,
        "ASYNCPROC_MYLAB_QUEUE": mylab_queue,
        "ASYNCPROC_CALLBACK_EXCHANGE": exchange,
        "ASYNCPROC_PROCESSING_TIMEOUT": "20s",
        "ASYNCPROC_SHUTDOWN_GRACE": "1",
    }
    node = NodeProcess(env, tmp_path, "api")
    setup: Setup | None = None
    try:
        node.wait_healthy()  # it declared the callback exchange and the MyLab queue
        setup = Setup(httpx.AsyncClient(base_url=node.url, timeout=30))
        setup.seen_path = tmp_path / "seen.jsonl"
        setup.seen_path.touch()
        async with aiormq.connect(amqp_url) as connection, setup.client:
            channel = await connection.channel()
            declared = await channel.queue_declare(exclusive=True, auto_delete=True)
            assert declared.queue is not None
            await channel.queue_bind(declared.queue, exchange, routing_key="#")

            def on_message(message: aiormq.abc.DeliveredMessage) -> None:
                setup.heard.append((message.routing_key or "", json.loads(message.body)))

            await channel.basic_consume(declared.queue, on_message, no_ack=True)

            def another_processor() -> subprocess.Popen[bytes]:
                process = start_processor(
                    node.url, amqp_url, mylab_queue, setup.seen_path, tmp_path
                )
                setup.processors.append(process)
                return process

            setup.start_processor = another_processor
            another_processor()
            yield setup
    finally:
        for process in setup.processors if setup is not None else ():
            process.kill()
            process.wait()
        node.stop()
        await forget_cluster(redis_url, amqp_url, prefix)
        queue = RabbitMQQueue(amqp_url, prefix=prefix)
        await queue.delete([f"ext.{KIND}"])
        await queue.aclose()
        async with aiormq.connect(amqp_url) as connection:
            channel = await connection.channel()
            await channel.queue_delete(mylab_queue)
            await channel.exchange_delete(exchange)


def start_processor(
    url: str, amqp_url: str, queue: str, seen_path: Path, log_dir: Path
) -> subprocess.Popen[bytes]:
    """The MyLab processor process, its output in `log_dir`/processor.log."""
    with (log_dir / "processor.log").open("ab") as log:
        return subprocess.Popen(
            [sys.executable, "tests/mylab_processor.py"],
            cwd=ROOT,
            env={
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "MYLAB_URL": url,
                "MYLAB_AMQP_URL": amqp_url,
                "MYLAB_QUEUE": queue,
                "MYLAB_SEEN": str(seen_path),
            },
            stdout=log,
            stderr=subprocess.STDOUT,
        )


async def create(client: httpx.AsyncClient, content: dict[str, Any]) -> str:
    answer = await client.post(
        "/v2/requests",
        json={"content": content, "callbackRouting": "client1"},
        headers={"X-Client-Name": "mylab-test", "Authorization": "Bearer secret"},
    )
    assert answer.status_code == 200, answer.text
    return answer.text


async def completed(client: httpx.AsyncClient, req_id: str) -> dict[str, Any]:
    """The request's status once completed, checked against RequestStatus."""

    async def status() -> dict[str, Any]:
        answer = await client.get(f"/v2/requests/{req_id}/status")
        assert answer.status_code == 200, answer.text
        body: dict[str, Any] = checked(answer.json(), REQUEST_STATUS)
        return body

    return await wait_until(status, lambda s: s["processStep"] == "completed", timeout=20)


async def callbacks(setup: Setup, req_id: str) -> list[dict[str, Any]]:
    """The callback messages of `req_id` once its Completed one came (checked)."""

    async def mine() -> list[dict[str, Any]]:
        return [body for _, body in setup.heard if body.get("reqId") == req_id]

    got = await wait_until(
        mine, lambda got: any(m.get("newProcStep") == "Completed" for m in got), timeout=20
    )
    for message in got:
        checked(message, CALLBACK_MESSAGE)
    assert {key for key, body in setup.heard if body.get("reqId") == req_id} == {"client1"}
    return got


async def test_a_mylab_processor_runs_mylab_requests_on_the_cluster(
    redis_url: str, amqp_url: str, unique_prefix: str, tmp_path: Path
) -> None:
    async with mylab_node(redis_url, amqp_url, unique_prefix, tmp_path) as setup:
        client = setup.client
        contents = {
            "object": {"command": "concat", "value1": "foo", "value2": 10},
            "int": {"command": "incr-int", "value2": 10},
            "binary": {"command": "str-to-bin", "value1": "foo"},
            "biz": {"command": "biz-step"},
            "reported": {"command": "reported-error"},
            "unhandled": {"command": "unhandled-exception"},
        }
        ids = {name: await create(client, content) for name, content in contents.items()}

        # Object results.
        for name, expected in (("object", "foo-10"), ("int", 11)):
            req_id = ids[name]
            status = await completed(client, req_id)
            assert (status["successful"], status["resultMime"]) == (True, "application/json")
            result = await client.get(f"/v2/requests/{req_id}/result")
            assert result.json() == expected
            details = (await client.get(f"/v2/requests/{req_id}?include_resp=true")).json()
            assert checked(details, REQUEST_DETAILS)["resObj"] == expected
            assert await callbacks(setup, req_id) == [
                {"reqId": req_id, "newProcStep": "Processing"},
                {"reqId": req_id, "newProcStep": "Completed", "resObj": expected},
            ]

        # A binary result.
        req_id = ids["binary"]
        status = await completed(client, req_id)
        assert (status["resultMime"], status["resultSize"]) == ("application/octet-stream", 3)
        assert (await client.get(f"/v2/requests/{req_id}/result")).content == b"foo"
        details = checked(
            (await client.get(f"/v2/requests/{req_id}?include_resp=true")).json(), REQUEST_DETAILS
        )
        assert base64.b64decode(details["resBin"]) == b"foo"
        assert (await callbacks(setup, req_id))[-1] == {
            "reqId": req_id,
            "newProcStep": "Completed",
            "resBin": base64.b64encode(b"foo").decode(),
        }

        # A business step, then completed without a result.
        req_id = ids["biz"]
        status = await completed(client, req_id)
        assert status == {"processStep": "completed", "bizStep": "foo-step", "successful": True}
        assert (await client.get(f"/v2/requests/{req_id}/result")).status_code == 400
        assert await callbacks(setup, req_id) == [
            {"reqId": req_id, "newProcStep": "Processing"},
            {"reqId": req_id, "newBizStep": "foo-step"},
            {"reqId": req_id, "newProcStep": "Completed"},
        ]

        # A reported error, and an exception of the processor's logic.
        req_id = ids["reported"]
        status = await completed(client, req_id)
        assert status["successful"] is False
        assert status["error"] == {"bizMgs": "foo", "techMgs": "bar", "errorId": "processing_error"}
        assert (await callbacks(setup, req_id))[-1] == {
            "reqId": req_id,
            "newProcStep": "Completed",
            "error": {"bizMgs": "foo", "techMgs": "bar", "errorId": "processing_error"},
        }
        req_id = ids["unhandled"]
        status = await completed(client, req_id)
        assert status["error"] == {"techMgs": "foo", "errorId": "processing_error"}
        last = (await callbacks(setup, req_id))[-1]
        assert last["error"] == {"techMgs": "foo", "errorId": "processing_error"}

        # The processor got MyLab's queue message of each request, content as sent, with
        # the headers of the request that created it (those a handler would see).
        lines = (await anyio.Path(setup.seen_path).read_text()).splitlines()
        seen = [json.loads(line) for line in lines]
        messages = [checked(json.loads(item["body"]), QUEUE_MESSAGE) for item in seen]
        assert {m["id"]: m["content"] for m in messages} == {
            ids[name]: content for name, content in contents.items()
        }
        for item in seen:
            assert item["persistent"] is True
            assert item["headers"]["x-client-name"] == "mylab-test"
            assert "authorization" not in item["headers"]

        # The jobs' own messages (for `/api/workers/take` processors) are spare once
        # MyLab processors started the jobs: they do not pile up on the node's queue.
        async with RabbitMQQueue(amqp_url, prefix=unique_prefix) as queue:
            await queue.start()
            await wait_until(lambda: queue.depth(f"ext.{KIND}"), lambda n: n == 0, timeout=10)


async def test_a_stop_reaches_the_mylab_processor_on_the_cluster(
    redis_url: str, amqp_url: str, unique_prefix: str, tmp_path: Path
) -> None:
    async with mylab_node(redis_url, amqp_url, unique_prefix, tmp_path) as setup:
        client = setup.client
        req_id = await create(client, {"command": "slow"})

        async def biz_step() -> str | None:
            answer = await client.get(f"/v2/requests/{req_id}/status")
            step: str | None = answer.json().get("bizStep")
            return step

        await wait_until(biz_step, lambda step: step is not None, timeout=20)
        assert (await client.post(f"/api/jobs/{req_id}/stop")).status_code == 202
        status = await completed(client, req_id)
        assert status["error"] == {"bizMgs": "The request was stopped.", "errorId": "stopped"}
        last = (await callbacks(setup, req_id))[-1]
        assert last == {
            "reqId": req_id,
            "newProcStep": "Completed",
            "error": {"bizMgs": "The request was stopped.", "errorId": "stopped"},
        }
        # The processor's next call was refused: it gave up (its log says so).
        log = tmp_path / "processor.log"
        await wait_until(
            lambda: _read(log), lambda text: f"{req_id}: refused 409" in text, timeout=10
        )
        assert (await client.get(f"/api/jobs/{req_id}")).json()["state"] == "stopped"


async def _read(path: Path) -> str:
    return await anyio.Path(path).read_text(errors="replace")


async def test_a_killed_mylab_processor_s_request_is_finished_by_another(
    redis_url: str, amqp_url: str, unique_prefix: str, tmp_path: Path
) -> None:
    # MyLab's own recovery: the killed processor never acked MyLab's queue message, so
    # RabbitMQ hands it to the next processor, whose `processing` call is answered 200
    # (the request is processing already) and which then finishes the request.
    async with mylab_node(redis_url, amqp_url, unique_prefix, tmp_path) as setup:
        client = setup.client
        req_id = await create(client, {"command": "steps", "value2": 20})

        async def biz_step() -> str | None:
            answer = await client.get(f"/v2/requests/{req_id}/status")
            step: str | None = answer.json().get("bizStep")
            return step

        await wait_until(biz_step, lambda step: step is not None, timeout=20)
        [first] = setup.processors
        first.kill()
        first.wait()
        assert setup.start_processor is not None
        setup.start_processor()
        status = await completed(client, req_id)
        assert (status["successful"], status["bizStep"]) == (True, "step 19")
        assert (await client.get(f"/v2/requests/{req_id}/result")).json() == "done"
        job = (await client.get(f"/api/jobs/{req_id}")).json()
        assert (job["state"], job["attempt"]) == ("succeeded", 1)
