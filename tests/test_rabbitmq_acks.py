"""Coalesced acks on a RabbitMQ consumer channel (`backends/amqp_acks.py`).

Deliveries are settled out of order and concurrently; what the broker holds
afterwards shows that no requeue or reject was swallowed by a multiple ack and no
acked message comes back. The ack frames are recorded on their way to the
connection, to check that the acks of one loop turn share one frame.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import aiormq
import anyio
import pytest

from asyncproc.backends.rabbitmq import RabbitMQQueue
from asyncproc.interfaces import Delivery
from tests.contract.test_queue import dead_letters, taking
from tests.support import wait_until
from tests.test_rabbitmq_reconnect import close_connections, rabbitmqctl

pytestmark = [pytest.mark.anyio, pytest.mark.rabbitmq]

Settle = Callable[[], Coroutine[Any, Any, None]]


@pytest.fixture
async def queue(amqp_url: str, unique_prefix: str) -> AsyncIterator[RabbitMQQueue]:
    """A started queue whose names are unique to the test, deleted after."""
    rabbit = RabbitMQQueue(amqp_url, prefix=unique_prefix, outage_timeout=30)
    await rabbit.start()
    try:
        yield rabbit
    finally:
        await rabbit.delete(["default"])
        await rabbit.aclose()


@pytest.fixture
def ack_frames(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, bool]]:
    """(delivery tag, multiple) of every basic.ack handed to a connection."""
    sent: list[tuple[int, bool]] = []
    original = aiormq.Channel.basic_ack

    async def recording(
        self: aiormq.Channel, delivery_tag: int, multiple: bool = False, wait: bool = True
    ) -> None:
        await original(self, delivery_tag, multiple=multiple, wait=wait)
        sent.append((delivery_tag, multiple))

    monkeypatch.setattr(aiormq.Channel, "basic_ack", recording)
    return sent


async def in_one_turn(*settles: Settle) -> None:
    """Run `settles` as concurrent tasks started together, and wait for them all."""
    async with anyio.create_task_group() as tasks:
        for settle in settles:
            tasks.start_soon(settle)


async def test_out_of_order_settles_keep_requeued_and_drop_acked(
    queue: RabbitMQQueue, ack_frames: list[tuple[int, bool]]
) -> None:
    ids = [f"job-{i}" for i in range(1, 11)]
    for job_id in ids:
        await queue.publish(job_id, "default")
    async with taking(queue, ["default"], 10) as taken:
        # A fresh channel: job-i is delivery tag i.
        job = {d.job_id: d for d in await taken.count(10)}
        assert [d.job_id for d in taken.deliveries] == ids

        # job-2 is requeued between the acks of 3 and 1: one multiple ack up to 3.
        await in_one_turn(job["job-3"].ack, job["job-2"].requeue, job["job-1"].ack)
        assert ack_frames == [(3, True)]
        # job-4 and job-5 still run: acks above them cannot be covered.
        await in_one_turn(job["job-6"].ack, job["job-7"].ack)
        assert ack_frames[1:] == [(6, False), (7, False)]
        await job["job-5"].reject()
        # job-4's requeue comes with acks above it: it goes first, the acks cover 8-9.
        await in_one_turn(job["job-8"].ack, job["job-4"].requeue, job["job-9"].ack)
        assert ack_frames[3:] == [(9, True)]

        # The requeued ones come back (tags 11-12), and nothing else does.
        again = await taken.count(12)
        assert sorted((d.job_id, d.redelivered) for d in again[10:]) == [
            ("job-2", True),
            ("job-4", True),
        ]
        await in_one_turn(job["job-10"].ack, again[10].ack, again[11].ack)
        assert ack_frames[4:] == [(12, True)]
        assert await taken.stays(12)
    assert await queue.depth("default") == 0
    async with taking(queue, ["default"], 10) as taken:
        assert await taken.stays(0)
    found: list[str] = []

    async def dead() -> list[str]:
        found.extend(await dead_letters(queue))
        return found

    assert await wait_until(dead, lambda got: bool(got)) == ["job-5"]


async def test_acks_of_a_lost_channel_are_not_sent_on_the_new_one(
    queue: RabbitMQQueue, ack_frames: list[tuple[int, bool]], unique_prefix: str
) -> None:
    ctl = rabbitmqctl()
    ids = [f"job-{i}" for i in range(1, 5)]
    for job_id in ids:
        await queue.publish(job_id, "default")
    # Prefetch 8: the lost channel's deliveries, unsettled, leave room for the new ones.
    async with taking(queue, ["default"], 8) as taken:
        lost = await taken.count(4)
        assert await close_connections(ctl, unique_prefix) == 2
        # The new channel gets the same messages under the same tags, 1-4.
        back = (await taken.count(8))[4:]
        assert sorted((d.job_id, d.redelivered) for d in back) == [(i, True) for i in ids]

        settles: list[Delivery] = [*lost, *back]
        await in_one_turn(*(d.ack for d in settles))
        # Only the new channel's deliveries, in one frame; acking tags 1-4 twice
        # would have closed the channel, and every message would come back again.
        assert ack_frames == [(4, True)]
        assert await taken.stays(8)
    assert await queue.depth("default") == 0


async def test_many_acks_of_one_turn_share_one_frame(
    queue: RabbitMQQueue, ack_frames: list[tuple[int, bool]]
) -> None:
    for i in range(64):
        await queue.publish(f"job-{i}", "default")
    async with taking(queue, ["default"], 64) as taken:
        deliveries = await taken.count(64)
        await in_one_turn(*(d.ack for d in reversed(deliveries)))
        assert ack_frames == [(64, True)]
        assert await taken.stays(64)
    assert await queue.depth("default") == 0
