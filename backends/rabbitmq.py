"""The RabbitMQ Queue (aiormq); the callback exchange publisher is in `callbacks`.

Topology, every name under the key prefix `P`:

    P + "jobs"         durable direct exchange; routing key = procRouting
    P + "jobs." + r    durable queue of routing r, bound with key r; dead-letters to P + "dead"
    P + "dead"         durable fanout exchange and its durable queue: rejected messages
    P + "delay." + ms + "." + r
                       durable TTL queue of delayed messages of r, dead-lettering into
                       P + "jobs" with key r (see `amqp_delay`)

A message is the job id (UTF-8) and what the publisher's store knew of the job
(`amqp_message`), persistent; `publish` returns once the broker
confirmed it, and gives up with `BackendUnavailable` after `outage_timeout`
(a broker that is down, frozen or cut off: the confirm included). The queue keeps two connections, one to publish and one to
consume: RabbitMQ's flow control blocks a publishing connection, and acks must
not wait behind it. Each reconnects with backoff on its own; consumers re-declare
and re-consume on the new connection.

Settling a consumer's delivery (`amqp_acks`): `await delivery.ack()` returns once
its ack frame was handed to the connection (not written, not confirmed: a lost ack
means a redelivery), or once its channel is known to be gone. The acks of one
event-loop turn on a channel go out together right after it: one `basic.ack` with
`multiple=True` covers those that form a contiguous run from the lowest tag still
unsettled, the others go one by one. Nothing waits past the ack's return, so a
draining node closes its channel with no ack left behind. A requeue or reject is
sent at once and is never covered by a multiple ack. A delivery of a channel that closed is never
settled on another one: its tag meant nothing there, and the broker has put the
message back already.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from functools import partial
from typing import Self

import anyio
from aiormq import Channel
from aiormq.abc import AbstractChannel, DeliveredMessage
from aiormq.exceptions import ChannelNotFoundEntity, PublishError
from pamqp import commands as spec

from asyncproc.config import Settings
from asyncproc.errors import BackendUnavailable
from asyncproc.interfaces import Delivery, Queue

from .amqp_acks import Settler
from .amqp_delay import (
    BUCKETS_MS,
    REDECLARE_AFTER,
    bucket_for,
    delay_arguments,
    delay_ms,
    delay_queue_name,
)
from .amqp_link import (
    BACKOFF_MIN,
    FAILED,
    Link,
    aborted,
    backoff,
    cancelled_for_real,
    close_channel,
    describe,
    open_channel,
)
from .amqp_message import job_message, read_job_message
from .amqp_publish import Batcher
from .amqp_take import Taker
from .callbacks import CallbackPublisher

__all__ = ["CallbackPublisher", "RabbitMQQueue"]

log = logging.getLogger("asyncproc.rabbitmq")

ACK_DRAIN_TIMEOUT = 5.0  # seconds: what a closing consumer waits for its acks to go out


class _RabbitDelivery(Delivery):
    __slots__ = ("_consumer", "_settled", "_settler", "_tag", "job_id", "redelivered", "routing")

    def __init__(
        self,
        consumer: _Consumer,
        settler: Settler,
        tag: int,
        job_id: str,
        routing: str,
        redelivered: bool,
    ) -> None:
        self._consumer = consumer
        self._settler = settler
        self._settled = False
        self._tag = tag
        self.job_id = job_id
        self.routing = routing
        self.redelivered = redelivered

    @property
    def gone(self) -> bool:
        """True when its channel closed: the broker has put it back in the queue."""
        return self._settler.closed

    def _settle(self) -> bool:
        """Mark settled; False when it already was or its channel is gone.

        A delivery of a closed channel is back in the queue already: there is
        nothing to send, and the broker delivers it again.
        """
        if self._settled:
            return False
        self._settled = True
        self._consumer.settled(self)
        return not self._settler.closed

    async def ack(self) -> None:
        """See `Delivery.ack`: coalesced with the acks of this loop turn (`amqp_acks`)."""
        if self._settle():
            await self._settler.ack(self._tag)

    async def requeue(self) -> None:
        """See `Delivery.requeue`."""
        if self._settle():
            await self._settler.nack(self._tag, requeue=True)

    async def give_back(self) -> None:
        """Return a delivery never handed out (not counted as unsettled) to the queue."""
        if not self._settled and not self._settler.closed:
            self._settled = True
            await self._settler.nack(self._tag, requeue=True)

    async def reject(self) -> None:
        """See `Delivery.reject`: the queue dead-letters it to the `dead` exchange."""
        if self._settle():
            await self._settler.nack(self._tag, requeue=False)


class _Consumer:
    """One channel consuming the queues of some routings; follows reconnections."""

    def __init__(self, queue: RabbitMQQueue, routings: Sequence[str], prefetch: int) -> None:
        self.queue = queue
        self.routings = list(dict.fromkeys(routings))
        self.prefetch = max(1, prefetch)
        self.unsettled: set[_RabbitDelivery] = set()
        self.ready = asyncio.Event()
        self._buffer: asyncio.Queue[_RabbitDelivery] = asyncio.Queue()
        self._room = asyncio.Event()
        self._channel: AbstractChannel | None = None
        self._settler: Settler | None = None
        self._task: asyncio.Task[None] | None = None
        self._tags: list[str] = []  # the consumers on the current channel
        self._taking = True

    def start(self) -> None:
        """Start the consume-and-follow task."""
        self._task = asyncio.create_task(self._run(), name="amqp consumer")

    def settled(self, delivery: _RabbitDelivery) -> None:
        """A yielded delivery was settled: room for the next one."""
        self.unsettled.discard(delivery)
        self._room.set()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Delivery:
        while True:
            # The broker holds back past `prefetch` per channel; this also counts
            # deliveries of channels lost in a reconnection that are still running.
            while len(self.unsettled) >= self.prefetch:
                self._room.clear()
                await self._room.wait()
            delivery = await self._buffer.get()
            if delivery.gone:
                continue  # back in the queue already: the broker sends it again
            self.unsettled.add(delivery)
            return delivery

    async def stop_taking(self) -> None:
        """Take no more deliveries (a draining node): cancel the consumers but keep the
        channel, whose deliveries in hand are still to be settled, and give back what
        the broker sent that was not taken yet, at once, for other nodes; consume no
        more after a reconnection either."""
        self._taking = False
        channel = self._channel
        if channel is not None and not channel.is_closed:
            for tag in self._tags:
                try:
                    await channel.basic_cancel(tag)
                except FAILED as exc:  # the channel died meanwhile: nothing to cancel
                    if aborted(exc):
                        raise
        while not self._buffer.empty():
            await self._buffer.get_nowait().give_back()

    async def _on_message(self, settler: Settler, message: DeliveredMessage) -> None:
        deliver = message.delivery
        assert isinstance(deliver, spec.Basic.Deliver)
        tag = deliver.delivery_tag or 0
        # Before any await: aiormq starts the callbacks in delivery order.
        settler.delivered(tag)
        if not self._taking:  # sent before the cancel reached the broker
            await settler.nack(tag, requeue=True)
            return
        try:
            job_id, hint = read_job_message(message.body)
        except UnicodeDecodeError:
            job_id, hint = "", b""
        if not 0 < len(job_id) <= 128 or not job_id.isprintable():
            # Not a job id: nothing to run and no job to fail; keep it for inspection.
            await settler.nack(tag, requeue=False)
            return
        delivery = _RabbitDelivery(
            self,
            settler,
            tag,
            job_id,
            deliver.routing_key or "",
            bool(deliver.redelivered),
        )
        if hint:
            delivery.hint = hint
        self._buffer.put_nowait(delivery)

    async def _run(self) -> None:
        delay = BACKOFF_MIN
        while True:
            channel: AbstractChannel | None = None
            try:
                connection = await self.queue.consumer_link.get(None)
                channel = self._channel = await open_channel(connection, confirms=False)
                # Delivery tags are per channel: a new channel, new tags to settle.
                settler = self._settler = Settler(channel)
                gone: asyncio.Future[None] = asyncio.get_running_loop().create_future()

                def broker_cancelled(_: object, gone: asyncio.Future[None] = gone) -> None:
                    # The broker cancels a consumer whose queue was deleted.
                    if not gone.done():
                        gone.set_result(None)

                channel.on_consumer_cancel_callbacks.add(broker_cancelled)
                # global_ makes the limit per channel, shared by the routings' consumers.
                await channel.basic_qos(
                    prefetch_count=self.prefetch, global_=len(self.routings) > 1
                )
                for routing in self.routings:
                    await self.queue.declare_routing(channel, routing)
                self._tags = []
                for routing in self.routings if self._taking else ():
                    ok = await channel.basic_consume(
                        self.queue.queue_name(routing), partial(self._on_message, settler)
                    )
                    if ok.consumer_tag:
                        self._tags.append(ok.consumer_tag)
                self.ready.set()
                delay = BACKOFF_MIN
                closing = channel.closing
                await asyncio.wait([closing, gone], return_when=asyncio.FIRST_COMPLETED)
                if closing.done() and not closing.cancelled():
                    closing.exception()  # retrieved: the reason is logged by the link
                closing.cancel()
                reason = "the consumer was cancelled by the broker" if gone.done() else "closed"
                log.warning("rabbitmq consumer channel lost (%s); consuming again", reason)
            except FAILED as exc:
                if aborted(exc):
                    raise
                log.warning("rabbitmq consumer: %s; retrying", describe(exc))
                await asyncio.sleep(delay)
                delay = backoff(delay)
            finally:
                if channel is not None and not channel.is_closed and not cancelled_for_real():
                    await self._drain_acks()
                    await close_channel(channel)

    async def aclose(self) -> None:
        """Stop consuming; the broker puts unsettled messages back, flagged redelivered."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])
        channel, self._channel = self._channel, None
        if channel is not None and not channel.is_closed:
            await self._drain_acks()
            await close_channel(channel)

    async def _drain_acks(self) -> None:
        """Let the acks asked for on the channel go out before it closes (bounded:
        a connection that stopped writing must not hold up the close)."""
        settler = self._settler
        if settler is not None:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(ACK_DRAIN_TIMEOUT):
                    await settler.drain()


class RabbitMQQueue(Queue):
    """Job ids on durable RabbitMQ queues, one per routing, with a dead-letter queue
    and TTL queues for delayed messages.

    `outage_timeout` bounds how long `publish` and `depth` wait, for a lost
    connection to come back or for a broker that does not answer, before raising
    `BackendUnavailable`.
    """

    name = "rabbitmq"

    def __init__(
        self,
        url: str = "amqp://guest:guest@127.0.0.1:5672/",
        *,
        prefix: str = "asyncproc:",
        outage_timeout: float = 5.0,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.outage_timeout = outage_timeout
        self.exchange = f"{prefix}jobs"
        self.dead_letter = f"{prefix}dead"  # both the exchange and its queue
        self.publisher_link = Link(url, f"asyncproc {prefix} publish")
        self.consumer_link = Link(url, f"asyncproc {prefix} consume")
        self._generation = 0
        self._publishing: Channel | None = None
        self._batch: Batcher | None = None
        self._admin: Channel | None = None
        self._declared: set[str] = set()
        # Delay queue name -> loop time of its last declare on this connection.
        self._delays_declared: dict[str, float] = {}
        self._declaring: dict[str, asyncio.Lock] = {}
        self._channel_lock = asyncio.Lock()
        self._consumers: set[_Consumer] = set()
        self._taker = Taker(self)

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        """The queue at `settings.amqp_url`, names under `settings.key_prefix`."""
        return cls(settings.amqp_url, prefix=settings.key_prefix)

    def queue_name(self, routing: str) -> str:
        """The RabbitMQ queue holding the messages of `routing`."""
        return f"{self.exchange}.{routing}"

    async def start(self) -> None:
        """Connect and declare the jobs exchange; `BackendUnavailable` if the broker is away."""
        await self.ping_within(self.outage_timeout)

    async def aclose(self) -> None:
        """Close every consumer and both connections."""
        for consumer in list(self._consumers):
            await consumer.aclose()
        await self.publisher_link.aclose()
        await self.consumer_link.aclose()

    # -- channels of the publishing connection --------------------------------

    async def _channels(self, deadline: float) -> tuple[Channel, Channel]:
        """The (publishing, admin) channels, reopened after a reconnection.

        Admin RPCs (declares, passive declares) get their own channel: a refused
        one closes its channel and must not fail publishes in flight.
        """
        publishing, admin = self._publishing, self._admin
        if (
            publishing is not None
            and admin is not None
            and not publishing.is_closed
            and not admin.is_closed
            and self._generation == self.publisher_link.generation
        ):
            return publishing, admin
        remaining = deadline - asyncio.get_running_loop().time()
        connection = await self.publisher_link.get(max(0.0, remaining))
        async with self._channel_lock:
            if self._generation != self.publisher_link.generation:
                self._generation = self.publisher_link.generation
                self._publishing = self._admin = None
                self._declared = set()
                self._delays_declared = {}
            if self._publishing is None or self._publishing.is_closed:
                self._publishing = await open_channel(connection, confirms=True)
            if self._admin is None or self._admin.is_closed:
                self._admin = await open_channel(connection, confirms=False)
            return self._publishing, self._admin

    async def declare_routing(self, channel: AbstractChannel, routing: str) -> None:
        """Declare the exchanges, the dead-letter queue and the queue of `routing`."""
        await channel.exchange_declare(self.exchange, exchange_type="direct", durable=True)
        await channel.exchange_declare(self.dead_letter, exchange_type="fanout", durable=True)
        await channel.queue_declare(self.dead_letter, durable=True)
        await channel.queue_bind(self.dead_letter, self.dead_letter)
        name = self.queue_name(routing)
        await channel.queue_declare(
            name, durable=True, arguments={"x-dead-letter-exchange": self.dead_letter}
        )
        await channel.queue_bind(name, self.exchange, routing_key=routing)

    def _batcher(self, channel: Channel) -> Batcher:
        """The batcher of the publishing channel (a new one with each new channel)."""
        batcher = self._batch
        if batcher is None or batcher.channel is not channel:
            batcher = self._batch = Batcher(channel)
        return batcher

    async def _ensure_routing(self, routing: str, deadline: float) -> Channel:
        """The publishing channel, once `routing`'s queue is declared on this connection."""
        publishing, admin = await self._channels(deadline)
        if routing not in self._declared:
            # One declaration for everyone: a batch's publishes arrive together, and
            # each declaring on its own cost a round trip apiece (seconds for 1,000).
            lock = self._declaring.setdefault(routing, asyncio.Lock())
            async with lock:
                if routing not in self._declared:
                    generation = self._generation
                    await self.declare_routing(admin, routing)
                    if generation == self._generation:
                        self._declared.add(routing)
        return publishing

    async def _ensure_delay(self, routing: str, bucket: int, deadline: float) -> str:
        """The name of `routing`'s delay queue for `bucket`, declared recently enough
        that the broker cannot expire it under a message published now."""
        name = delay_queue_name(self.prefix, routing, bucket)
        loop = asyncio.get_running_loop()
        declared = self._delays_declared.get(name)
        if declared is None or loop.time() - declared > REDECLARE_AFTER:
            lock = self._declaring.setdefault(name, asyncio.Lock())
            async with lock:
                declared = self._delays_declared.get(name)
                if declared is None or loop.time() - declared > REDECLARE_AFTER:
                    _, admin = await self._channels(deadline)
                    generation = self._generation
                    started = loop.time()
                    await admin.queue_declare(
                        name,
                        durable=True,
                        arguments=delay_arguments(self.exchange, routing, bucket),
                    )
                    if generation == self._generation:
                        self._delays_declared[name] = started
        return name

    async def _retrying(self, deadline: float, error: BaseException) -> None:
        """Wait before the next try, or raise `BackendUnavailable` past `deadline`."""
        if aborted(error):
            raise error
        remaining = deadline - asyncio.get_running_loop().time()
        if remaining <= 0:
            raise BackendUnavailable("rabbitmq", describe(error)) from None
        await asyncio.sleep(min(0.05, remaining))

    # -- the Queue contract -------------------------------------------------

    async def ping(self) -> None:
        """See `Queue.ping`: answers at once (no waiting for a reconnection)."""
        if self.publisher_link.current() is None:
            self.publisher_link.start()
            raise BackendUnavailable("rabbitmq", self.publisher_link.last_error)
        await self.ping_within(2.0)

    async def ping_within(self, within: float) -> None:
        """Return once the broker answers a declare, waiting up to `within` s."""
        deadline = asyncio.get_running_loop().time() + within
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    _, admin = await self._channels(deadline)
                    await admin.exchange_declare(
                        self.exchange, exchange_type="direct", durable=True
                    )
                return
            except FAILED as exc:
                await self._retrying(deadline, exc)

    async def publish(
        self, job_id: str, routing: str, *, delay: float = 0.0, hint: bytes = b""
    ) -> None:
        """See `Queue.publish`: persistent, confirmed by the broker; the body is the
        job id and `hint` (`amqp_message`).

        A delayed message goes to a TTL queue that dead-letters it to `routing`'s
        queue once due (`amqp_delay`: never early, late by less than a bucket's width
        only behind a later-due message of the same bucket).

        Everything, the confirm included, is bounded by `outage_timeout`: past it
        (the connection down, the broker frozen or cut off) it raises
        `BackendUnavailable`. A publish cut off before its confirm is sent again: a
        job may be delivered twice, never lost; one that timed out may still arrive.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.outage_timeout
        body = job_message(job_id, hint)
        ms = delay_ms(delay)
        bucket = bucket_for(ms) if ms else 0
        while True:
            delay_queue: str | None = None
            try:
                async with asyncio.timeout_at(deadline):
                    # The routing's queue first: a due message with nowhere to go is dropped.
                    channel = await self._ensure_routing(routing, deadline)
                    if bucket:
                        delay_queue = await self._ensure_delay(routing, bucket, deadline)
                        await channel.basic_publish(
                            body,
                            routing_key=delay_queue,  # the default exchange: straight there
                            properties=spec.Basic.Properties(
                                delivery_mode=2, expiration=str(min(ms, bucket))
                            ),
                            mandatory=True,
                            wait=False,
                        )
                    else:
                        # Persistent and mandatory (an unroutable message comes back,
                        # not vanishes); returns once confirmed (`amqp_publish`).
                        await self._batcher(channel).publish(self.exchange, routing, body)
                return
            except PublishError as exc:
                # Its queue was deleted (or expired): declare it again.
                self._declared.discard(routing)
                if delay_queue is not None:
                    self._delays_declared.pop(delay_queue, None)
                await self._retrying(deadline, exc)
            except FAILED as exc:
                await self._retrying(deadline, exc)

    @asynccontextmanager
    async def consume(
        self, routings: Sequence[str], prefetch: int
    ) -> AsyncIterator[AsyncIterator[Delivery]]:
        """See `Queue.consume`: one channel, prefetch by basic.qos, manual acks.

        The iterator keeps yielding across reconnections. Entering waits up to
        `outage_timeout` for the consumer to be registered with the broker.
        """
        consumer = _Consumer(self, routings, prefetch)
        self._consumers.add(consumer)
        consumer.start()
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.outage_timeout):
                    await consumer.ready.wait()
            yield consumer
        finally:
            self._consumers.discard(consumer)
            with anyio.CancelScope(shield=True):
                await consumer.aclose()

    async def ensure_declared(self, routing: str, deadline: float) -> None:
        """Declare `routing`'s queue on this connection unless it was already."""
        await self._ensure_routing(routing, deadline)

    async def take(self, routings: Sequence[str], count: int, wait: float) -> list[Delivery]:
        """See `Queue.take`: basic.get on a channel of its own (`amqp_take`)."""
        return await self._taker.take(routings, count, wait)

    async def depth(self, routing: str) -> int:
        """See `Queue.depth`: messages ready on `routing` (a passive queue declare)."""
        deadline = asyncio.get_running_loop().time() + self.outage_timeout
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    await self._ensure_routing(routing, deadline)
                    _, admin = await self._channels(deadline)
                    ok = await admin.queue_declare(self.queue_name(routing), passive=True)
                    return ok.message_count or 0
            except ChannelNotFoundEntity as exc:
                self._declared.discard(routing)
                await self._retrying(deadline, exc)
            except FAILED as exc:
                await self._retrying(deadline, exc)

    async def delete(self, routings: Sequence[str]) -> None:
        """Delete the queues of `routings` and their delay queues (whoever declared
        them), the dead-letter queue and both exchanges."""
        deadline = asyncio.get_running_loop().time() + self.outage_timeout
        _, admin = await self._channels(deadline)
        for routing in routings:
            await admin.queue_delete(self.queue_name(routing))
            # Every bucket's name: AMQP cannot list queues, and deleting a missing one is fine.
            for bucket in BUCKETS_MS:
                await admin.queue_delete(delay_queue_name(self.prefix, routing, bucket))
        await admin.queue_delete(self.dead_letter)
        await admin.exchange_delete(self.exchange)
        await admin.exchange_delete(self.dead_letter)
        self._declared = set()
        self._delays_declared = {}
