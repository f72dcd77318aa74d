"""Taking job messages without a consumer (`Queue.take` on RabbitMQ): `basic.get` on a
channel of its own, polled while the caller waits.

An external processor's `take` is served by whichever api node it calls; that node
gets the messages for it and settles each once the job is started (or dropped).
Unsettled messages go back to the queue with the channel.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import TYPE_CHECKING

from aiormq import Channel
from aiormq.abc import AbstractChannel
from pamqp import commands as spec

from asyncproc.errors import BackendUnavailable
from asyncproc.interfaces import Delivery

from .amqp_link import FAILED, aborted, describe, open_channel
from .amqp_message import read_job_message

if TYPE_CHECKING:
    from .rabbitmq import RabbitMQQueue

__all__ = ["Taker"]

# How often an empty queue is asked again while a take waits (doubling up to the cap).
FIRST_PAUSE = 0.02
MAX_PAUSE = 0.2


class _GotDelivery(Delivery):
    __slots__ = ("_channel", "_settled", "_tag", "job_id", "redelivered", "routing")

    def __init__(
        self, channel: AbstractChannel, tag: int, job_id: str, routing: str, redelivered: bool
    ) -> None:
        self._channel = channel
        self._settled = False
        self._tag = tag
        self.job_id = job_id
        self.routing = routing
        self.redelivered = redelivered

    def _settle(self) -> bool:
        if self._settled:
            return False
        self._settled = True
        return not self._channel.is_closed  # closed: back in the queue already

    async def ack(self) -> None:
        """See `Delivery.ack`."""
        if self._settle():
            await _quietly(self._channel.basic_ack(self._tag))

    async def requeue(self) -> None:
        """See `Delivery.requeue`."""
        if self._settle():
            await _quietly(self._channel.basic_nack(self._tag, requeue=True))

    async def reject(self) -> None:
        """See `Delivery.reject`."""
        if self._settle():
            await _quietly(self._channel.basic_reject(self._tag, requeue=False))


async def _quietly(settle: object) -> None:
    try:
        await settle  # type: ignore[misc]
    except FAILED as exc:  # the channel died: the message is back in the queue
        if aborted(exc):
            raise


class Taker:
    """`basic.get` for `RabbitMQQueue.take`, on a channel reopened after reconnections."""

    def __init__(self, queue: RabbitMQQueue) -> None:
        self.queue = queue
        self._channel: Channel | None = None
        self._generation = -1
        self._lock = asyncio.Lock()

    async def _channel_for(self, deadline: float) -> Channel:
        link = self.queue.publisher_link
        channel = self._channel
        if channel is not None and not channel.is_closed and self._generation == link.generation:
            return channel
        async with self._lock:
            channel = self._channel
            if channel is None or channel.is_closed or self._generation != link.generation:
                remaining = deadline - asyncio.get_running_loop().time()
                connection = await link.get(max(0.0, remaining))
                self._generation = link.generation
                channel = self._channel = await open_channel(connection, confirms=False)
            return channel

    async def take(self, routings: Sequence[str], count: int, wait: float) -> list[Delivery]:
        """See `Queue.take`."""
        loop = asyncio.get_running_loop()
        end = loop.time() + wait
        pause = FIRST_PAUSE
        while True:
            taken = await self._get(routings, count)
            now = loop.time()
            if taken or now >= end:
                return taken
            await asyncio.sleep(min(pause, end - now))
            pause = min(pause * 2, MAX_PAUSE)

    async def _get(self, routings: Sequence[str], count: int) -> list[Delivery]:
        queue = self.queue
        deadline = asyncio.get_running_loop().time() + queue.outage_timeout
        taken: list[Delivery] = []
        try:
            async with asyncio.timeout_at(deadline):
                for routing in routings:
                    await queue.ensure_declared(routing, deadline)
                channel = await self._channel_for(deadline)
                for routing in routings:
                    while len(taken) < count:
                        message = await channel.basic_get(queue.queue_name(routing))
                        got = message.delivery
                        if not isinstance(got, spec.Basic.GetOk):
                            break
                        job_id, _ = read_job_message(message.body, errors="replace")
                        taken.append(
                            _GotDelivery(
                                channel,
                                got.delivery_tag or 0,
                                job_id,
                                routing,
                                bool(got.redelivered),
                            )
                        )
        except FAILED as exc:
            if aborted(exc) or taken:
                raise
            raise BackendUnavailable("rabbitmq", describe(exc)) from None
        except TimeoutError:
            if taken:
                return taken
            raise BackendUnavailable("rabbitmq", "no answer to basic.get") from None
        return taken
