"""Job messages published in batches (backends/amqp_publish.py) against a real
RabbitMQ: what arrives is what aiormq's own publish would send, every publish is
confirmed or refused on its own, and the channel's numbering survives a publisher
that gave up."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiormq
import anyio
import pamqp.frame
import pytest
from aiormq.abc import DeliveredMessage
from aiormq.exceptions import PublishError
from pamqp import commands as spec
from pamqp.header import ContentHeader

from asyncproc.backends.amqp_publish import Batcher, header_frame

pytestmark = [pytest.mark.anyio, pytest.mark.rabbitmq]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiormq runs on asyncio


def test_the_header_frame_is_the_one_pamqp_marshals() -> None:
    for size, message_id in ((0, "a"), (17, "0123abcd.42"), (2**40, "x" * 200)):
        properties = spec.Basic.Properties(delivery_mode=2, message_id=message_id)
        expected = pamqp.frame.marshal(ContentHeader(0, size, properties), 7)
        assert header_frame(7, size, message_id.encode()) == expected


@pytest.fixture
async def channel(amqp_url: str, unique_prefix: str) -> AsyncIterator[aiormq.Channel]:
    """A confirming channel with a queue named `unique_prefix` bound to the default
    exchange (deleted afterwards)."""
    async with aiormq.connect(amqp_url) as connection:
        channel = await connection.channel(publisher_confirms=True)
        await channel.queue_declare(unique_prefix, durable=True)
        try:
            yield channel
        finally:  # on a channel of its own: a test may have had this one closed
            await (await connection.channel()).queue_delete(unique_prefix)


async def take_all(channel: aiormq.Channel, queue: str, count: int) -> list[DeliveredMessage]:
    got: list[DeliveredMessage] = []
    for _ in range(count):
        message = await channel.basic_get(queue, no_ack=True)
        assert message.body, f"only {len(got)} of {count} messages arrived"
        got.append(message)
    return got


async def test_a_burst_is_confirmed_and_arrives_in_order_persistent_and_whole(
    channel: aiormq.Channel, unique_prefix: str
) -> None:
    batcher = Batcher(channel)
    bodies = [f"job-{n}".encode() for n in range(50)]
    big = bytes(range(256)) * 2000  # 512,000 bytes: several body frames
    answers = await asyncio.gather(
        *(batcher.publish("", unique_prefix, body) for body in [*bodies, big])
    )
    assert all(isinstance(answer, spec.Basic.Ack) for answer in answers)
    got = await take_all(channel, unique_prefix, 51)
    assert [m.body for m in got] == [*bodies, big]
    assert {m.header.properties.delivery_mode for m in got} == {2}
    assert len({m.header.properties.message_id for m in got}) == 51
    # aiormq's own publishes on the same channel are numbered after the batch's.
    assert isinstance(
        await channel.basic_publish(b"after", routing_key=unique_prefix), spec.Basic.Ack
    )


async def test_an_unroutable_publish_is_refused_alone(
    channel: aiormq.Channel, unique_prefix: str
) -> None:
    batcher = Batcher(channel)
    answers = await asyncio.gather(
        batcher.publish("", unique_prefix, b"one"),
        batcher.publish("", unique_prefix + "-nowhere", b"lost"),
        batcher.publish("", unique_prefix, b"two"),
        return_exceptions=True,
    )
    assert isinstance(answers[0], spec.Basic.Ack)
    assert isinstance(answers[1], PublishError)  # mandatory: it comes back
    assert isinstance(answers[2], spec.Basic.Ack)
    assert [m.body for m in await take_all(channel, unique_prefix, 2)] == [b"one", b"two"]


async def test_a_publisher_that_gives_up_before_the_write_leaves_the_numbering_intact(
    channel: aiormq.Channel, unique_prefix: str
) -> None:
    batcher = Batcher(channel)
    kept = asyncio.ensure_future(batcher.publish("", unique_prefix, b"kept"))
    dropped = asyncio.ensure_future(batcher.publish("", unique_prefix, b"dropped"))
    await asyncio.sleep(0)  # both queued for this turn's write
    dropped.cancel()
    assert isinstance(await kept, spec.Basic.Ack)
    # Nothing was numbered or sent for the one that gave up: later publishes are
    # confirmed by their own tags.
    later = await asyncio.gather(
        *(batcher.publish("", unique_prefix, b"x%d" % n) for n in range(5))
    )
    assert all(isinstance(answer, spec.Basic.Ack) for answer in later)
    bodies = [m.body for m in await take_all(channel, unique_prefix, 6)]
    assert bodies[0] == b"kept"
    assert bodies[-5:] == [b"x%d" % n for n in range(5)]
    assert not (await channel.basic_get(unique_prefix, no_ack=True)).body


async def test_publishes_the_broker_will_never_confirm_fail_when_the_channel_closes(
    channel: aiormq.Channel, unique_prefix: str
) -> None:
    # The broker closes the channel on a publish to a missing exchange: that publish
    # and every other still waiting fail at once, rather than wait out a deadline.
    batcher = Batcher(channel)
    with anyio.fail_after(10):
        answers = await asyncio.gather(
            batcher.publish(unique_prefix + "-no-such-exchange", "x", b"one"),
            batcher.publish("", unique_prefix, b"two"),
            return_exceptions=True,
        )
        assert isinstance(answers[0], Exception)
        assert channel.is_closed
        with pytest.raises(Exception):  # noqa: B017, PT011 - whatever aiormq raises
            await batcher.publish("", unique_prefix, b"three")
