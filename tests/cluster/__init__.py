"""Cluster tests: real node processes on the shared Redis and RabbitMQ, each under a key
prefix of its own that `forget_cluster` deletes afterwards."""

from __future__ import annotations

from collections.abc import Sequence

from asyncproc.backends.rabbitmq import RabbitMQQueue
from tests.contract import delete_prefix


async def forget_cluster(
    redis_url: str, amqp_url: str, prefix: str, routings: Sequence[str] = ("default",)
) -> None:
    """Delete what a cluster test left on the shared servers: every Redis key under
    `prefix`, and the RabbitMQ queues and exchanges of `routings`."""
    await delete_prefix(redis_url, prefix)
    queue = RabbitMQQueue(amqp_url, prefix=prefix)
    await queue.delete(routings)
    await queue.aclose()
