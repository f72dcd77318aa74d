"""A MyLab.AsyncProcessor-style business processor, written with httpx and aiormq only
(no asyncproc import), as a MyLab processor built on MyLab's SDK behaves.

It consumes MyLab's queue messages `{"id", "content"}` from `MYLAB_QUEUE`, says
`processing`, runs the content's `command` (the commands of MyLab's own test processor)
and reports through MyLab's processor calls under `/v2/requests`; an exception of its
logic is reported as MyLab's SDK does (`techMgs` = the message, `techInfo` = the
trace). Each message it gets is appended, as received (body and headers), to the file
`MYLAB_SEEN`.

Run: `python tests/mylab_processor.py` with `MYLAB_URL`, `MYLAB_AMQP_URL`,
`MYLAB_QUEUE` and `MYLAB_SEEN` set.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import traceback
from typing import Any

import aiormq
import httpx


class ProcessorApi:
    """MyLab's processor calls (IAsyncProcessorRequestsApiV2); any non-2xx answer raises."""

    def __init__(self, client: httpx.AsyncClient) -> None:
        self.client = client

    async def _call(self, method: str, path: str, **kwargs: Any) -> None:
        answer = await self.client.request(method, f"/v2/requests/{path}", **kwargs)
        answer.raise_for_status()

    async def make_processing(self, req_id: str) -> None:
        await self._call("POST", f"{req_id}/status/step/processing")

    async def make_completed(self, req_id: str) -> None:
        await self._call("POST", f"{req_id}/status/step/completed")

    async def biz_step(self, req_id: str, step: str) -> None:
        await self._call("PUT", f"{req_id}/status/biz-step", json=step)

    async def error(self, req_id: str, error: dict[str, str]) -> None:
        await self._call("PUT", f"{req_id}/status/error", json=error)

    async def object_result(self, req_id: str, value: Any) -> None:
        await self._call("PUT", f"{req_id}/result", json=value)

    async def binary_result(self, req_id: str, data: bytes) -> None:
        headers = {"content-type": "application/octet-stream"}
        await self._call("PUT", f"{req_id}/result", content=data, headers=headers)


class ReportedError(Exception):
    """The logic's business error: reported with a message for the user."""


async def logic(api: ProcessorApi, req_id: str, request: dict[str, Any]) -> None:
    """The business logic: MyLab's test processor's commands."""
    command = request.get("command")
    value1 = request.get("value1")
    value2 = request.get("value2")
    if command == "concat":
        await api.object_result(req_id, f"{value1}-{value2}")
    elif command == "incr-int":
        await api.object_result(req_id, int(value2 or 0) + 1)
    elif command == "str-to-bin":
        await api.binary_result(req_id, str(value1).encode())
    elif command == "biz-step":
        await api.biz_step(req_id, "foo-step")
        await api.make_completed(req_id)
    elif command == "reported-error":
        await api.error(req_id, {"bizMgs": "foo", "techMgs": "bar", "techInfo": "at Logic()"})
    elif command == "steps":
        for step in range(int(value2 or 0)):
            await api.biz_step(req_id, f"step {step}")
            await asyncio.sleep(0.1)
        await api.object_result(req_id, "done")
    elif command == "slow":
        # Reports a step every 50 ms until the server refuses (a stop reaches it so).
        for step in range(600):
            await api.biz_step(req_id, f"step {step}")
            await asyncio.sleep(0.05)
    else:
        raise RuntimeError("foo")


def record(seen_path: str, message: aiormq.abc.DeliveredMessage) -> None:
    """Append a message as received: one JSON line `{"body", "persistent", "headers"}`."""
    headers = message.header.properties.headers or {}
    line = {
        "body": message.body.decode(),
        "persistent": message.header.properties.delivery_mode == 2,
        "headers": {
            name: value.decode() if isinstance(value, bytes) else str(value)
            for name, value in headers.items()
        },
    }
    with open(seen_path, "a", encoding="utf-8") as seen:
        seen.write(json.dumps(line) + "\n")


async def consume(api: ProcessorApi, seen_path: str, message: aiormq.abc.DeliveredMessage) -> None:
    """One queue message, as MyLab's SDK consumes it."""
    record(seen_path, message)
    payload = json.loads(message.body)
    req_id = payload["id"]
    try:
        await api.make_processing(req_id)
        try:
            await logic(api, req_id, payload["content"])
        except httpx.HTTPStatusError:
            raise
        except Exception as exc:
            trace = "".join(traceback.format_exception(exc))
            await api.error(req_id, {"techMgs": str(exc), "techInfo": trace})
    except httpx.HTTPStatusError as refused:
        # MyLab's SDK throws here; the message is done with either way.
        print(f"{req_id}: refused {refused.response.status_code}", file=sys.stderr, flush=True)
    assert message.delivery_tag is not None
    await message.channel.basic_ack(message.delivery_tag)


async def main() -> None:
    url = os.environ["MYLAB_URL"]
    queue = os.environ["MYLAB_QUEUE"]
    seen_path = os.environ["MYLAB_SEEN"]
    async with (
        httpx.AsyncClient(base_url=url, timeout=30) as client,
        aiormq.connect(os.environ["MYLAB_AMQP_URL"]) as connection,
    ):
        api = ProcessorApi(client)
        channel = await connection.channel()
        await channel.basic_qos(prefetch_count=8)
        await channel.queue_declare(queue, durable=True)
        tasks: set[asyncio.Task[None]] = set()

        async def on_message(message: aiormq.abc.DeliveredMessage) -> None:
            task = asyncio.create_task(consume(api, seen_path, message))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        await channel.basic_consume(queue, on_message)
        print("processor ready", file=sys.stderr, flush=True)
        await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main())
