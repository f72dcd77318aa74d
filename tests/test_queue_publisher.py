"""`QueuePublisher` (backends/callbacks.py): JSON messages to one durable queue,
persistent, and confirmed by the broker before `send` answers."""

from __future__ import annotations

import aiormq
import pytest

from asyncproc.backends.callbacks import QueuePublisher

pytestmark = [pytest.mark.rabbitmq, pytest.mark.anyio]


async def test_a_sent_message_is_in_the_durable_queue_once_send_answers(
    amqp_url: str, unique_prefix: str
) -> None:
    queue = f"{unique_prefix}mylab.requests"
    publisher = QueuePublisher(amqp_url, queue, name="test queue publisher")
    try:
        async with publisher.running():
            assert await publisher.send(b'{"id": "r1", "content": {}}', {"x-client": "t"})
            assert await publisher.send(b'{"id": "r2", "content": 2}')
            async with aiormq.connect(amqp_url) as connection:
                channel = await connection.channel()
                # Declared durable: a non-durable declaration of it is refused.
                with pytest.raises(aiormq.exceptions.ChannelPreconditionFailed):
                    await channel.queue_declare(queue, durable=False)
                channel = await connection.channel()
                first = await channel.basic_get(queue, no_ack=True)
                second = await channel.basic_get(queue, no_ack=True)
        assert (first.body, second.body) == (
            b'{"id": "r1", "content": {}}',
            b'{"id": "r2", "content": 2}',
        )
        assert first.header.properties.delivery_mode == 2  # persistent
        assert first.header.properties.content_type == "application/json"
        assert first.header.properties.headers == {"x-client": "t"}
        assert not second.header.properties.headers
    finally:
        async with aiormq.connect(amqp_url) as connection:
            channel = await connection.channel()
            await channel.queue_delete(queue)
