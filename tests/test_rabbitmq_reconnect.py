"""The RabbitMQ queue survives the broker closing its connections.

The broker is told (`rabbitmqctl close_connection`) to close this test's
connections only, matched by their connection name, which carries the test's
unique prefix: other work on the same broker keeps its connections.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator

import anyio
import pytest

from asyncproc.backends.rabbitmq import RabbitMQQueue
from asyncproc.errors import BackendUnavailable
from asyncproc.interfaces import Delivery
from tests.support import IN_CI, free_port, wait_until

pytestmark = pytest.mark.anyio


def rabbitmqctl() -> str:
    """The path of rabbitmqctl; skips (fails in CI) when it is not installed."""
    path = shutil.which("rabbitmqctl") or "/usr/sbin/rabbitmqctl"
    if not os.access(path, os.X_OK):
        if IN_CI:
            pytest.fail("rabbitmqctl is not installed")
        pytest.skip("rabbitmqctl is not installed")
    return path


async def close_connections(ctl: str, marker: str) -> int:
    """Have the broker close every connection whose name contains `marker`; how many."""
    listing = await anyio.run_process(
        [ctl, "list_connections", "pid", "client_properties", "-q", "--no-table-headers"]
    )
    closed = 0
    for line in listing.stdout.decode().splitlines():
        pid, _, properties = line.partition("\t")
        if marker in properties:
            await anyio.run_process([ctl, "close_connection", pid.strip(), "test"])
            closed += 1
    return closed


@pytest.mark.rabbitmq
async def test_consumption_resumes_and_nothing_is_lost(amqp_url: str, unique_prefix: str) -> None:
    ctl = rabbitmqctl()
    queue = RabbitMQQueue(amqp_url, prefix=unique_prefix, outage_timeout=30)
    await queue.start()
    ids = [f"job-{i}" for i in range(400)]
    seen: list[str] = []

    async def consume(deliveries: AsyncIterator[Delivery]) -> None:
        async for delivery in deliveries:
            seen.append(delivery.job_id)
            await delivery.ack()

    async def publish(chunk: list[str]) -> None:
        for job_id in chunk:
            await queue.publish(job_id, "default")
            await anyio.sleep(0.003)  # spread the publishes over the outage

    async def seen_ids() -> set[str]:
        return set(seen)

    try:
        async with queue.consume(["default"], 16) as deliveries:
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(consume, deliveries)
                await publish(ids[:100])
                await wait_until(seen_ids, lambda got: len(got) >= 50)
                tasks.start_soon(publish, ids[100:])
                # Both connections (publish, consume) are closed under the running traffic.
                assert await close_connections(ctl, unique_prefix) == 2
                await wait_until(seen_ids, lambda got: len(got) >= 250, timeout=60)
                assert await close_connections(ctl, unique_prefix) == 2
                await wait_until(seen_ids, lambda got: got >= set(ids), timeout=60)
                await wait_until(lambda: queue.depth("default"), lambda n: n == 0)
                tasks.cancel_scope.cancel()
        # Closing the consumer returns what it had not acked: every delivery was acked.
        assert await queue.depth("default") == 0
        assert set(seen) == set(ids)
        assert queue.publisher_link.generation >= 3
        assert queue.consumer_link.generation >= 3
    finally:
        await queue.delete(["default"])
        await queue.aclose()


async def test_an_unreachable_broker_is_reported_within_the_outage_timeout() -> None:
    # Nothing listens on this port: every try is refused at once.
    queue = RabbitMQQueue(f"amqp://guest:guest@127.0.0.1:{free_port()}/", outage_timeout=0.5)
    try:
        with pytest.raises(BackendUnavailable) as started:
            await queue.start()
        assert started.value.backend == "rabbitmq"
        with pytest.raises(BackendUnavailable):
            await queue.publish("job-1", "default")
        with pytest.raises(BackendUnavailable):
            await queue.depth("default")
        with pytest.raises(BackendUnavailable):
            await queue.ping()
    finally:
        await queue.aclose()
